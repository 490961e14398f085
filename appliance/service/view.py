"""`ServiceView`: the daemon as its components see it (`appliance.component.DaemonView`)."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from appliance.component import IntelStatus, Snapshot
from appliance.config import Config
from appliance.hublink.device import intel_paths
from appliance.inline.firewall import FirewallError

if TYPE_CHECKING:
    from appliance.service.daemon import Service


class ServiceView:
    """Read-only access to a `Service` plus the actions a component may take."""

    def __init__(self, service: Service) -> None:
        self._service = service

    @property
    def config(self) -> Config:
        return self._service.config

    @property
    def running(self) -> bool:
        return self._service.running

    def snapshot(self) -> Snapshot:
        return MappingProxyType(self._service.last_snapshot)

    def intel_status(self) -> IntelStatus:
        manager = self._service.intel
        if manager is None:
            return IntelStatus("", 0, ())
        store = manager.store
        return IntelStatus(store.version, len(store), tuple(manager.paths))

    def block(self, address: str, ttl: int) -> bool:
        try:
            return bool(self._service.firewall.block(address, ttl))
        except FirewallError as e:
            raise OSError(str(e)) from None

    def unblock(self, address: str) -> bool:
        try:
            return bool(self._service.firewall.unblock(address))
        except FirewallError as e:
            raise OSError(str(e)) from None

    def apply_config(self, new: Config) -> None:
        self._service.apply_config(new)

    def reload_intel(self) -> str:
        manager = self._service.intel
        if manager is None:
            raise ValueError("the intel store is not running")
        manager.paths = tuple(intel_paths(self._service.config))
        result = manager.load()
        if not result.ok:
            raise ValueError(result.message)
        return str(result.version)

    @property
    def has_leds(self) -> bool:
        return self._service.wiring.leds is not None

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        leds = self._service.wiring.leds
        return int(leds.ack() or 0) if leds is not None else 0

    def identify(self, seconds: float) -> None:
        leds = self._service.wiring.leds
        if leds is None:
            raise NotImplementedError("this unit has no LEDs to blink")
        leds.identify(seconds)

    def request_stop(self) -> None:
        self._service.request_stop()
