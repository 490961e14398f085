"""`commands.Device` over the daemon's view (`appliance.component.DaemonView`).

The command handler runs in its own worker thread; applying a config belongs to the daemon's
main loop. So a config change is handed to the main loop (remote management's `tick` runs queued
calls) and the worker waits for the outcome. Everything else is safe from the worker: the
firewall runs `nft` in a subprocess, `IntelManager.load` swaps its store atomically (that is how
its own reload thread works), LEDs take a lock; `status` is the latest tick's snapshot.

Wiring (appliance.service.wiring): remote management is built with the hub link and started
before it; at start it builds ``ServiceDevice`` + ``CommandHandler`` and hands the handler to
the link (before the link connects, so the retained desired config of the first connection is
not missed). The daemon loads intel from `intel_paths(config)` (its `intel.paths` plus the
bundles the hub installed) at start and on every reload.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, Protocol

from appliance.component import DaemonView, Snapshot
from appliance.config import Config
from appliance.hublink.commands import CommandHandler, CommandStateError, intel_dir_for
from protocol import bundle
from protocol.envelope import KeyFileError

log = logging.getLogger(__name__)


def intel_paths(config: Config) -> list[str]:
    """What the daemon's IntelManager should load: configured files, then hub bundles."""
    return list(config.intel.paths) + bundle.installed_paths(intel_dir_for(config))


class ServiceDevice:
    """The real actions behind remote commands, on the daemon's view (`DaemonView`)."""

    def __init__(
        self,
        view: DaemonView,
        *,
        call_timeout: float = 120.0,
        action_delay: float = 2.0,
        reboot_command: Sequence[str] = ("systemctl", "reboot"),
        timer: Callable[[float, Callable[[], Any]], Any] | None = None,
    ) -> None:
        self.view = view
        self.call_timeout = call_timeout
        self.action_delay = action_delay
        self.reboot_command = tuple(reboot_command)
        self._timer = timer or _start_timer
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()

    # -- main-loop hand-over ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run the calls the handler queued (from the component's tick: the daemon's main loop)."""
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
        if not self.view.running or threading.current_thread() is threading.main_thread():
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
        return self.view.config

    def apply_config(self, config: Config) -> None:
        view = self.view
        self._in_loop(lambda: view.apply_config(config))

    def block(self, address: str, ttl: int) -> None:
        if not self.view.block(address, ttl):  # OSError when the firewall fails
            raise ValueError(f"{address} is covered by inline.never_block")

    def unblock(self, address: str) -> bool:
        return self.view.unblock(address)

    def reload_intel(self) -> str:
        return self.view.reload_intel()

    def ack_alerts(self, ids: Sequence[str] | None) -> int:
        return self.view.ack_alerts(ids)

    def identify(self, seconds: int) -> None:
        self.view.identify(seconds)

    def restart(self) -> None:
        """A clean stop; systemd (Restart=always) starts the daemon again."""
        log.warning("restart requested by the hub")
        self._timer(self.action_delay, self.view.request_stop)

    def reboot(self) -> None:
        log.warning("reboot requested by the hub")

        def go() -> None:
            try:
                subprocess.run(self.reboot_command, check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                log.error("reboot failed: %s", e)

        self._timer(self.action_delay, go)

    def status(self) -> dict[str, Any]:
        return dict(self.view.snapshot())


def _start_timer(delay: float, fn: Callable[[], Any]) -> threading.Timer:
    """Later, so the answer is on its way before the daemon goes away."""
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()
    return t


class RemoteManagement:
    """Daemon component: signed remote commands for the daemon, through the hub link it is
    wired to. Without a usable command key (or with unreadable replay state) the link runs on
    and answers every command with an error; the reason is in `stats()`."""

    name = "remote management"

    def __init__(self, config: Config, link: CommandLink | None) -> None:
        self.config = config
        self.link = link
        self.device: ServiceDevice | None = None
        self.handler: CommandHandler | None = None
        self.problem = ""

    def start(self, view: DaemonView) -> None:
        if self.link is None:
            self.problem = "no hub link to take commands from"
            log.warning("remote management off: %s", self.problem)
            return
        device = ServiceDevice(view)
        try:
            handler = CommandHandler.from_config(device)
        except (KeyFileError, CommandStateError) as e:
            self.problem = str(e)
            log.error("remote management off: %s", e)
            return
        self.device, self.handler = device, handler
        handler.start()
        self.link.set_handler(handler)

    def tick(self, now: float, snapshot: Snapshot) -> None:
        if self.device is not None:
            self.device.tick(now)
        if self.handler is not None:
            self.handler.tick(now)

    def configure(self, config: Config) -> None:
        self.config = config

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


class CommandLink(Protocol):
    """What remote management needs of the hub link (appliance.hublink.link.HubLink)."""

    def set_handler(self, handler: CommandHandler) -> None: ...


def component(config: Config, link: CommandLink | None) -> RemoteManagement | None:
    """The daemon's factory (appliance.service.wiring, started before the link): remote
    management over `link` when the config has a hub, else None."""
    return RemoteManagement(config, link) if config.hub.enabled else None
