"""The daemon (`watchpost run`): wires intel, engine, alert pipeline, NFQUEUE queue set and the
ruleset together, talks to systemd, and handles signals and live reload.

Start order, each step undone if a later one fails, so nothing is left half-applied:

1. refuse if our queue numbers are bound by a live process (another daemon is running);
2. remove what a dead daemon left behind (its ruleset);
3. load intel; build the alert pipeline (EVE file) and the engine;
4. bind the queue(s) and make them fail open; start the components;
5. apply the ruleset: only now are packets queued, because now someone listens (and nothing
   else holds up the loop that answers them);
6. tell systemd ``READY=1``.

The packet loop never blocks for long (select with a timeout, bounded batches), so ticks, signals
and ``WATCHDOG=1`` pings happen; a stuck loop stops pinging and systemd restarts us, while the
kernel's fail-open and bypass keep the office online. SIGTERM/SIGINT stop cleanly (the ruleset
goes first, so the bridge is plain again); SIGHUP reloads config and intel, and a bad new config
is refused with a one-line reason while the old one keeps running.

Components follow `appliance.component.Component` and see the daemon only through a
`ServiceView`; they are built and connected in `appliance.service.wiring`. Once a tick the
daemon takes one stats snapshot and hands it to every component's `tick`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import select
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.alerts.pipeline import AlertPipeline, EveFile
from appliance.component import Component
from appliance.config import Config, ConfigError
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelManager, IntelStore, intel_cache_dir
from appliance.hublink.device import intel_paths
from appliance.inline.firewall import Firewall, FirewallError
from appliance.inline.ports import bridge_netfilter_problem
from appliance.inline.ports import resolve as resolve_ports
from appliance.inline.queue import port_sides, queue_table
from appliance.service import reconfigure, wiring
from appliance.service.blocks import BlockRequests
from appliance.service.metrics import KernelCounters, component_stats, merged
from appliance.service.notify import Notifier
from appliance.service.protect import protected_addresses
from appliance.service.queues import QueueSet, queue_numbers, queue_set
from appliance.service.view import ServiceView
from appliance.service.wiring import Wiring
from appliance.update.job import JobView

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between component/engine ticks
FAIL_OPEN_CHECK = 30.0  # seconds between fail-open checks (they read kernel counters)
# How long a stop waits for the loads running in threads (an intel reload; the rules detector's
# reload of the hub's bundles, which the final flush tick may start) before it goes on.
STOP_LOAD_WAIT = 10.0


class ServiceError(RuntimeError):
    """The daemon cannot start (or go on); the message is the one-line reason."""


class Service:
    """The running appliance. `start()`, then `run()` until a signal asks it to stop."""

    def __init__(
        self,
        config: Config,
        wired: Wiring | None = None,
        *,
        firewall: Firewall | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.wiring = wired  # built at start() when not given
        self.firewall = firewall or Firewall(config)
        self.notifier = notifier or Notifier()
        self.view = ServiceView(self)
        self.blocks = BlockRequests()
        self.kernel = KernelCounters(self.firewall)
        self.counts: Counter[str] = Counter()
        self.started = 0.0
        self.intel: IntelManager | None = None
        self.eve: EveFile | None = None
        self.pipeline: AlertPipeline | None = None
        self.engine: Engine | None = None
        self.queues: QueueSet | None = None
        self.last_snapshot: dict[str, Any] = {}
        self.update_view: JobView | None = None  # the firmware update job (status, page)
        self.running = False
        # Inspection paused (no queue rules) while the bridge is promiscuous: see `_watch_bridge`.
        self.paused = False
        # Why bridged traffic would bypass netfilter (br_netfilter sysctls off), "" when fine.
        self.netfilter_problem = ""
        self._stop_requested = False
        self._reload_requested = False
        self._stopped = False
        self._new_intel: IntelStore | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_signals: dict[int, Any] = {}
        self._log_handlers: list[logging.Handler] = []
        self.log_file = ""  # the file our log goes to (what the hub's `logs` may read)
        self._next_tick = 0.0
        self._next_fail_open_check = 0.0
        self._fail_open_logged = 0
        self._received_retired = 0  # packets received by queue sets since closed
        self._inherited_blocks: dict[str, float | None] = {}

    @property
    def components(self) -> list[Component]:
        return self.wiring.components if self.wiring is not None else []

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Bring everything up in order; on failure undo it all and raise ServiceError."""
        cfg = self.config
        self.started = time.time()
        self.setup_logging(cfg)
        log.info(
            "watchpost %s starting: mode %s, bridge %s (%s/%s), queue %d, %d worker(s)",
            __version__,
            cfg.inline.mode,
            cfg.inline.bridge,
            cfg.inline.office,
            cfg.inline.uplink,
            cfg.inline.queue,
            cfg.inline.workers,
        )
        busy = {n: q["portid"] for n, q in queue_table().items() if n in queue_numbers(cfg)}
        if busy:
            n, portid = next(iter(busy.items()))
            raise ServiceError(
                f"NFQUEUE {n} is already bound (netlink port {portid}): "
                "is another watchpost (or other NFQUEUE program) running?"
            )
        self._install_signals()
        try:
            # Whatever a dead daemon left goes, except its blocks: a crash must not unblock.
            self._inherited_blocks = self.firewall.blocked()
            self.firewall.remove()
            port_sides(cfg)  # the bridge ports exist
            self.intel = IntelManager(
                intel_paths(cfg),
                cache=cfg.intel.cache,
                cache_dir=intel_cache_dir(cfg.device.state_dir),
                listeners=[self._on_intel],
            )
            result = self.intel.load()
            for problem in result.problems[:10]:
                log.warning("intel: %s", problem)
            self.eve = EveFile(cfg.log.eve)
            # Components are made (not started) first: the hub link owns the outbox, which is
            # the pipeline's journal, so every numbered alert is stored before it is published.
            if self.wiring is None:
                self.wiring = wiring.build(cfg)
            self.pipeline = AlertPipeline(cfg, [self.eve], journal=self.wiring.journal)
            self.engine = Engine(cfg, self.intel.store, self.pipeline, self.blocks)
            for addr, why in protected_addresses(cfg):
                self.engine.protect(addr, why)
            self.engine.tickers.append(self.pipeline.tick)
            self.open_queues(cfg)
        except (OSError, FirewallError, ConfigError) as e:
            self._teardown()
            raise ServiceError(str(e)) from None
        # Components start before the ruleset: once packets are queued, the loop must run.
        self._start_components()
        try:
            self.paused = bridge_promiscuous(cfg.inline.bridge)
            self.netfilter_problem = bridge_netfilter_problem() or ""
            if self.netfilter_problem:
                log.error("%s", self.netfilter_problem)
            if self.paused:
                log.warning(_PROMISC_WARNING, cfg.inline.bridge)
            self.apply_ruleset(cfg)
        except (OSError, FirewallError) as e:
            self.stop()
            raise ServiceError(str(e)) from None
        self.last_snapshot = self.stats()
        self.running = True
        self.notifier.ready(self._status_line())
        log.info("ready: %s", self._status_line())

    def _start_components(self) -> None:
        assert self.wiring is not None
        for comp in list(self.wiring.components):
            try:
                comp.start(self.view)
            except Exception:
                log.exception("component %s failed to start; running without it", comp.name)
                self.wiring.components.remove(comp)
                if comp is self.wiring.leds:
                    self.wiring.leds = None
                self.counts["component_errors"] += 1

    @staticmethod
    def queue_numbers(config: Config) -> list[int]:
        return queue_numbers(config)

    def open_queues(self, cfg: Config) -> None:
        assert self.engine is not None
        paths = list(self.intel.paths) if self.intel is not None else intel_paths(cfg)
        queues = queue_set(cfg, self.engine, paths)
        self.queues = queues
        queues.open()

    def close_queues(self) -> None:
        if self.queues is not None:
            self._received_retired += self.queues.close()
        self.queues = None

    def apply_ruleset(self, cfg: Config) -> None:
        assert self.engine is not None
        if self.firewall.applied:
            self.kernel.before_replace(queue_numbers(self.config), self.received_total())
        self.firewall.apply(
            cfg, self.engine.deep_ports(), queueing=not self.paused, blocked=self._inherited_blocks
        )
        self._inherited_blocks = {}
        self.kernel.after_apply(self.received_total())
        self.blocks.forget()

    def fresh_flows(self) -> None:
        if self.engine is not None:
            self.engine.reset_flows()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """The main loop, until SIGTERM/SIGINT (or `request_stop`); then a clean stop."""
        try:
            while not self._stop_requested:
                self.loop_once()
        finally:
            self.stop()

    def loop_once(self) -> None:
        now = time.monotonic()
        timeout = min(max(0.0, self._next_tick - now), TICK)
        if self.notifier.watchdog_interval:
            timeout = min(timeout, self.notifier.watchdog_interval / 3)
        fds: list[Any] = self.queues.fds() if self.queues is not None else []
        if self._wake is not None:
            fds.append(self._wake[0])
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.queues is not None:
            self.queues.handle(ready, self._worker_alert, self.blocks)
        if self._wake is not None and self._wake[0] in ready:
            with contextlib.suppress(BlockingIOError):
                while self._wake[0].recv(512):
                    pass
        if self.blocks.pending:
            self.blocks.flush(self.firewall, time.time())
        if self._reload_requested:
            self.reload()
        if self._new_intel is not None:
            self._take_new_intel()
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self.tick(time.time())
        self.notifier.ping(time.monotonic())

    def _worker_alert(self, alert: Any) -> None:
        assert self.pipeline is not None
        self.pipeline(alert)

    def tick(self, now: float) -> None:
        """About once a second: engine housekeeping, workers' health, then one stats snapshot
        handed to every component."""
        if self.engine is not None:
            self.engine.tick(now)
        self._watch_bridge()
        if self.queues is not None:
            self.counts["worker_restarts"] += self.queues.supervise()
        snapshot = self.stats()
        self.last_snapshot = snapshot
        for comp in self.components:
            try:
                comp.tick(now, snapshot)
            except Exception:
                self._component_failed(comp, "tick")
        mono = time.monotonic()
        if mono >= self._next_fail_open_check:
            self._next_fail_open_check = mono + FAIL_OPEN_CHECK
            events = self.fail_open_events(fresh=True)
            if events > self._fail_open_logged:
                log.warning(
                    "%d packet(s) passed uninspected since start (queue full or no listener: "
                    "fail-open/bypass)",
                    events,
                )
                self._fail_open_logged = events

    def _watch_bridge(self) -> None:
        """Pause inspection while the bridge is promiscuous, resume when it is not.

        A capture on the bridge device (tcpdump -i br0) puts it in promiscuous mode; the bridge
        then clones every frame it forwards for local delivery, the clone shares the packet's
        still unconfirmed conntrack entry, and the kernel drops such a packet when it is queued
        (nf_ct_drop_unconfirmed): the first packet of every new connection would be lost.
        """
        promisc = bridge_promiscuous(self.config.inline.bridge)
        if promisc == self.paused:
            return
        self.paused = promisc
        try:
            self.apply_ruleset(self.config)
        except FirewallError as e:
            log.error("%s", e)
            self.paused = not promisc  # try again at the next tick
            return
        if promisc:
            log.warning(_PROMISC_WARNING, self.config.inline.bridge)
        else:
            log.info("bridge %s is not promiscuous any more: inspection resumed",
                     self.config.inline.bridge)  # fmt: skip

    def _component_failed(self, comp: Component, what: str) -> None:
        key = f"{_name(comp)}.{what}"
        if not self.counts[f"error:{key}"]:
            log.exception("component hook %s failed (further failures only counted)", key)
        self.counts[f"error:{key}"] += 1
        self.counts["component_errors"] += 1

    # -- signals --------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wakeup()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"\0")

    def _install_signals(self) -> None:
        if self._wake is not None:
            return
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wake = (r, w)
        try:
            signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        except ValueError:
            return  # not the main thread (tests): request_stop/request_reload still work
        handlers = {
            signal.SIGTERM: lambda *_: self.request_stop(),
            signal.SIGINT: lambda *_: self.request_stop(),
            signal.SIGHUP: lambda *_: self.request_reload(),
        }
        for sig, fn in handlers.items():
            self._old_signals[sig] = signal.signal(sig, fn)

    def _restore_signals(self) -> None:
        for sig, old in self._old_signals.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_signals.clear()
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        if self._wake is not None:
            for s in self._wake:
                s.close()
            self._wake = None

    # -- reload ---------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and intel; a bad config is refused and the old one kept."""
        self._reload_requested = False
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        try:
            return reconfigure.reload(self)
        finally:
            self.notifier.ready(self._status_line())

    def apply_config(self, new: Config) -> None:
        """Run with `new` from now on (SIGHUP, the hub's set-config). Raises ConfigError, with
        nothing changed, when the engine, the ruleset or a component refuses it. Main loop only.
        """
        reconfigure.apply_config(self, new)

    def _on_intel(self, store: IntelStore) -> None:
        """IntelManager listener (its loader thread): the main loop swaps the store in."""
        self._new_intel = store
        self._wakeup()

    def _take_new_intel(self) -> None:
        """In the main loop: use the new intel store and judge every flow afresh with it."""
        store, self._new_intel = self._new_intel, None
        if store is None or self.engine is None:
            return
        self.engine.set_intel(store)
        self.fresh_flows()
        paths = list(self.intel.paths) if self.intel is not None else intel_paths(self.config)
        if self.queues is not None:
            self.queues.set_intel(paths)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Clean stop, the office first: the ruleset goes (the bridge is plain again) and queued
        packets are answered; then open scans/episodes and aggregation windows are reported (into
        the outbox); then the components stop (the hub link sends what it can and says
        `disconnected`)."""
        if self._stopped:
            return
        self._stopped = True
        self.running = False
        self.notifier.notify("STOPPING=1")
        log.info("stopping")
        self._release_packet_path()
        self._flush_alerts()
        # No load of ours still reads or writes the state dir once stop returns (a caller may
        # remove it next); the hub link, which installs rule bundles there, stops after this.
        self._wait_background_loads(STOP_LOAD_WAIT)
        for comp in reversed(self.components):
            try:
                comp.stop()
            except Exception:
                log.exception("component %s failed to stop", _name(comp))
        self._close_files()
        log.info("stopped")

    def _release_packet_path(self) -> None:
        """Remove the ruleset, answer what is still queued, unbind: traffic no longer needs us."""
        try:
            self.firewall.remove()
        except FirewallError as e:
            log.error("%s", e)
        # Packets already queued would be dropped by an unbind: answer them first.
        if self.queues is not None:
            self.queues.answer_pending(0.5)
        self.close_queues()

    def _flush_alerts(self) -> None:
        """Report what detectors and the aggregator still hold (as replay does at its end)."""
        try:
            if self.engine is not None and self.engine.stats.packets:
                self.engine.tick(self.engine.ctx.now + 1e9)
            if self.pipeline is not None:
                self.pipeline.close()
        except Exception:
            log.exception("flushing open alerts failed")

    def _wait_background_loads(self, timeout: float) -> None:
        """Wait (at most `timeout` s in all) for the loads running in threads: the intel
        manager's reload (it writes the intel cache under the state dir) and the engine's
        detectors' (``_wait_reload``: the rules detector's hub-bundle reload)."""
        deadline = time.monotonic() + timeout
        waits = [("intel", self.intel.wait)] if self.intel is not None else []
        for det in self.engine.detectors if self.engine is not None else []:
            wait = getattr(det, "_wait_reload", None)
            if wait is not None:
                waits.append((det.name, wait))
        for name, wait in waits:
            try:
                wait(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("waiting for the %s load to finish failed", name)

    def _teardown(self) -> None:
        """Undo a failed start."""
        self._release_packet_path()
        self._close_files()

    def _close_files(self) -> None:
        if self.eve is not None:
            self.eve.close()
        self._restore_signals()
        self.notifier.close()

    # -- numbers --------------------------------------------------------------------------------

    def received_total(self) -> int:
        return self._received_retired + (self.queues.received() if self.queues else 0)

    def fail_open_events(self, fresh: bool = False) -> int:
        """Packets the queue rules sent that the daemon never saw (fail-open or bypass)."""
        return self.kernel.fail_open_events(
            queue_numbers(self.config), self.received_total(), fresh
        )

    def stats(self) -> dict[str, Any]:
        """The service's own counters plus every component's `stats()` (one snapshot)."""
        cfg = self.config
        extra = component_stats(self.components, self._component_failed)
        agg = self.queues.counters() if self.queues is not None else Counter()
        numbers = queue_numbers(cfg)
        counters, depth = self.kernel.read(numbers)
        kq = queue_table()
        ours = [kq[n] for n in numbers if n in kq]
        store = self.intel.store if self.intel is not None else None
        core: dict[str, Any] = {
            "state": "running" if self.running else "stopped",
            "version": __version__,
            "mode": cfg.inline.mode,
            "workers": cfg.inline.workers,
            "uptime": round(time.time() - self.started, 1) if self.started else 0.0,
            "packets": agg["received"],
            "decoded": agg["decoded"],
            "malformed": agg["malformed"],
            "flows": agg["flows"],
            "alerts": self.pipeline.emitted if self.pipeline is not None else 0,
            "alerts_high": self.pipeline.by_severity[1] if self.pipeline is not None else 0,
            "verdicts_pass": agg["passed"],
            "verdicts_block": agg["blocked"],
            "callback_errors": agg["callback_errors"],
            "hook_errors": agg["hook_errors"],
            "socket_overruns": agg["overruns"],
            "queued_by_kernel": counters.queued,
            "fail_open_events": self.fail_open_events(),
            "queue_depth": depth,
            "queue_dropped": sum(q["dropped"] + q["user_dropped"] for q in ours),
            "queues_bound": len(ours),
            "inspection_paused": self.paused,
            "bridge_netfilter": self.netfilter_problem,
            "blocked_packets": counters.blocked,
            "block_requests_failed": self.blocks.failed,
            "reloads": self.counts["reloads"],
            "reloads_refused": self.counts["reloads_refused"],
            "worker_restarts": self.counts["worker_restarts"],
            "component_errors": self.counts["component_errors"],
            "intel_version": store.version if store is not None else "",
            "intel_indicators": len(store) if store is not None else 0,
            # Block guard: every refusal to block, by reason, and the blocks it allowed.
            **{k: v for k, v in agg.items() if k.startswith(("block_refused_", "blocks_"))},
            "block_protected": agg["block_protected"],
            "dns_untrusted": agg["dns_untrusted"],
        }
        if self.update_view is None:
            self.update_view = JobView(cfg.device.state_dir)
        core["update"] = self.update_view.summary()
        return merged(core, extra)

    def _status_line(self) -> str:
        store = self.intel.store if self.intel is not None else None
        return (
            f"{self.config.inline.mode} mode on {self.config.inline.bridge}, "
            f"intel {store.version if store is not None else 'none'}"
        )

    # -- logging --------------------------------------------------------------------------------

    def setup_logging(self, cfg: Config) -> None:
        """Log to stderr (the journal under systemd) and to ``log.file``."""
        root = logging.getLogger()
        for h in self._log_handlers:
            root.removeHandler(h)
            h.close()
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        problem = None
        self.log_file = ""
        if cfg.log.file:
            try:
                Path(cfg.log.file).parent.mkdir(parents=True, exist_ok=True)
                handlers.append(logging.handlers.WatchedFileHandler(cfg.log.file))
                self.log_file = cfg.log.file
            except OSError as e:
                problem = f"log.file: cannot open {cfg.log.file}: {e.strerror or e}"
        for h in handlers:
            h.setFormatter(fmt)
            root.addHandler(h)
        root.setLevel(cfg.log.level.upper())
        self._log_handlers = handlers
        if problem:
            log.warning("%s (logging to stderr only)", problem)


_PROMISC_WARNING = (
    "bridge %s is in promiscuous mode (a packet capture on it?): inspection paused, because "
    "the kernel would drop the first packet of every new connection; capture on the bridge "
    "ports instead"
)


def bridge_promiscuous(name: str) -> bool:
    """Whether the bridge device has IFF_PROMISC set (e.g. tcpdump -i br0 is running)."""
    try:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return False
    return bool(flags & 0x100)


def _name(comp: Any) -> str:
    return getattr(comp, "name", None) or type(comp).__name__


def run_daemon(config: Config) -> None:
    """Start the daemon and run it until a signal stops it (exit 1 with the reason if it cannot)."""
    try:
        config = resolve_ports(config)  # inline.uplink/office = "auto"
    except ConfigError as e:
        log.error("cannot start: %s", e)
        sys.exit(1)
    service = Service(config)
    try:
        service.start()
    except ServiceError as e:
        log.error("cannot start: %s", e)
        sys.exit(1)
    except OSError as e:
        if e.errno == errno.EPERM:
            log.error("cannot start: %s (run as root or with CAP_NET_ADMIN)", e)
            sys.exit(1)
        raise
    service.run()
