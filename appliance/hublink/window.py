"""The hub link's sender window: alerts from the outbox handed to paho, at most `window`
unacknowledged at a time, and the bookkeeping of PUBACKs (also those that arrive before
``publish()`` returns). A PUBACK with a reason code >= 0x80 is a refusal: the alert is kept and
retried after `refusal_pause` seconds, never taken as delivered.

`SenderWindow` is a part of `appliance.hublink.link.HubLink` (it works on the link's client,
outbox and counters).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from appliance.alerts.outbox import Outbox
from appliance.alerts.privacy import Pseudonymizer
from appliance.hublink.report import DailyReport

log = logging.getLogger(__name__)


class SenderWindow:
    """Publishing with acknowledgement bookkeeping, and the alert sender thread."""

    window: int
    refusal_pause: float
    outbox: Outbox | None
    report: DailyReport
    counters: dict[str, int]
    problem: str
    state: str
    _client: mqtt.Client | None
    _connected: bool
    _mid_lock: threading.Lock
    _stopping: threading.Event
    _wake: threading.Event
    _waiting: dict[int, tuple[str, Callable[[Any], None] | None]]
    _early: dict[int, Any]
    _acked: list[int]
    _refused_alerts: list[int]
    _pause_until: float
    privacy: Pseudonymizer | None

    if TYPE_CHECKING:  # provided by HubLink

        def topic(self, sub: str) -> str:
            raise NotImplementedError

        def _set(self, state: str, problem: str) -> None:
            raise NotImplementedError

        def _current(self, client: mqtt.Client) -> bool:
            raise NotImplementedError

    def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        props: Properties | None = None,
        done: Callable[[Any], None] | None = None,
    ) -> int | None:
        """Hand one message to paho; `done(reason_code)` runs on its PUBACK. Never holds our
        locks while calling paho (paho calls on_publish with its own lock held, possibly before
        publish() returns: such early acknowledgements are kept by mid and matched here)."""
        client = self._client
        if client is None:
            return None
        if self.privacy is not None:  # nothing leaves with an office address in it
            payload = self.privacy.scrub_payload(payload)
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except (ValueError, TypeError) as e:
            self.counters["publish_errors"] += 1
            log.error("cannot publish on %s: %s", topic, e)
            return None
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.counters["publish_errors"] += 1
            log.error("publish on %s failed: %s", topic, mqtt.error_string(info.rc))
            return None
        self.counters["published"] += 1
        with self._mid_lock:
            rc = self._early.pop(info.mid, None)
            if rc is None:
                self._waiting[info.mid] = (topic, done)
                return info.mid
        self._acknowledged(topic, done, rc)
        return info.mid

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        if not self._current(client):
            return
        with self._mid_lock:
            entry = self._waiting.pop(mid, None)
            if entry is None:
                self._early[mid] = reason
                return
        self._acknowledged(entry[0], entry[1], reason)

    def _acknowledged(self, topic: str, done: Callable[[Any], None] | None, rc: Any) -> None:
        if _failed(rc):
            self.counters["refused"] += 1
            log.error("the hub refused a message on %s: %s (0x%02x)", topic, rc, _value(rc))
            if topic == self.topic("alerts"):
                self._set(self.state, f"the hub refuses alerts: {rc} (0x{_value(rc):02x})")
        if done is not None:
            try:
                done(rc)
            except Exception:
                log.exception("publish callback failed")

    def _alert_done(self, seq: int) -> Callable[[Any], None]:
        def done(rc: Any) -> None:
            # 0x10 "no matching subscribers": the broker kept nothing (no collector subscribed,
            # e.g. right after a broker restart, which does not restore shared subscriptions):
            # not delivered, so kept and sent again like a refusal.
            undelivered = _failed(rc) or _value(rc) == 0x10
            with self._mid_lock:
                (self._refused_alerts if undelivered else self._acked).append(seq)
            self._wake.set()

        return done

    def _settle(self) -> None:
        """Move acknowledgements into the outbox (one transaction per batch)."""
        if self.outbox is None:
            return
        with self._mid_lock:
            acked, self._acked = self._acked, []
            refused, self._refused_alerts = self._refused_alerts, []
        if acked:
            self.outbox.delivered(acked)
            self.counters["alerts_sent"] += len(acked)
            if self.problem.startswith("the hub refuses alerts") and not refused:
                self._set(self.state, "")
        if refused:
            self.outbox.refused(refused)
            self._pause_until = time.monotonic() + self.refusal_pause

    def _on_record(self, eve: dict[str, Any]) -> None:
        self.report.add(eve)
        self._wake.set()

    def _send_loop(self) -> None:
        """Feeds stored alerts to paho, at most `window` unacknowledged at a time."""
        alerts = self.topic("alerts")
        paused = False
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._settle()
                outbox = self.outbox
                if outbox is None or not self._connected:
                    continue
                if time.monotonic() < self._pause_until:
                    paused = True
                    continue
                if paused:
                    paused = False
                    outbox.retry_refused()
                alerts = self.topic("alerts")
                for seq, body in outbox.next_batch(self.window - outbox.inflight):
                    if self._publish(alerts, body, done=self._alert_done(seq)) is None:
                        outbox.release([seq])
            except Exception:
                log.exception("hub sender failed; retrying")
                self._stopping.wait(1.0)


def _value(rc: Any) -> int:
    return int(getattr(rc, "value", rc) or 0)


def _failed(rc: Any) -> bool:
    """An MQTT 5 reason code >= 0x80 (paho's ReasonCode, or a plain int)."""
    if rc is None:
        return False
    if hasattr(rc, "is_failure"):
        return bool(rc.is_failure)
    return _value(rc) >= 0x80
