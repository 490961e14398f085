"""Operator connection: settings (options, environment, operator config file), the MQTT 5
client that waits for acknowledgements, and helpers to read retained topics.

Connection settings come from options, else environment variables, else an operator config file
(``--config``, ``$WATCHPOST_HUB_CONFIG``, ``~/.config/watchpost/hub.toml`` or
``/etc/watchpost/hub.toml``), a TOML file with one table::

    [operator]
    host = "192.0.2.10"          # broker
    port = 8883
    ca = "hub-ca.pem"            # CA that signed the broker's certificate (pinned)
    cert = "hub.pem"             # the hub's client certificate (mutual TLS)
    key = "hub.key"
    command_key = "command.key"  # Ed25519 private key that signs commands (`hub keygen`)
    site = "lab"                 # default site for send/push-intel/set-config
    group = "watchpost-hub"      # shared-subscription group for `tail`

Relative paths in the file are relative to the file. Environment variables: WATCHPOST_HUB_HOST,
_PORT, _CA, _CERT, _KEY, _COMMAND_KEY, _SITE, _GROUP (all prefixed WATCHPOST_HUB_).

Exit codes: 0 done, 1 the device answered with an error (or a job failed), 2 bad input or no
connection, 3 no answer within the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import ssl
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.tls import client_context
from protocol import envelope as env_mod
from protocol import topics
from protocol.topics import topic

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


class OperatorError(Exception):
    """A problem the operator must fix (settings, connection, broker refusal)."""


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    host: str = ""
    port: int = 8883
    ca: str = ""
    cert: str = ""
    key: str = ""
    command_key: str = ""
    site: str = ""
    group: str = "watchpost-hub"
    keepalive: int = 30
    connect_timeout: float = 10.0
    source: str = ""


SETTING_KEYS = ("host", "port", "ca", "cert", "key", "command_key", "site", "group", "keepalive")
PATH_KEYS = ("ca", "cert", "key", "command_key")


def default_config_path() -> Path | None:
    for p in (Path.home() / ".config/watchpost/hub.toml", Path("/etc/watchpost/hub.toml")):
        if p.is_file():
            return p
    return None


def load_settings(path: Path | None, overrides: Mapping[str, Any]) -> Settings:
    """File values, overridden by options/environment (non-None entries of `overrides`)."""
    values: dict[str, Any] = {}
    source = ""
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OperatorError(f"operator config {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise OperatorError(f"operator config {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise OperatorError(f"operator config {path}: {e}") from None
        table = data.get("operator")
        unknown = sorted(set(data) - {"operator"})
        if unknown or not isinstance(table, dict):
            raise OperatorError(f"operator config {path}: expected one [operator] table")
        for k, v in table.items():
            if k not in SETTING_KEYS:
                raise OperatorError(f"operator.{k}: unknown key (known: {', '.join(SETTING_KEYS)})")
            want = int if k in ("port", "keepalive") else str
            if not isinstance(v, want) or isinstance(v, bool):
                raise OperatorError(f"operator.{k}: expected {want.__name__}, got {v!r}")
            if k in PATH_KEYS and v and not os.path.isabs(str(v)):
                v = str(path.parent / str(v))
            values[k] = v
        source = str(path)
    for k, v in overrides.items():
        if v is not None and v != "":
            values[k] = v
    s = Settings(**values, source=source)
    if not 0 < s.port < 65536:
        raise OperatorError(f"port: must be between 1 and 65535, got {s.port}")
    return s


@dataclass
class Ctx:
    settings_path: Path | None
    overrides: dict[str, Any]
    _settings: Settings | None = None
    _last_seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.settings_path, self.overrides)
            except OperatorError as e:
                fail(str(e))
        assert self._settings is not None
        return self._settings

    def connect(self, **kwargs: Any) -> Connection:
        s = self.settings
        if not s.host:
            fail("no broker host: pass --host, set WATCHPOST_HUB_HOST or operator.host")
        try:
            return Connection(s, **kwargs)
        except OperatorError as e:
            fail(str(e))
            raise

    def command_key(self) -> Any:
        path = self.settings.command_key
        if not path:
            fail("no command key: pass --command-key, set WATCHPOST_HUB_COMMAND_KEY or config")
        try:
            return env_mod.load_private_key(path)
        except env_mod.KeyFileError as e:
            fail(str(e))

    def next_seq(self) -> int:
        """The hub's per-device counter: issue time in ms, strictly increasing in this process."""
        with self._lock:
            self._last_seq = max(time.time_ns() // 1_000_000, self._last_seq + 1)
            return self._last_seq


# --- MQTT ---------------------------------------------------------------------------------------


class Connection:
    """A paho-mqtt 2.x MQTT 5 client that waits for acknowledgements and checks reason codes."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or f"hub-{socket.gethostname()[:20]}-{uuid.uuid4().hex[:8]}"
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self._connack: Any = None
        self._disconnected: Any = None
        self._pubacks: dict[int, Any] = {}
        self._subacks: dict[int, list[Any]] = {}
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        if settings.ca:
            try:
                c.tls_set_context(client_context(settings.ca, settings.cert, settings.key))
            except ValueError as e:
                raise OperatorError(str(e)) from None
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        props = Properties(PacketTypes.CONNECT)
        if session_expiry:
            props.SessionExpiryInterval = session_expiry
        try:
            c.connect(
                settings.host,
                settings.port,
                keepalive=settings.keepalive,
                clean_start=clean_start,
                properties=props,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise OperatorError(f"cannot connect to {settings.host}:{settings.port}: {e}") from None
        sock = c.socket()
        if isinstance(sock, socket.socket):
            # Small request/answer packets: without this, Nagle + delayed ACK add ~40 ms a hop.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.loop_start()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._connack is not None or self._disconnected is not None,
                settings.connect_timeout,
            )
        if not ok:
            self.close()
            raise OperatorError(f"no CONNACK from {settings.host}:{settings.port}")
        if self._connack is None or self._connack.is_failure:
            why = self._connack if self._connack is not None else self._disconnected
            self.close()
            raise OperatorError(f"broker {settings.host}:{settings.port} refused: {why}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._disconnected = rc
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(rcs)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _wait(self, table: dict[int, Any], mid: int, what: str, timeout: float) -> Any:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: mid in table or self._disconnected is not None, timeout
            )
            if mid in table:
                return table.pop(mid)
        if not ok:
            raise OperatorError(f"{what}: no acknowledgement from the broker in {timeout:g} s")
        raise OperatorError(f"{what}: connection lost ({self._disconnected})")

    def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 10.0) -> None:
        result, mid = self.client.subscribe([(t, SubscribeOptions(qos=qos)) for t in topics])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise OperatorError(f"subscribe {topics}: {mqtt.error_string(result)}")
        codes = self._wait(self._subacks, mid, f"subscribe {topics}", timeout)
        for name, rc in zip(topics, codes, strict=False):
            if rc.is_failure:
                raise OperatorError(f"broker refused subscription to {name}: {rc}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise OperatorError(f"publish to {topic}: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        rc = self._wait(self._pubacks, info.mid, f"publish to {topic}", timeout)
        if rc.is_failure:
            raise OperatorError(f"broker refused publish to {topic}: {rc} (0x{rc.value:02x})")

    @property
    def lost(self) -> Any:
        """The disconnect reason once the connection has gone, else None."""
        return self._disconnected

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        self.client.ack(msg.mid, msg.qos)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


def response_topic(site: str, device: str, client_id: str) -> str:
    """Where a device answers this client: inside the device's own tree, which the ACL lets it
    write (``watchpost/v1/+/%u/#``) and the hub identity read."""
    return topic(site, device, f"cmd/res/{client_id}")


def _split(topic_name: str) -> tuple[str, str, str]:
    """(site, device, subtopic) of a contract topic."""
    parts = topic_name.split("/", 4)
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != topics.ROOT:
        return "", "", topic_name
    return parts[2], parts[3], parts[4]


def _json(payload: bytes | bytearray) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


def collect_retained(
    conn: Connection,
    topics: list[str],
    wait: float,
    settle: float,
    enough: Callable[[mqtt.MQTTMessage], bool] | None = None,
) -> list[Any]:
    """Retained messages on `topics`: read until `settle` s pass quietly (at most `wait` s), or
    until one satisfies `enough`."""
    conn.subscribe(topics)
    out = []
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            msg = conn.messages.get(timeout=min(settle, remaining))
        except queue.Empty:
            break
        if msg.retain:
            out.append(msg)
            if enough is not None and enough(msg):
                break
    return out


def find_site(ctx: Ctx, conn: Connection, device: str) -> str:
    """The device's site: from settings, else from its retained status."""
    if ctx.settings.site:
        return ctx.settings.site
    msgs = collect_retained(
        conn,
        [f"{topics.ROOT}/+/{device}/status"],
        wait=3.0,
        settle=1.0,
        enough=lambda m: _split(m.topic)[1] == device,
    )
    for msg in msgs:
        site, dev, _ = _split(msg.topic)
        if dev == device:
            return site
    fail(f"device {device}: no retained status to learn its site from; pass --site")
    raise AssertionError  # unreachable
