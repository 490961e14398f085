"""The one fake of the daemon as its components see it (`appliance.component.DaemonView`).

`FakeView` holds the daemon's own numbers; its `snapshot()` merges every listed component's
`stats()` into them as `Service.stats` does (core keys win), and `tick()` hands one snapshot to
every component's `tick`, as the daemon's main loop does. Actions are recorded, and can be told
to refuse, so a test can check what a component asked of the daemon.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.component import DaemonView, IntelStatus, Snapshot
from appliance.config import Config, ConfigError
from appliance.detect.intel import IntelManager
from appliance.hublink.device import intel_paths
from appliance.service.metrics import component_stats, merged


@dataclass
class FakeView:
    config: Config = None  # type: ignore[assignment]
    numbers: dict[str, Any] = field(default_factory=dict)
    components: list[Any] = field(default_factory=list)  # whose stats() join the snapshot
    running: bool = False
    leds: Any = None  # what ack_alerts/identify reach (an appliance.leds.Leds or a stub)
    intel: IntelManager | None = None
    calls: int = 0  # snapshots taken
    # firewall actions
    blocked: dict[str, int] = field(default_factory=dict)
    never_block: tuple[str, ...] = ()  # address prefixes the firewall refuses (False)
    firewall_error: str = ""  # every firewall action raises OSError with this
    # config
    applied: list[Config] = field(default_factory=list)
    applied_in: threading.Thread | None = None
    refuse_config: str = ""  # apply_config raises ConfigError("inline.workers", this)
    stops: int = 0

    # -- reads ------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        self.calls += 1
        extra = component_stats(self.components, lambda comp, what: None)
        return merged(self.numbers, extra)

    def intel_status(self) -> IntelStatus:
        if self.intel is None:
            return IntelStatus("", 0, ())
        return IntelStatus(self.intel.version, len(self.intel.store), tuple(self.intel.paths))

    # -- actions ----------------------------------------------------------------------------

    def block(self, address: str, ttl: int) -> bool:
        if self.firewall_error:
            raise OSError(self.firewall_error)
        if any(address.startswith(p) for p in self.never_block):
            return False
        self.blocked[address] = ttl
        return True

    def unblock(self, address: str) -> bool:
        if self.firewall_error:
            raise OSError(self.firewall_error)
        return self.blocked.pop(address, None) is not None

    def apply_config(self, new: Config) -> None:
        if self.refuse_config:
            raise ConfigError("inline.workers", self.refuse_config)
        self.applied.append(new)
        self.applied_in = threading.current_thread()
        self.config = new

    def reload_intel(self) -> str:
        if self.intel is None:
            raise ValueError("the intel store is not running")
        self.intel.paths = tuple(intel_paths(self.config))
        result = self.intel.load()
        if not result.ok:
            raise ValueError(result.message)
        return str(result.version)

    @property
    def has_leds(self) -> bool:
        return self.leds is not None

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        return int(self.leds.ack() or 0) if self.leds is not None else 0

    def identify(self, seconds: float) -> None:
        if self.leds is None:
            raise NotImplementedError("this unit has no LEDs to blink")
        self.leds.identify(seconds)

    def request_stop(self) -> None:
        self.stops += 1

    # -- the daemon's main loop -------------------------------------------------------------

    def tick(self, now: float = 0.0, components: Sequence[Any] | None = None) -> Snapshot:
        """One tick: one snapshot, handed to each component (default: `components`)."""
        snap = self.snapshot()
        for comp in self.components if components is None else components:
            comp.tick(now, snap)
        return snap


def _conforms(view: FakeView) -> DaemonView:
    return view  # the type checker holds FakeView to the contract
