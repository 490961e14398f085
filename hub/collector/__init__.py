"""The collector: MQTT 5 consumers that put what devices report into the hub's store.

Several collectors split the load through one shared subscription,
``$share/<group>/watchpost/v1/+/+/{alerts,telemetry,summary}``; statuses (retained, few) are
subscribed by every collector directly, which the store's bd_seq rules make idempotent. Each
collector has a persistent session (fixed client id, clean start off, session expiry), so the
broker keeps its messages while it restarts, and acknowledges a message only after the batch
holding it is committed (its PUBACKs leave in one write after the commit; hub/collector/mqtt.py):
device outbox -> broker -> database is at-least-once, and the store keeps each alert once (by
alert id).

A killed collector's unacknowledged messages stay in its session; when it comes back (same
client id) the broker sends them again. Bad messages are counted and quarantined, never raised.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes

from hub.collector.metrics import Metrics
from hub.collector.mqtt import Message, Refused, Session, reason_text
from hub.collector.parse import MAX_BYTES, Registry, parse, reason_of
from hub.store import AlertRow, BadRow, Batch, StatusRow, Store, SummaryRow, TelemetryRow
from hub.tls import client_context
from protocol import topics

log = logging.getLogger("watchpost.hub.collector")

SHARED_SUBS = (topics.ALERTS, topics.TELEMETRY, topics.SUMMARY)
# What ends a connection (the IO thread then reconnects): socket and TLS errors, timeouts, a
# broker DISCONNECT or a packet we do not speak, a malformed packet.
_LINK_ERRORS = (OSError, TimeoutError, ValueError, IndexError)


@dataclass(frozen=True)
class CollectorSettings:
    host: str
    port: int = 8883
    ca: str = ""
    cert: str = ""
    key: str = ""
    client_id: str = ""
    group: str = "watchpost-hub"
    site: str = "+"
    session_expiry: int = 7 * 86400  # the broker keeps our queue this long while we are away
    keepalive: int = 30
    batch_max: int = 1000
    batch_wait: float = 0.02  # seconds to fill a batch once a message is waiting
    receive_maximum: int = 4000  # unacknowledged messages the broker may send us
    max_bytes: int = MAX_BYTES
    registry: Path | None = None  # the CA's registry.json (device -> site)
    silent_after: float = 300.0
    upkeep_every: float = 5.0
    fold_every: float = 0.5  # seconds between folds of new alerts into the device rows
    retention_days: float = 400.0


def load_registry(path: Path | None) -> Registry:
    if path is None:
        return Registry(None)
    p = path / "registry.json" if path.is_dir() else path
    try:
        data = json.loads(p.read_text())
        return Registry({d: str(i["site"]) for d, i in data.get("devices", {}).items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"registry {p}: {e}") from None


class Collector:
    """One consumer. `start()` connects and consumes in threads; `stop()` ends cleanly.

    Threads: ``io`` owns the connection (connect, subscribe, read, write the PUBACKs, keep-alive,
    reconnect), ``consume`` turns what it read into batches and commits them, ``upkeep`` does
    fleet health. A batch's PUBACKs are handed back to ``io`` only after its commit and leave
    in one TLS write."""

    def __init__(
        self,
        settings: CollectorSettings,
        store: Store,
        metrics: Metrics | None = None,
        on_alert: Callable[[AlertRow], None] | None = None,
    ) -> None:
        if not settings.client_id:
            raise ValueError("a collector needs a fixed client id (its persistent session)")
        self.s = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.on_alert = on_alert
        self._registry_path = settings.registry
        self._registry_mtime = 0.0
        self.registry = Registry(None)
        self._reload_registry()
        self._tls: ssl.SSLContext | None = (
            client_context(settings.ca, settings.cert, settings.key) if settings.ca else None
        )
        # Messages read, with their connection generation (acks of an older connection are
        # void: the broker sends those messages again on the new one).
        self._inbox: collections.deque[tuple[int, Message]] = collections.deque()
        self._cond = threading.Condition()
        self._acks: list[tuple[int, list[int]]] = []  # (generation, mids) of committed batches
        self._acks_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._gen = 0
        self._stop = threading.Event()  # no more reading: finish what was read, acknowledge it
        self._io_stop = threading.Event()  # write the last acknowledgements, disconnect
        self._connected = threading.Event()
        self.problem = ""
        self.stored = 0
        self._threads: list[threading.Thread] = []
        self._io_thread: threading.Thread | None = None

    # -- registry -------------------------------------------------------------------------------

    def _reload_registry(self) -> None:
        if self._registry_path is None:
            return
        p = self._registry_path
        p = p / "registry.json" if p.is_dir() else p
        try:
            mtime = p.stat().st_mtime
        except OSError as e:
            if self.registry.devices is None:
                raise ValueError(f"registry {p}: {e.strerror}") from None
            return
        if mtime != self._registry_mtime:
            self.registry = load_registry(p)
            self._registry_mtime = mtime

    # -- MQTT: the io thread --------------------------------------------------------------------

    def _subscriptions(self) -> list[tuple[str, int]]:
        site = self.s.site
        subs = [(f"$share/{self.s.group}/{topics.ROOT}/{site}/+/{sub}", 1) for sub in SHARED_SUBS]
        subs.append((f"{topics.ROOT}/{site}/+/{topics.STATUS}", 1))
        return subs

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _io(self) -> None:
        delay = 1.0
        while not self._io_stop.is_set():
            sess: Session | None = None
            try:
                sess = Session(
                    self.s.host, self.s.port, self._tls, self.s.client_id,
                    keepalive=self.s.keepalive, session_expiry=self.s.session_expiry,
                    receive_maximum=self.s.receive_maximum,
                )  # fmt: skip
                codes = sess.subscribe(self._subscriptions())
                refused = [reason_text(PacketTypes.SUBACK, rc) for rc in codes if rc >= 0x80]
                if refused:
                    self.problem = f"broker refused the subscriptions: {', '.join(refused)}"
                    log.error("collector %s: %s", self.s.client_id, self.problem)
                else:
                    self._gen += 1
                    self.problem = ""
                    self.metrics.connected.set(1)
                    self._connected.set()  # subscribed: from now on nothing is published past us
                    log.info("collector %s connected (session present: %s)",
                             self.s.client_id, sess.session_present)  # fmt: skip
                    delay = 1.0
                    self._serve(sess, self._gen)
            except Refused as e:
                self.problem = f"broker refused: {e}"
                log.error("collector %s: %s", self.s.client_id, self.problem)
            except _LINK_ERRORS as e:
                was_up = self._connected.is_set()
                where = f"{self.s.host}:{self.s.port}"
                self.problem = f"disconnected: {e}" if was_up else f"cannot connect to {where}: {e}"
                if not self._io_stop.is_set():
                    log.warning("collector %s: %s", self.s.client_id, self.problem)
            finally:
                self._connected.clear()
                self.metrics.connected.set(0)
                if sess is not None:
                    sess.close(graceful=self._io_stop.is_set())
            if self._io_stop.wait(delay):
                return
            delay = min(delay * 2, 5.0)

    def _serve(self, sess: Session, gen: int) -> None:
        """Read, hand over, acknowledge, keep alive, until the connection fails or we stop."""
        next_check = 0.0
        while True:
            stopping = self._io_stop.is_set()
            reading = not self._stop.is_set()
            self._write_acks(sess, gen)
            if stopping:
                return
            readable = reading and sess.has_buffered()
            if not readable:
                rlist: list[Any] = [self._wake_r, sess.sock] if reading else [self._wake_r]
                r, w, _ = select.select(rlist, [sess.sock] if sess.want_write() else [], [], 0.5)
                if w:
                    sess.flush()
                if self._wake_r in r:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                readable = sess.sock in r
            if readable:
                msgs = sess.read()
                if msgs:
                    with self._cond:
                        self._inbox.extend((gen, m) for m in msgs)
                        self._cond.notify()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + sess.keepalive_due()

    def _write_acks(self, sess: Session, gen: int) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        mids = [m for g, batch in acks if g == gen for m in batch]
        if mids:
            sess.ack(mids)
            sess.flush()

    def start(self, connect_timeout: float = 15.0) -> None:
        t = threading.Thread(target=self._io, name="collector-io", daemon=True)
        t.start()
        self._io_thread = t
        for target, name in ((self._consume, "consume"), (self._upkeep, "upkeep")):
            t = threading.Thread(target=target, name=f"collector-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self._connected.wait(connect_timeout):
            self.stop()
            raise ConnectionError(
                f"no connection to {self.s.host}:{self.s.port} in {connect_timeout:g} s"
                + (f" ({self.problem})" if self.problem else "")
            )

    def stop(self) -> None:
        """Read no more, finish and acknowledge what was read, disconnect (the session stays)."""
        self._stop.set()
        self._wake()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(30)
        self._io_stop.set()
        self._wake()
        if self._io_thread is not None:
            self._io_thread.join(30)
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    # -- consuming ------------------------------------------------------------------------------

    def _take(self) -> list[tuple[int, Message]]:
        """Up to batch_max messages: the first one, then what comes within batch_wait."""
        inbox = self._inbox
        with self._cond:
            if not inbox:
                self._cond.wait(0.2)
                if not inbox:
                    return []
            deadline = time.monotonic() + self.s.batch_wait
            while len(inbox) < self.s.batch_max and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(len(inbox), self.s.batch_max)
            return [inbox.popleft() for _ in range(n)]

    def _consume(self) -> None:
        last_fold = 0.0
        while True:
            msgs = self._take()
            if msgs:
                self._handle_safely(msgs)
            elif self._stop.is_set():
                self._fold(wait=True)  # what this collector stored is in the device rows
                return
            if time.monotonic() - last_fold >= self.s.fold_every:
                self._fold()
                last_fold = time.monotonic()

    def _fold(self, wait: bool = False) -> None:
        """Seq high, gaps, counts and last seen of the alerts stored since the last fold (by
        any collector; one folds at a time, the other skips)."""
        try:
            while True:
                r = self.store.fold(wait=wait)
                self.metrics.gaps_opened.inc(r.gaps_opened)
                if not r.more:
                    return
        except Exception as e:  # the pending rows stay: the next fold takes them
            self.metrics.store_errors.inc()
            log.error("collector: fold failed: %s", e)

    def _handle_safely(self, msgs: list[tuple[int, Message]]) -> None:
        while True:
            try:
                self.handle(msgs)
                return
            except Exception as e:
                self.metrics.store_errors.inc()
                if self.store.data_error(e):
                    # One message the database refuses must not hold up the rest: take the
                    # batch apart; the refused message itself goes to quarantine.
                    if len(msgs) > 1:
                        for one in msgs:
                            self._handle_safely([one])
                        return
                    log.error("collector: the store refused %s: %s", msgs[0][1].topic, e)
                    self.handle(msgs, refused=f"store refused: {e}"[:300])
                    return
                # The database is away: keep the messages unacknowledged (the broker holds
                # them, and sends us no more than receive_maximum) and try the batch again.
                self.problem = f"store: {e}"
                log.error("collector: store failed (%s); retrying the batch", e)
                if self._stop.wait(1.0):
                    return  # not acknowledged: the broker sends them again next session

    def handle(self, msgs: list[tuple[int, Message]], refused: str = "") -> None:
        now = time.time()
        batch = Batch()
        m = self.metrics
        for _gen, msg in msgs:
            row: Any
            if refused:
                row = BadRow(msg.topic[:512], refused, msg.payload[:4096], now)
            else:
                row = parse(
                    msg.topic,
                    msg.payload,
                    retain=msg.retain,
                    now=now,
                    registry=self.registry,
                    max_bytes=self.s.max_bytes,
                )
            if isinstance(row, AlertRow):
                batch.alerts.append(row)
            elif isinstance(row, StatusRow):
                batch.statuses.append(row)
            elif isinstance(row, TelemetryRow):
                batch.telemetry.append(row)
            elif isinstance(row, SummaryRow):
                batch.summaries.append(row)
            else:
                assert isinstance(row, BadRow)
                batch.bad.append(row)
                m.bad.labels(reason_of(row)).inc()
                log.warning("collector: quarantined %s: %s", row.topic, row.reason)
        t0 = time.perf_counter()
        res = self.store.ingest(batch, now)
        m.commit_seconds.observe(time.perf_counter() - t0)
        # Only now, with the rows committed, tell the broker it may forget them (the io thread
        # writes a batch's PUBACKs in one go; those of an older connection are void).
        gen = self._gen
        mids = [msg.mid for g, msg in msgs if g == gen and msg.qos > 0]
        if mids:
            with self._acks_lock:
                self._acks.append((gen, mids))
            self._wake()
        m.messages.labels("alerts").inc(len(batch.alerts))
        m.messages.labels("status").inc(len(batch.statuses))
        m.messages.labels("telemetry").inc(len(batch.telemetry))
        m.messages.labels("summary").inc(len(batch.summaries))
        m.alerts_stored.inc(res.new_alerts)
        m.alerts_duplicate.inc(res.duplicates)
        self.stored += res.new_alerts
        if self.on_alert is not None:
            for a in batch.alerts:
                self.on_alert(a)

    # -- upkeep: fleet health, permanent gaps, retention -----------------------------------------

    def _upkeep(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(self.s.upkeep_every):
            try:
                self.upkeep(prune=time.monotonic() - last_prune > 3600)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
            except Exception as e:
                log.error("collector upkeep failed: %s", e)

    def upkeep(self, prune: bool = False, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with contextlib.suppress(ValueError):
            self._reload_registry()
        raised = self.store.check_silent(self.s.silent_after, now)
        for a in raised:
            self.metrics.hub_alerts.labels(a["kind"]).inc()
            log.warning("hub alert: %s", a["text"])
        self.store.finalize_gaps(now)
        if prune:
            self.store.prune(self.s.retention_days, now)
        self.metrics.refresh(self.store, self.s.silent_after, now)
        return raised
