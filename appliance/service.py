"""The daemon (`watchpost run`): wires intel, engine, alert pipeline, NFQUEUE worker(s) and the
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

Components (hub link, status page, LEDs) implement any of ``start(service)``, ``tick(now)``
(about once a second, in the main loop), ``configure(config)`` (live reconfig; raise ConfigError
to refuse), ``stop()`` and ``stats() -> dict`` (merged into `Service.stats`).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.alerts.pipeline import AlertPipeline, EveFile
from appliance.config import Config, ConfigError
from appliance.config import load as load_config
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelManager, IntelStore, intel_cache_dir
from appliance.inline.firewall import Counters, Firewall, FirewallError, RulesetSpec
from appliance.inline.queue import QueueWorker, WorkerProcess, port_sides, queue_table
from appliance.packet.flows import FlowTable, HomeNets

log = logging.getLogger(__name__)

# Components built at start: "module:callable", the callable taking the Config and returning a
# component (or None when the config leaves it off). Modules not in this build are skipped.
COMPONENTS: tuple[str, ...] = (
    "appliance.leds:build",
    "appliance.status.app:build",
    "appliance.hublink.device:component",  # before the link: it hands the link its command handler
    "appliance.hublink.link:component",
)

TICK = 1.0  # seconds between component/engine ticks
FAIL_OPEN_CHECK = 30.0  # seconds between fail-open checks (they read kernel counters)
WORKER_SILENCE = 10.0  # a worker that sent no stats for this long is stuck: restart it
WORKER_RESTART_GAP = 5.0


class ServiceError(RuntimeError):
    """The daemon cannot start (or go on); the message is the one-line reason."""


# -- systemd ------------------------------------------------------------------------------------


class Notifier:
    """sd_notify without a dependency: datagrams to $NOTIFY_SOCKET, watchdog pings on demand."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.watchdog_interval = 0.0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._last_ping = 0.0
        self._sock: socket.socket | None = None

    def notify(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            log.debug("sd_notify to %r failed: %s", self.address, e)
            return False

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def ping(self, now: float) -> None:
        """WATCHDOG=1, at most every third of the watchdog interval."""
        if self.watchdog_interval and now - self._last_ping >= self.watchdog_interval / 3:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- block requests -----------------------------------------------------------------------------


class BlockRequests:
    """The engines' blocker: requests are queued and applied to the firewall by the main loop,
    outside the packet callback (an ``nft`` call takes milliseconds)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, int]] = []
        self.until: dict[str, float] = {}  # address → when our last block of it runs out
        self.failed = 0

    def block(self, addr: str, ttl: int) -> None:
        self.pending.append((addr, ttl))

    def flush(self, firewall: Firewall, now: float) -> None:
        while self.pending:
            addr, ttl = self.pending.pop(0)
            until = self.until.get(addr)
            if until is not None and until - now > ttl / 2:
                continue  # blocked recently: no need to refresh the timeout yet
            try:
                if firewall.block(addr, ttl):
                    self.until[addr] = now + ttl if ttl > 0 else float("inf")
            except FirewallError as e:
                self.failed += 1
                log.error("%s", e)
        if len(self.until) > 10_000:
            self.until = {a: t for a, t in self.until.items() if t > now}

    def forget(self) -> None:
        self.until.clear()


# -- the service --------------------------------------------------------------------------------


def build_components(config: Config, names: Iterable[str] = COMPONENTS) -> list[Any]:
    """The components this build has, made from `config` (see `COMPONENTS`)."""
    out = []
    for entry in names:
        module, _, attr = entry.partition(":")
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            if isinstance(e, ModuleNotFoundError) and e.name == module:
                continue  # not in this build
            # The packet path never depends on an optional component.
            log.exception("component %s cannot be loaded; running without it", entry)
            continue
        try:
            component = getattr(mod, attr)(config)
        except Exception:
            log.exception("component %s failed to build; running without it", entry)
            continue
        if component is not None:
            out.append(component)
    return out


def intel_paths(config: Config) -> list[str]:
    """The intel files to load: `intel.paths` plus the bundles the hub installed."""
    try:
        from appliance.hublink.device import intel_paths as with_bundles
    except Exception:
        return list(config.intel.paths)
    try:
        return with_bundles(config)
    except Exception:
        log.exception("cannot list the hub's intel bundles")
        return list(config.intel.paths)


def protected_addresses(config: Config) -> list[tuple[str, str]]:
    """Addresses block mode must never drop that traffic alone does not show: the device's own
    default gateway (the office router) and the hub's addresses."""
    out = [(gw, "gateway") for gw in default_gateways()]
    if config.hub.enabled and config.hub.host:
        try:
            infos = socket.getaddrinfo(config.hub.host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            infos = []
        out += [(str(info[4][0]), "hub") for info in infos]
    return out


def default_gateways(route_file: str = "/proc/net/route") -> list[str]:
    """IPv4 default gateways of this machine (from the kernel's routing table)."""
    out = []
    try:
        lines = Path(route_file).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            out.append(socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little")))
    return out


class Service:
    """The running appliance. `start()`, then `run()` until a signal asks it to stop."""

    def __init__(
        self,
        config: Config,
        components: Iterable[Any] | None = None,
        *,
        firewall: Firewall | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.components = list(components) if components is not None else None
        self.firewall = firewall or Firewall(config)
        self.notifier = notifier or Notifier()
        self.blocks = BlockRequests()
        self.counts: Counter[str] = Counter()
        self.started = 0.0
        self.intel: IntelManager | None = None
        self.eve: EveFile | None = None
        self.pipeline: AlertPipeline | None = None
        self.engine: Engine | None = None
        self.queues: list[QueueWorker] = []
        self.workers: list[WorkerProcess] = []
        self.running = False
        # Inspection paused (no queue rules) while the bridge is promiscuous: see `_watch_bridge`.
        self.paused = False
        self._stop_requested = False
        self._reload_requested = False
        self._stopped = False
        self._new_intel: IntelStore | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_signals: dict[int, Any] = {}
        self._log_handlers: list[logging.Handler] = []
        self._next_tick = 0.0
        self._next_fail_open_check = 0.0
        self._fail_open_logged = 0
        # Fail-open accounting across ruleset replacements (their counters restart at zero).
        self._fail_open_before = 0
        self._received_at_apply = 0
        self._received_retired = 0  # packets received by worker processes since replaced
        self._kernel_cache: tuple[float, Counters, int] | None = None
        self._inherited_blocks: dict[str, float | None] = {}

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
        busy = {n: q["portid"] for n, q in queue_table().items() if n in self.queue_numbers(cfg)}
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
            if self.components is None:
                self.components = build_components(cfg)
            journal = next(
                (j for c in self.components if (j := getattr(c, "journal", None)) is not None),
                None,
            )
            self.pipeline = AlertPipeline(cfg, [self.eve], journal=journal)
            self.engine = Engine(cfg, self.intel.store, self.pipeline, self.blocks)
            for addr, why in protected_addresses(cfg):
                self.engine.protect(addr, why)
            self.engine.tickers.append(self.pipeline.tick)
            self._open_queues(cfg)
        except (OSError, FirewallError, ConfigError) as e:
            self._teardown()
            raise ServiceError(str(e)) from None
        # Components start before the ruleset: once packets are queued, the loop must run.
        self._start_components(cfg)
        try:
            self.paused = bridge_promiscuous(cfg.inline.bridge)
            if self.paused:
                log.warning(_PROMISC_WARNING, cfg.inline.bridge)
            self._apply_ruleset(cfg)
        except (OSError, FirewallError) as e:
            self.stop()
            raise ServiceError(str(e)) from None
        self.running = True
        self.notifier.ready(self._status_line())
        log.info("ready: %s", self._status_line())

    def _start_components(self, cfg: Config) -> None:
        if self.components is None:
            self.components = build_components(cfg)
        for comp in list(self.components):
            fn = getattr(comp, "start", None)
            if fn is None:
                continue
            try:
                fn(self)
            except Exception:
                log.exception("component %s failed to start; running without it", _name(comp))
                self.components.remove(comp)
                self.counts["component_errors"] += 1

    @staticmethod
    def queue_numbers(config: Config) -> list[int]:
        return list(range(config.inline.queue, config.inline.queue + config.inline.workers))

    def _open_queues(self, cfg: Config) -> None:
        assert self.engine is not None
        if cfg.inline.workers == 1:
            worker = QueueWorker(cfg, self.engine, cfg.inline.queue)
            worker.open()
            self.queues = [worker]
            return
        paths = list(self.intel.paths) if self.intel is not None else intel_paths(cfg)
        procs = [WorkerProcess(cfg, n, paths) for n in self.queue_numbers(cfg)]
        self.workers = procs
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()

    def _close_queues(self) -> None:
        for q in self.queues:
            q.close()
        for w in self.workers:
            self._received_retired += w.stats.get("received", 0)
            w.stop()
        self.queues = []
        self.workers = []

    def _apply_ruleset(self, cfg: Config) -> None:
        assert self.engine is not None
        if self.firewall.applied:
            self._fail_open_before = self.fail_open_events(fresh=True)
        self.firewall.apply(
            cfg, self.engine.deep_ports(), queueing=not self.paused, blocked=self._inherited_blocks
        )
        self._inherited_blocks = {}
        self._received_at_apply = self.received_total()
        self._kernel_cache = None
        self.blocks.forget()

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
        fds: list[Any] = [*self.queues, *(w for w in self.workers if w.conn is not None)]
        if self._wake is not None:
            fds.append(self._wake[0])
        ready, _, _ = select.select(fds, [], [], timeout)
        for q in self.queues:
            if q in ready:
                q.process()
        for w in self.workers:
            if w in ready:
                w.drain(self._worker_alert, self.blocks)
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
        """About once a second: engine housekeeping, workers' health, components."""
        if self.engine is not None:
            self.engine.tick(now)
        self._watch_bridge()
        if self.workers:
            self._supervise_workers()
        for comp in self.components or ():
            fn = getattr(comp, "tick", None)
            if fn is not None:
                try:
                    fn(now)
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
            self._apply_ruleset(self.config)
        except FirewallError as e:
            log.error("%s", e)
            self.paused = not promisc  # try again at the next tick
            return
        if promisc:
            log.warning(_PROMISC_WARNING, self.config.inline.bridge)
        else:
            log.info("bridge %s is not promiscuous any more: inspection resumed",
                     self.config.inline.bridge)  # fmt: skip

    def _supervise_workers(self) -> None:
        mono = time.monotonic()
        for i, w in enumerate(self.workers):
            if w.alive() and mono - w.last_heard > WORKER_SILENCE:
                log.error("worker for queue %d is stuck: restarting it", w.queue_num)
                w.stop(timeout=1.0)
            if w.alive() or mono - w.started_at < WORKER_RESTART_GAP:
                continue
            log.error("worker for queue %d died: restarting it", w.queue_num)
            self._received_retired += w.stats.get("received", 0)
            w.stop(timeout=0.5)
            fresh = WorkerProcess(self.config, w.queue_num, w.intel_paths)
            try:
                fresh.start()
                fresh.wait_ready(timeout=30.0)
            except OSError as e:
                log.error("%s", e)
            self.workers[i] = fresh
            self.counts["worker_restarts"] += 1

    def _component_failed(self, comp: Any, what: str) -> None:
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
            ok = self._reload()
        finally:
            self.notifier.ready(self._status_line())
        return ok

    def _reload(self) -> bool:
        try:
            new = load_config(self.config.source) if self.config.source else self.config
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            self.counts["reloads_refused"] += 1
            return False
        try:
            self.apply_config(new)  # counts its own refusals
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return False
        log.info("reloaded %s", new.source or "(built-in config)")
        return True

    def apply_config(self, new: Config) -> None:
        """Run with `new` from now on (SIGHUP, the hub's set-config). Raises ConfigError, with
        nothing changed, when the engine, the ruleset or a component refuses it. Main loop only.
        """
        old = self.config
        try:
            self._check(new)
        except ConfigError:
            self.counts["reloads_refused"] += 1
            raise
        done: list[Any] = []
        for comp in self.components or ():
            fn = getattr(comp, "configure", None)
            if fn is None:
                continue
            try:
                fn(new)
                done.append(comp)
            except Exception as e:
                if not isinstance(e, ConfigError):
                    log.exception("component %s failed to take the new config", _name(comp))
                self._configure_back(done, old)
                self.counts["reloads_refused"] += 1
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError("", f"{_name(comp)} failed to take the config: {e}") from None
        self.config = new
        try:
            self._apply_config(old, new)
        except (OSError, FirewallError) as e:
            log.error("reload failed half-way (%s); going back to the previous config", e)
            self.config = old
            self._configure_back(done, old)
            try:
                self._apply_config(new, old, force_queues=True)
            except (OSError, FirewallError) as e2:
                log.critical("cannot restore the previous config either: %s", e2)
            self.counts["reloads_refused"] += 1
            raise ConfigError("", f"applying it failed: {e}") from None
        self.counts["reloads"] += 1

    @staticmethod
    def _configure_back(components: list[Any], old: Config) -> None:
        for c in components:
            try:
                c.configure(old)
            except Exception:
                log.exception("component %s failed to go back", _name(c))

    def _check(self, new: Config) -> None:
        """Everything that can refuse `new`, checked before anything changes (ConfigError)."""
        for key in ("bridge", "office", "uplink"):
            name = getattr(new.inline, key)
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise ConfigError(f"inline.{key}", f"no network interface {name!r}") from None
        try:
            RulesetSpec.from_config(new, self.firewall.native_queue(), self.engine.deep_ports())
        except FirewallError as e:
            raise ConfigError("", str(e)) from None

    def _apply_config(self, old: Config, new: Config, force_queues: bool = False) -> None:
        assert self.engine is not None and self.pipeline is not None and self.intel is not None
        if new.log != old.log:
            self.setup_logging(new)
        if self.eve is not None:
            if new.log.eve != old.log.eve:
                fresh = EveFile(new.log.eve)
                self.pipeline.sinks = [fresh if s is self.eve else s for s in self.pipeline.sinks]
                self.eve.close()
                self.eve = fresh
            else:
                self.eve.reopen()  # after logrotate
        self.pipeline.configure(new)
        self.engine.configure(new)
        fresh_flows(self.engine, new)  # judge every flow again under the new config
        self.firewall.config = new
        keys = ("queue", "workers", "queue_maxlen")
        if force_queues or any(getattr(new.inline, k) != getattr(old.inline, k) for k in keys):
            log.info("queue settings changed: rebinding (traffic bypasses meanwhile)")
            self._close_queues()
            self._open_queues(new)
        else:
            for q in self.queues:
                q.configure(new)
            for w in self.workers:
                w.send("configure", new)
        self._apply_ruleset(new)
        self.intel.cache = new.intel.cache
        self.intel.reload(intel_paths(new))

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
        fresh_flows(self.engine, self.config)
        paths = list(self.intel.paths) if self.intel is not None else intel_paths(self.config)
        for w in self.workers:
            w.send("intel", paths)

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
        for comp in reversed(self.components or []):
            fn = getattr(comp, "stop", None)
            if fn is not None:
                try:
                    fn()
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
        deadline = time.monotonic() + 0.5
        while self.queues and time.monotonic() < deadline:
            if not sum(q.process(max_seconds=0.05) for q in self.queues):
                break
        self._close_queues()

    def _flush_alerts(self) -> None:
        """Report what detectors and the aggregator still hold (as replay does at its end)."""
        try:
            if self.engine is not None and self.engine.stats.packets:
                self.engine.tick(self.engine.ctx.now + 1e9)
            if self.pipeline is not None:
                self.pipeline.close()
        except Exception:
            log.exception("flushing open alerts failed")

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
        total = self._received_retired
        total += sum(q.stats.received for q in self.queues)
        total += sum(w.stats.get("received", 0) for w in self.workers)
        return total

    def _kernel(self, fresh: bool = False) -> tuple[Counters, int]:
        """Rule counters and queue depth, read at most once a second."""
        mono = time.monotonic()
        if fresh or self._kernel_cache is None or mono - self._kernel_cache[0] > 1.0:
            try:
                counters = self.firewall.counters()
            except FirewallError as e:
                log.debug("counters unavailable: %s", e)
                counters = Counters()
            kq = queue_table()
            depth = sum(kq[n]["total"] for n in self.queue_numbers(self.config) if n in kq)
            self._kernel_cache = (mono, counters, depth)
        return self._kernel_cache[1], self._kernel_cache[2]

    def fail_open_events(self, fresh: bool = False) -> int:
        """Packets the queue rules sent that the daemon never saw: let through by the kernel
        because the queue was full (fail-open) or nobody listened (bypass)."""
        counters, depth = self._kernel(fresh)
        received = self.received_total() - self._received_at_apply
        return self._fail_open_before + max(0, counters.queued - received - depth)

    def stats(self) -> dict[str, Any]:
        """The service's own counters plus every component's `stats()`."""
        cfg = self.config
        extra: dict[str, Any] = {}
        for comp in self.components or ():
            fn = getattr(comp, "stats", None)
            if fn is None:
                continue
            try:
                extra.update(fn())
            except Exception:
                self._component_failed(comp, "stats")
        agg: Counter[str] = Counter()
        for q in self.queues:
            agg.update(q.stats.as_dict())
            if self.engine is not None:
                agg["flows"] += len(self.engine.flows)
        for w in self.workers:
            agg.update(w.stats)
        hook_errors = agg.pop("hook_errors", 0)
        if self.engine is not None and self.queues:
            hook_errors += sum(self.engine.stats.hook_errors.values())
            agg.update(self.engine.safety_stats())
        counters, depth = self._kernel()
        kq = queue_table()
        ours = [kq[n] for n in self.queue_numbers(cfg) if n in kq]
        store = self.intel.store if self.intel is not None else None
        out: dict[str, Any] = {
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
            "hook_errors": hook_errors,
            "socket_overruns": agg["overruns"],
            "queued_by_kernel": counters.queued,
            "fail_open_events": self.fail_open_events(),
            "queue_depth": depth,
            "queue_dropped": sum(q["dropped"] + q["user_dropped"] for q in ours),
            "queues_bound": len(ours),
            "inspection_paused": self.paused,
            "blocked_packets": counters.blocked,
            "block_requests_failed": self.blocks.failed,
            "reloads": self.counts["reloads"],
            "reloads_refused": self.counts["reloads_refused"],
            "worker_restarts": self.counts["worker_restarts"],
            "component_errors": self.counts["component_errors"],
            "intel_version": store.version if store is not None else "",
            "intel_indicators": len(store) if store is not None else 0,
        }
        # Block guard: every refusal to block, by reason, and the blocks it allowed.
        out.update({k: v for k, v in agg.items() if k.startswith(("block_refused_", "blocks_"))})
        out["block_protected"] = agg["block_protected"]
        out["dns_untrusted"] = agg["dns_untrusted"]
        for key, value in extra.items():
            out.setdefault(key, value)  # components add keys, never replace the core ones
        return out

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
        if cfg.log.file:
            try:
                Path(cfg.log.file).parent.mkdir(parents=True, exist_ok=True)
                handlers.append(logging.handlers.WatchedFileHandler(cfg.log.file))
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


def fresh_flows(engine: Engine, config: Config) -> None:
    """Forget the flows the engine knows, so each is judged again (after a reload: a new mode,
    new intel or new detector options apply to flows already under way, too)."""
    engine.flows = FlowTable(config.inline.max_flows, HomeNets(config.inline.home_nets))


def _name(comp: Any) -> str:
    return getattr(comp, "name", None) or type(comp).__name__


def run_daemon(config: Config) -> None:
    """Start the daemon and run it until a signal stops it (exit 1 with the reason if it cannot)."""
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
