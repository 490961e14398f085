"""The device's MQTT link to the regional hub: the session (connect, back-off, will, status,
subscriptions, incoming commands). Its other jobs live next to it: `preflight` (TLS files checked
before dialling, failure reasons), `window` (the sender window and PUBACK bookkeeping),
`telemetry` (telemetry, status and summary payloads).

paho-mqtt 2.x (callback API 2, MQTT 5) over TLS with the device's own client certificate and
the hub CA pinned (no system CAs, hostname checked, TLS >= 1.2). `connect_async` + `loop_start`:
paho's thread dials, and redials after every failure; our `on_pre_connect` adds a growing,
jittered back-off (1 s doubling to `backoff[1]`, times 0.5-1.0) so hundreds of offices do not
reconnect in step after a hub outage, and sets the will for the next connection.

Topics under ``watchpost/v1/{site}/{device}`` (see docs/mqtt.md):

- ``status`` (retained): ``init`` on connect, ``ready`` once the subscriptions are granted,
  ``disconnected`` on a clean stop; the will says ``lost`` with the same ``bd_seq``, a counter
  persisted in the state directory and incremented before every connection attempt, so the hub
  can ignore a will that arrives after the next connection's ``init``.
- ``alerts``: the outbox's records, QoS 1, at most `window` unacknowledged at a time. An alert
  handed to paho stays paho's to resend until its PUBACK, across reconnects, so it is never
  published twice by one process; after a restart the outbox sends again whatever was not
  acknowledged (at least once; the hub drops duplicates by ``watchpost.id``). A PUBACK with an
  MQTT 5 reason code >= 0x80 (e.g. 0x87 not authorized) is a refusal: logged, counted, the alert
  kept and retried after `refusal_pause` seconds, never taken as delivered.
- ``telemetry`` every ``hub.telemetry_interval`` s; ``summary`` once a day (hublink/report.py).
- ``cert/issued`` (subscribed in on_connect) goes to the certificate renewal
  (`appliance.hublink.renewal`), which publishes its CSR on ``cert/csr``; after a renewed
  certificate is installed the link reconnects with it (from `tick`).
- ``cmd`` and ``config/desired`` (subscribed in on_connect) go to the command handler
  (appliance.hublink.commands.CommandHandler: ``attach``, ``on_command``, ``on_desired``,
  ``on_connect``); answers go to ``cmd/res`` and to the MQTT 5 response topic with its
  correlation data. The broker ACL lets a device write only under its own root, so a response
  topic must lie under ``{root}/cmd/res/``; others are skipped (and logged).

A hub that is unreachable or misconfigured never stops inspection: nothing here blocks the
daemon's loop, and the link keeps a short reason why it is down (`problem`, `since`) for the
status page, the LEDs and telemetry.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import __version__
from appliance.alerts.outbox import Outbox
from appliance.alerts.privacy import Pseudonymizer, key_for
from appliance.component import DaemonView, Snapshot
from appliance.config import Config, ConfigError
from appliance.enrol import hubaddr
from appliance.hublink.command_api import Publish
from appliance.hublink.preflight import Preflight, _ssl_text, describe_failure, preflight
from appliance.hublink.renewal import ISSUED_TOPIC, CertRenewal
from appliance.hublink.report import DailyReport, SystemMetrics
from appliance.hublink.telemetry import Telemetry
from appliance.hublink.window import SenderWindow, _failed
from protocol import topics
from protocol.files import atomic_write

__all__ = ["HubLink", "Preflight", "component", "describe_failure", "preflight", "topic_root"]

log = logging.getLogger(__name__)

DISABLED, CONNECTING, UP, DOWN, STOPPED = "disabled", "connecting", "up", "down", "stopped"
STABLE_S = 60.0  # a connection that lasted this long resets the back-off
PREFLIGHT_RETRY_S = 30.0
REPORT_SAVE_S = 60.0
STOP_WAIT_S = 2.0


class Handler(Protocol):
    """What the link drives (appliance.hublink.commands.CommandHandler)."""

    def attach(self, publish: Publish) -> None: ...
    def on_command(self, payload: bytes, reply: Callable[[dict[str, Any]], None]) -> None: ...
    def on_desired(self, payload: bytes) -> None: ...
    def on_connect(self) -> None: ...


def topic_root(config: Config) -> str:
    return topics.device_root(config.device.site, config.device.id)


# -- the link ------------------------------------------------------------------------------------


def privacy_filter(config: Config) -> Pseudonymizer | None:
    """The pseudonymiser every outgoing message passes through (privacy.pseudonymize)."""
    p = config.privacy
    if not p.pseudonymize:
        return None
    return Pseudonymizer(key_for(p.key, config.device.state_dir), config.inline.home_nets)


class HubLink(SenderWindow, Telemetry):
    """Daemon component (start/tick/configure/stop/stats) that owns the MQTT connection.

    ``link = HubLink(config)`` opens the outbox (``hub.outbox``) when the hub is enabled; pass
    ``link.journal`` to the AlertPipeline so alerts are numbered and stored there.
    """

    name = "hub link"

    def __init__(
        self,
        config: Config,
        outbox: Outbox | None = None,
        *,
        handler: Handler | None = None,
        clock: Callable[[], float] = time.time,
        backoff: tuple[float, float] = (1.0, 60.0),
        window: int = 100,
        refusal_pause: float = 60.0,
        version: str = __version__,
    ) -> None:
        self.config = config
        self.privacy = privacy_filter(config)
        self.clock = clock
        self.backoff = backoff
        self.window = window
        self.refusal_pause = refusal_pause
        self.version = version
        self.outbox = outbox
        if self.outbox is None and config.hub.enabled:
            self.outbox = Outbox(config.outbox_path, config.hub.outbox_max)
        if self.outbox is not None:
            self.outbox.on_record = self._on_record
        state_dir = Path(config.device.state_dir)
        self._bd_path = state_dir / "hub-bdseq"
        self.report = DailyReport(state_dir / "hub-report.json", clock=clock)
        self.metrics = SystemMetrics()
        self.handler: Handler | None = None
        self.view: DaemonView | None = None
        self.renewal = CertRenewal(
            config, lambda sub, data: self._publish(self.topic(sub), data) is not None, clock=clock
        )
        # What the unit's start found of the hub's addresses (written before the daemon starts).
        self.addresses = hubaddr.read_status(state_dir)
        self._lock = threading.RLock()
        self._mid_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None
        self._waiting: dict[int, tuple[str, Callable[[Any], None] | None]] = {}
        self._early: dict[int, Any] = {}
        self._acked: list[int] = []
        self._refused_alerts: list[int] = []
        self._pause_until = 0.0
        self._summaries_inflight: set[str] = set()
        self._service_stats: dict[str, Any] = {}
        self._last_counts: tuple[float, dict[str, float]] | None = None  # for telemetry rates
        self._last_status: tuple[Any, ...] = ()
        self._started_mono = time.monotonic()
        self._connected = False
        self._ready = False  # subscriptions granted
        self._sub_mid: int | None = None
        self._connected_at = 0.0
        self._failures = 0
        self._last_error: tuple[float, str] = (0.0, "")
        self._cert_notes: tuple[str, ...] = ()
        self._preflight_failed_at = 0.0
        self._next_telemetry = 0.0
        self._next_save = 0.0
        self._bd_seq = self._load_bd_seq()
        self.state = DISABLED if not config.hub.enabled else DOWN
        self.problem = "" if config.hub.enabled else "hub disabled in config"
        self.since = clock()
        self._down_since = self.since
        self.last_problem = ""  # why the link was down before it last came up
        self.last_outage_s = 0.0
        self.counters = {
            "connects": 0,
            "connect_failures": 0,
            "alerts_sent": 0,
            "refused": 0,
            "messages_in": 0,
            "published": 0,
            "publish_errors": 0,
        }
        if handler is not None:
            self.set_handler(handler)

    # -- wiring --------------------------------------------------------------------------------

    @property
    def journal(self) -> Outbox | None:
        """The pipeline's Journal (None when the hub is disabled: use the pipeline default)."""
        return self.outbox

    @property
    def root(self) -> str:
        return topic_root(self.config)

    def topic(self, sub: str) -> str:
        return f"{self.root}/{sub}"

    def set_handler(self, handler: Handler) -> None:
        """Deliver `cmd` and `config/desired` messages to `handler` (see the module doc)."""
        self.handler = handler
        handler.attach(self.publish_json)

    def publish_json(self, subtopic: str, payload: Mapping[str, Any], retain: bool = False) -> bool:
        """Publish JSON under the device root with QoS 1; False when the link has no client."""
        data = json.dumps(payload, separators=(",", ":"), default=str).encode()
        return self._publish(self.topic(subtopic), data, retain=retain) is not None

    # -- component hooks -----------------------------------------------------------------------

    def start(self, view: DaemonView | None = None) -> None:
        self.view = view
        if not self.config.hub.enabled:
            self._set(DISABLED, "hub disabled in config")
            return
        self._stopping.clear()
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(target=self._send_loop, name="hub-send", daemon=True)
            self._sender.start()
        self._start_client()

    def stop(self) -> None:
        """Clean stop: `disconnected` status (waits up to 2 s for its PUBACK), then a normal
        DISCONNECT, so the broker does not publish the will."""
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=5)
            self._sender = None
        self._stop_client(clean=True)
        self._settle()
        self.report.save(force=True)
        if self.config.hub.enabled:
            self._set(STOPPED, "")

    def close(self) -> None:
        """Stop and close the outbox (the daemon may instead leave it to process exit)."""
        self.stop()
        if self.outbox is not None:
            self.outbox.close()

    def configure(self, config: Config) -> None:
        """Live reconfiguration. Refuses (ConfigError, nothing changed) an outbox move or TLS
        files that cannot work; reconnects when the connection settings or identity changed."""
        old = self.config
        self.privacy = privacy_filter(config)
        self.renewal.config = config
        if config.hub == old.hub and config.device == old.device:
            self.config = config
            return
        if self.outbox is not None and config.hub.enabled and config.outbox_path != old.outbox_path:
            raise ConfigError("hub.outbox", "cannot move the outbox while running; restart")
        if config.device.state_dir != old.device.state_dir:
            raise ConfigError("device.state_dir", "takes effect after a restart")
        conn_keys = ("enabled", "host", "port", "ca", "cert", "key", "keepalive")
        reconnect = config.device != old.device or any(
            getattr(config.hub, k) != getattr(old.hub, k) for k in conn_keys
        )
        if reconnect and config.hub.enabled:
            pre = preflight(config)
            if pre.fatal:
                raise ConfigError(*pre.fatal[0])
        if config.hub.enabled and self.outbox is None:
            self.outbox = Outbox(config.outbox_path, config.hub.outbox_max)
            self.outbox.on_record = self._on_record
        self.config = config
        if self.outbox is not None:
            self.outbox.max_rows = config.hub.outbox_max
        if not reconnect:
            return
        was_running = self._client is not None or self._sender is not None
        self._stop_client(clean=True)
        if self.outbox is not None:
            self.outbox.requeue()  # the new client knows nothing of the old one's in-flight
        if was_running:
            self.start(self.view)

    def tick(self, now: float, snapshot: Snapshot) -> None:
        """~1/s from the daemon's main loop with its stats snapshot: telemetry, status
        refresh, daily summary."""
        if not self.config.hub.enabled:
            return
        self._service_stats = dict(snapshot)
        self.report.observe(self._service_stats)
        self.report.roll(now)
        mono = time.monotonic()
        self.renewal.tick(now, self._connected and self._ready)
        if self.renewal.take_reconnect():
            log.info("reconnecting to the hub with the renewed certificate")
            self._stop_client(clean=True)
            if self.outbox is not None:
                self.outbox.requeue()  # the new client knows nothing of the old one's in-flight
        retry = mono - self._preflight_failed_at >= PREFLIGHT_RETRY_S
        if self._client is None and retry and self._sender is not None:
            self._start_client()  # the TLS files may have been fixed
        if self._connected:
            if mono >= self._next_telemetry:
                self._next_telemetry = mono + self.config.hub.telemetry_interval
                self.publish_telemetry()
                self._publish_status(self._status_state())  # refreshes "last seen" and uptime
            elif self._status_key() != self._last_status:
                self._publish_status(self._status_state())
            self._publish_summaries()
        if mono >= self._next_save:
            self._next_save = mono + REPORT_SAVE_S
            self.report.save()

    def stats(self) -> dict[str, Any]:
        with self._lock:  # one consistent view of state, problem and since
            state, problem, since = self.state, self.problem, self.since
        out: dict[str, Any] = {
            "hub_state": state,
            "hub_problem": problem,
            "hub_since": since,
            "hub_bd_seq": self._bd_seq,
            "hub_last_problem": self.last_problem,
            "hub_last_outage_s": self.last_outage_s,
        }
        out.update({f"hub_{k}": v for k, v in self.counters.items()})
        # The shape the LEDs and the status page read (appliance.leds: amber = hub link).
        out["hub"] = {
            "enabled": self.config.hub.enabled,
            "connected": state == UP,
            "state": state,
            "problem": problem,
            "since": since,
            "host": self.config.hub.host,
            "port": self.config.hub.port,
            "addresses": self.addresses,
        }
        if self.config.hub.enabled:
            cert = self.renewal.stats()
            out["hub"]["cert"] = cert
            out["hub"]["cert_problem"] = cert["problem"]
        if self.outbox is not None:
            out.update(self.outbox.stats())
        return out

    # -- state ---------------------------------------------------------------------------------

    def _set(self, state: str, problem: str) -> None:
        with self._lock:
            now = self.clock()
            if state == UP and self.state != UP:
                # Keep the story of the outage for telemetry: the hub cannot hear it live.
                self.last_problem = self.problem
                self.last_outage_s = round(now - self._down_since, 1)
            elif state != UP and self.state == UP:
                self._down_since = now
            if state != self.state or problem != self.problem:
                if problem and problem != self.problem:
                    log.warning("hub link %s: %s", state, problem)
                elif state != self.state:
                    log.info("hub link %s", state)
                self.state, self.problem = state, problem
                self.since = now

    def _load_bd_seq(self) -> int:
        try:
            return int(self._bd_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.warning("bd_seq file %s unreadable (%s); starting from 0", self._bd_path, e)
            return 0

    def _next_bd_seq(self) -> int:
        self._bd_seq += 1
        try:
            atomic_write(self._bd_path, f"{self._bd_seq}\n".encode())
        except OSError as e:
            log.warning("cannot persist bd_seq to %s: %s", self._bd_path, e)
        return self._bd_seq

    # -- the MQTT client -----------------------------------------------------------------------

    def _start_client(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            pre = preflight(self.config)
            if pre.fatal:
                self._preflight_failed_at = time.monotonic()
                key, problem = pre.fatal[0]
                self._set(DOWN, f"misconfigured: {key}: {problem}")
                return
            self._cert_notes = pre.notes
            hub = self.config.hub
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.config.device.id,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=True,
            )
            client.tls_set_context(pre.context)
            client.reconnect_delay_set(min_delay=1, max_delay=1)  # the growing part is ours
            client.max_inflight_messages_set(self.window)
            client.on_pre_connect = self._on_pre_connect
            client.on_connect = self._on_connect
            client.on_connect_fail = self._on_connect_fail
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.on_log = self._on_log
            with self._mid_lock:
                self._waiting.clear()
                self._early.clear()
            self._failures = 0
            self._client = client
            self._set(CONNECTING, self.problem if self.state == DOWN else "")
            client.connect_async(hub.host, hub.port, keepalive=hub.keepalive, clean_start=True)
            client.loop_start()

    def _stop_client(self, clean: bool) -> None:
        with self._lock:
            client = self._client
        if client is None:
            return
        if clean and self._connected:
            acked = threading.Event()
            if self._publish_status("disconnected", done=lambda rc: acked.set()):
                acked.wait(STOP_WAIT_S)
        stopping = self._stopping.is_set()
        self._stopping.set()  # wakes a back-off sleep in on_pre_connect
        try:
            client.disconnect()
        except Exception:
            log.debug("disconnect failed", exc_info=True)
        client.loop_stop()
        with self._lock:
            self._client = None
            self._connected = False
            self._ready = False
        if not stopping:
            self._stopping.clear()

    def _current(self, client: mqtt.Client) -> bool:
        return client is self._client

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._stopping.is_set() or not self._current(client):
            raise OSError("hub link stopping")
        if self._failures:
            lo, hi = self.backoff
            delay = min(hi, lo * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.0)
            # paho already waited 1 s (reconnect_delay_set above)
            if self._stopping.wait(max(0.0, delay - 1.0)):
                raise OSError("hub link stopping")
        bd = self._next_bd_seq()
        will = {
            "state": "lost",
            "bd_seq": bd,
            "device": self.config.device.id,
            "site": self.config.device.site,
            "version": self.version,
            "ts": self.clock(),
        }
        client.will_set(
            self.topic("status"), json.dumps(will, separators=(",", ":")), qos=1, retain=True
        )
        self._last_error = (0.0, "")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._stopping.is_set() or not self._current(client):
            return
        exc = sys.exc_info()[1]  # paho calls this from inside its `except OSError`
        self._failures += 1
        self.counters["connect_failures"] += 1
        hub = self.config.hub
        self._set(DOWN, self._with_notes(describe_failure(exc, hub.host, hub.port)))

    def _with_notes(self, reason: str) -> str:
        return "; ".join((reason, *self._cert_notes))

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._current(client):
            return
        if _failed(reason):
            self._failures += 1
            self.counters["connect_failures"] += 1
            self._set(DOWN, self._with_notes(f"the hub refused the connection: {reason}"))
            return
        self.counters["connects"] += 1
        self._connected = True
        self._connected_at = time.monotonic()
        self._ready = False
        self._set(UP, "")
        self._publish_status("init")
        subs = [
            (self.topic(s), mqtt.SubscribeOptions(qos=1))
            for s in ("cmd", "config/desired", ISSUED_TOPIC)
        ]
        try:
            _rc, self._sub_mid = client.subscribe(subs)
        except Exception:
            log.exception("subscribe failed")
        self._next_telemetry = 0.0  # the hub gets a fresh picture at the next tick
        if self.handler is not None:
            try:
                self.handler.on_connect()
            except Exception:
                log.exception("command handler on_connect failed")
        self._wake.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        if not self._current(client) or mid != self._sub_mid:
            return
        bad = [str(r) for r in reasons if _failed(r)]
        if bad:
            self._set(UP, f"the hub refused the command subscriptions: {', '.join(bad)}")
        self._ready = True
        self._publish_status("ready")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._current(client):
            return
        was_up = self._connected
        self._connected = False
        self._ready = False
        if self._stopping.is_set():
            return
        if was_up and time.monotonic() - self._connected_at >= STABLE_S:
            self._failures = 1
        else:
            self._failures += 1
        when, text = self._last_error
        if getattr(flags, "is_disconnect_packet_from_server", False):
            why = f"the hub closed the connection: {reason}"
            if "taken over" in str(reason).lower():
                why += " (another client is using this device's identity)"
        elif text and time.monotonic() - when < 30:
            why = text
        elif was_up:
            why = "connection to the hub lost"
        else:
            why = "the hub closed the connection before accepting it"
        self._set(DOWN, self._with_notes(why))

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level != mqtt.MQTT_LOG_ERR:
            return
        if "failed to receive on socket" in buf or "timeout on socket" in buf:
            text = buf.split(": ", 1)[1] if ": " in buf else buf
            if "alert" in text:
                why = f"the hub rejected the TLS session: {_ssl_text(text)}"
            elif "timeout" in buf:
                why = "the hub stopped answering (timeout)"
            else:
                why = f"connection error: {_ssl_text(text)}"
            self._last_error = (time.monotonic(), why)

    # -- incoming ------------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._current(client):
            return
        self.counters["messages_in"] += 1
        sub = msg.topic[len(self.root) + 1 :] if msg.topic.startswith(self.root + "/") else ""
        handler = self.handler
        try:
            if sub == "cmd":
                reply = self._replier(msg)
                if handler is None:
                    reply(_no_handler(bytes(msg.payload)))
                else:
                    handler.on_command(bytes(msg.payload), reply)
            elif sub == "config/desired":
                if handler is not None:
                    handler.on_desired(bytes(msg.payload))
            elif sub == ISSUED_TOPIC:
                self.renewal.on_issued(bytes(msg.payload), bool(msg.retain))
            else:
                log.warning("unexpected message on %s", msg.topic)
        except Exception:
            log.exception("command handler failed on %s", msg.topic)

    def _replier(self, msg: mqtt.MQTTMessage) -> Callable[[dict[str, Any]], None]:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        res_root = self.topic("cmd/res")
        if response and not (response == res_root or response.startswith(res_root + "/")):
            log.warning(
                "response topic %r is outside %s/ (the broker ACL would refuse it); "
                "answering on cmd/res only",
                response,
                res_root,
            )
            response = None

        def reply(answer: dict[str, Any]) -> None:
            data = json.dumps(answer, separators=(",", ":"), default=str).encode()
            self._publish(res_root, data)
            if response and response != res_root:
                p = Properties(PacketTypes.PUBLISH)
                if correlation is not None:
                    p.CorrelationData = bytes(correlation)
                self._publish(response, data, props=p)

        return reply


def _no_handler(payload: bytes) -> dict[str, Any]:
    try:
        eid = json.loads(payload).get("id")
    except (ValueError, AttributeError):
        eid = None
    return {"id": eid, "ok": False, "error": "this device has no command handler"}


def component(config: Config) -> HubLink | None:
    """The daemon's factory (appliance.service.wiring): a link when the config has a hub, else
    None."""
    return HubLink(config) if config.hub.enabled else None
