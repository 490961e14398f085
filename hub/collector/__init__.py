"""The collector: MQTT 5 consumers that put what devices report into the hub's store.

Several collectors split the load through one shared subscription,
``$share/<group>/watchpost/v1/+/+/{alerts,telemetry,summary}``; statuses (retained, few) are
subscribed by every collector directly, which the store's bd_seq rules make idempotent. Each
collector has a persistent session (fixed client id, clean start off, session expiry), so the
broker keeps its messages while it restarts, and acknowledges a message only after the batch
holding it is committed (paho ``manual_ack``): device outbox -> broker -> database is
at-least-once, and the store keeps each alert once (by alert id).

A killed collector's unacknowledged messages stay in its session; when it comes back (same
client id) the broker sends them again. Bad messages are counted and quarantined, never raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.collector.metrics import Metrics
from hub.collector.parse import MAX_BYTES, Registry, parse, reason_of
from hub.store import AlertRow, BadRow, Batch, StatusRow, Store, SummaryRow, TelemetryRow
from protocol import topics

log = logging.getLogger("watchpost.hub.collector")

SHARED_SUBS = (topics.ALERTS, topics.TELEMETRY, topics.SUMMARY)


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
    """One consumer. `start()` connects and consumes in threads; `stop()` ends cleanly."""

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
        self.inbox: queue.Queue[tuple[int, mqtt.MQTTMessage]] = queue.Queue()
        self._gen = 0  # connection generation: acks of an older connection are void
        self._stop = threading.Event()
        self._connected = threading.Event()
        self.problem = ""
        self.stored = 0
        self._threads: list[threading.Thread] = []
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.ca:
            try:
                c.tls_set(
                    ca_certs=settings.ca,
                    certfile=settings.cert or None,
                    keyfile=settings.key or None,
                )
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"TLS files (ca/cert/key): {e}") from None
        c.reconnect_delay_set(1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

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

    # -- MQTT -----------------------------------------------------------------------------------

    def _connect_props(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.s.session_expiry
        props.ReceiveMaximum = self.s.receive_maximum
        return props

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.problem = f"broker refused: {rc}"
            self.metrics.connected.set(0)
            return
        self._gen += 1
        sock = client.socket()
        if sock is not None:  # acks (small packets) leave at once, not after a delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        site = self.s.site
        subs = [
            (f"$share/{self.s.group}/{topics.ROOT}/{site}/+/{sub}", SubscribeOptions(qos=1))
            for sub in SHARED_SUBS
        ]
        subs.append((f"{topics.ROOT}/{site}/+/{topics.STATUS}", SubscribeOptions(qos=1)))
        client.subscribe(subs)
        self.problem = ""
        self.metrics.connected.set(1)
        log.info(
            "collector %s connected (session present: %s)",
            self.s.client_id,
            getattr(flags, "session_present", "?"),
        )

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        refused = [str(rc) for rc in rcs if rc.is_failure]
        if refused:
            self.problem = f"broker refused the subscriptions: {', '.join(refused)}"
            log.error("collector %s: %s", self.s.client_id, self.problem)
            return
        self._connected.set()  # subscribed: from now on nothing is published past us

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        self.metrics.connected.set(0)
        if not self._stop.is_set():
            self.problem = f"disconnected: {rc}"
            log.warning("collector %s disconnected: %s", self.s.client_id, rc)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put((self._gen, msg))

    def start(self, connect_timeout: float = 15.0) -> None:
        try:
            self.client.connect_async(
                self.s.host,
                self.s.port,
                keepalive=self.s.keepalive,
                clean_start=False,
                properties=self._connect_props(),
            )
        except (OSError, ValueError) as e:
            raise ConnectionError(f"cannot connect to {self.s.host}:{self.s.port}: {e}") from None
        self.client.loop_start()
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
        """Finish the batch in hand, acknowledge it, disconnect (the session stays)."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()

    # -- consuming ------------------------------------------------------------------------------

    def _take(self) -> list[tuple[int, mqtt.MQTTMessage]]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        out = [first]
        deadline = time.monotonic() + self.s.batch_wait
        while len(out) < self.s.batch_max:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.inbox.get(timeout=max(0.0, remaining)) if remaining > 0
                           else self.inbox.get_nowait())  # fmt: skip
            except queue.Empty:
                break
        return out

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

    def _handle_safely(self, msgs: list[tuple[int, mqtt.MQTTMessage]]) -> None:
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

    def handle(self, msgs: list[tuple[int, mqtt.MQTTMessage]], refused: str = "") -> None:
        now = time.time()
        batch = Batch()
        m = self.metrics
        for _gen, msg in msgs:
            row: Any
            if refused:
                row = BadRow(msg.topic[:512], refused, bytes(msg.payload[:4096]), now)
            else:
                row = parse(
                    msg.topic,
                    bytes(msg.payload),
                    retain=bool(msg.retain),
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
        # Only now, with the rows committed, tell the broker it may forget them.
        for gen, msg in msgs:
            if gen == self._gen and msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
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
