"""`commands.Device` over the running daemon (`appliance.service.Service`).

The command handler runs in its own worker thread; the service's config and components belong to
its main loop. So a config change is handed to the main loop (this object is also a service
component: its `tick` runs queued calls) and the worker waits for the outcome. Everything else is
safe from the worker: the firewall runs `nft` in a subprocess, `IntelManager.load` swaps its store
atomically (that is how its own reload thread works), LEDs take a lock.

Wiring in the daemon: list ``"appliance.hublink.device:component"`` in `service.COMPONENTS` before
``"appliance.hublink.link:component"``; at start it builds ``ServiceDevice`` +
``CommandHandler`` and hands the handler to the link (before the link connects, so the retained
desired config of the
first connection is not missed). The daemon must load intel from `intel_paths(config)` (its
`intel.paths` plus the bundles the hub installed) at start and on every reload, and offer
``Service.apply_config(new)`` (apply live or raise ConfigError with nothing changed).
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

from appliance.config import Config, ConfigError
from appliance.hublink.commands import CommandHandler, CommandStateError, intel_dir_for
from protocol import bundle
from protocol.envelope import KeyFileError

log = logging.getLogger(__name__)


def intel_paths(config: Config) -> list[str]:
    """What the daemon's IntelManager should load: configured files, then hub bundles."""
    return list(config.intel.paths) + bundle.installed_paths(intel_dir_for(config))


class ServiceDevice:
    """The real actions behind remote commands, on a `Service`."""

    def __init__(
        self,
        service: Any,
        *,
        call_timeout: float = 120.0,
        action_delay: float = 2.0,
        reboot_command: Sequence[str] = ("systemctl", "reboot"),
        timer: Callable[[float, Callable[[], Any]], Any] | None = None,
    ) -> None:
        self.service = service
        self.call_timeout = call_timeout
        self.action_delay = action_delay
        self.reboot_command = tuple(reboot_command)
        self._timer = timer or _start_timer
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()

    # -- main-loop hand-over ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run the calls the handler queued (component hook: the daemon's main loop)."""
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        if (
            not getattr(self.service, "running", False)
            or threading.current_thread() is threading.main_thread()
        ):
            return fn()
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        try:
            return fut.result(timeout=self.call_timeout)
        except TimeoutError:
            if fut.cancel():
                raise TimeoutError(
                    f"the daemon's main loop did not take the change within {self.call_timeout:g}"
                    " s; nothing was changed"
                ) from None
            return fut.result()  # it started meanwhile: its outcome is the answer
        except CancelledError:
            raise TimeoutError("the daemon is stopping; nothing was changed") from None

    def close(self) -> None:
        """Cancel calls still waiting for the main loop (the daemon is stopping)."""
        while True:
            try:
                _fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            fut.cancel()

    # -- Device ----------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.service.config

    def apply_config(self, config: Config) -> None:
        apply = getattr(self.service, "apply_config", None)
        if apply is None:
            raise ConfigError(
                "", "this daemon cannot apply a config live (no Service.apply_config)"
            )
        self._in_loop(lambda: apply(config))

    def block(self, address: str, ttl: int) -> None:
        try:
            ok = self.service.firewall.block(address, ttl)
        except RuntimeError as e:  # FirewallError
            raise OSError(str(e)) from None
        if not ok:
            raise ValueError(f"{address} is covered by inline.never_block")

    def unblock(self, address: str) -> bool:
        try:
            return bool(self.service.firewall.unblock(address))
        except RuntimeError as e:
            raise OSError(str(e)) from None

    def reload_intel(self) -> str:
        manager = self.service.intel
        if manager is None:
            raise ValueError("the intel store is not running")
        manager.paths = tuple(intel_paths(self.service.config))
        result = manager.load()
        if not result.ok:
            raise ValueError(result.message)
        return str(result.version)

    def _components(self, method: str) -> list[Any]:
        return [c for c in self.service.components or () if callable(getattr(c, method, None))]

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        total = 0
        for comp in self._components("ack_alerts"):
            total += int(comp.ack_alerts(ids) or 0)
        for comp in self._components("ack"):  # the LEDs: all outstanding alerts at once
            total = max(total, int(comp.ack() or 0))
        return total

    def identify(self, seconds: int) -> None:
        leds = self._components("identify")
        if not leds:
            raise NotImplementedError("this unit has no LEDs to blink")
        for comp in leds:
            comp.identify(seconds)

    def restart(self) -> None:
        """A clean stop; systemd (Restart=always) starts the daemon again."""
        log.warning("restart requested by the hub")
        self._timer(self.action_delay, self.service.request_stop)

    def reboot(self) -> None:
        log.warning("reboot requested by the hub")

        def go() -> None:
            try:
                subprocess.run(self.reboot_command, check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                log.error("reboot failed: %s", e)

        self._timer(self.action_delay, go)

    def status(self) -> dict[str, Any]:
        return dict(self.service.stats())


def _start_timer(delay: float, fn: Callable[[], Any]) -> threading.Timer:
    """Later, so the answer is on its way before the daemon goes away."""
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()
    return t


class RemoteManagement:
    """Service component: signed remote commands for the daemon, through the HubLink among the
    service's components. Without a usable command key (or with unreadable replay state) the
    link runs on and answers every command with an error; the reason is in `stats()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device: ServiceDevice | None = None
        self.handler: CommandHandler | None = None
        self.problem = ""

    def start(self, service: Any) -> None:
        link = next(
            (c for c in service.components or () if callable(getattr(c, "set_handler", None))),
            None,
        )
        if link is None:
            self.problem = "no hub link to take commands from"
            log.warning("remote management off: %s", self.problem)
            return
        device = ServiceDevice(service)
        try:
            handler = CommandHandler.from_config(device)
        except (KeyFileError, CommandStateError) as e:
            self.problem = str(e)
            log.error("remote management off: %s", e)
            return
        self.device, self.handler = device, handler
        handler.start()
        link.set_handler(handler)

    def tick(self, now: float) -> None:
        if self.device is not None:
            self.device.tick(now)
        if self.handler is not None:
            self.handler.tick(now)

    def stop(self) -> None:
        if self.device is not None:
            self.device.close()
        if self.handler is not None:
            self.handler.stop()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.handler is not None, "problem": self.problem}
        if self.handler is not None:
            out.update(self.handler.stats())
        return {"remote_management": out}


def component(config: Config) -> RemoteManagement | None:
    """The daemon's factory (``"appliance.hublink.device:component"`` in service.COMPONENTS, listed
    before the link's): remote management when the config has a hub, else None."""
    return RemoteManagement(config) if config.hub.enabled else None
