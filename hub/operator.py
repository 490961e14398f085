"""`watchpost hub …`: the hub operator's side of remote management.

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
import hashlib
import json
import os
import queue
import socket
import sqlite3
import ssl
import sys
import threading
import time
import tomllib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol import bundle, jobs, topics
from protocol import envelope as env_mod
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
            if k in PATH_KEYS and v and not os.path.isabs(v):
                v = str(path.parent / v)
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
                c.tls_set(
                    ca_certs=settings.ca,
                    certfile=settings.cert or None,
                    keyfile=settings.key or None,
                )
            except (OSError, ssl.SSLError) as e:
                raise OperatorError(f"TLS files (ca/cert/key): {e}") from None
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
        if sock is not None:
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


def _json(payload: bytes) -> Any:
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


class Requester:
    """Sends signed envelopes to one device and collects the answers meant for this client."""

    def __init__(self, ctx: Ctx, conn: Connection, device: str, site: str) -> None:
        self.ctx, self.conn, self.device, self.site = ctx, conn, device, site
        self.key = ctx.command_key()
        self.reply_to = response_topic(site, device, conn.client_id)
        conn.subscribe([self.reply_to])

    def send(self, cmd: str, args: Mapping[str, Any], ttl: int) -> dict[str, Any]:
        env = env_mod.make(self.device, cmd, args, self.key, seq=self.ctx.next_seq(), ttl=ttl)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_to
        props.CorrelationData = env["id"].encode()
        self.conn.publish(
            topic(self.site, self.device, "cmd"), env_mod.encode(env), properties=props
        )
        return env

    def answers(self, deadline: float) -> Iterator[dict[str, Any]]:
        """Answers arriving on the response topic until `deadline` (monotonic)."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.conn.messages.get(timeout=remaining)
            except queue.Empty:
                return
            if msg.topic != self.reply_to:
                continue
            answer = _json(msg.payload)
            if not isinstance(answer, dict):
                continue
            corr = getattr(msg.properties, "CorrelationData", None)
            if corr is not None and answer.get("id") is None:
                answer["id"] = corr.decode(errors="replace")
            yield answer


# --- commands -----------------------------------------------------------------------------------


def _opt(name: str, envvar: str, **kw: Any) -> Any:
    return click.option(name, envvar=f"WATCHPOST_HUB_{envvar}", show_envvar=True, **kw)


@click.group("hub")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="WATCHPOST_HUB_CONFIG",
    show_envvar=True,
    help="Operator config file (TOML, [operator] table).",
)
@_opt("--host", "HOST", help="Broker host.")
@_opt("--port", "PORT", type=int, help="Broker port (default 8883).")
@_opt("--ca", "CA", help="CA certificate that signed the broker's certificate.")
@_opt("--cert", "CERT", help="Hub client certificate (PEM).")
@_opt("--key", "KEY", help="Hub client key (PEM).")
@_opt("--command-key", "COMMAND_KEY", help="Ed25519 command signing key (PKCS#8 PEM).")
@_opt("--site", "SITE", help="Site of the device(s).")
@_opt("--group", "GROUP", help="Shared-subscription group for `tail`.")
@click.pass_context
def hub(ctx: click.Context, config_path: Path | None, **overrides: Any) -> None:
    """Hub operator: devices, alerts, signed commands, intel and config over MQTT."""
    path = config_path or default_config_path()
    ctx.obj = Ctx(path, {k: v for k, v in overrides.items() if v is not None})


@hub.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Directory for command.key (0600) and command.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out_dir: Path, force: bool) -> None:
    """Make the Ed25519 command key pair (private key 0600; the public key goes on devices)."""
    private, public = env_mod.generate_keypair()
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / "command.key", out_dir / "command.pub"
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            fail(f"{p} exists (use --force to replace it)")
    for p, data, mode in ((priv_path, private, 0o600), (pub_path, public, 0o644)):
        tmp = p.with_name(f".{p.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    key = env_mod.public_keys_from_pem(public)[0]
    fingerprint = hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]
    click.echo(f"{priv_path} (private, keep it on the hub)")
    click.echo(f"{pub_path} (install as hub.command_pubkey on devices)")
    click.echo(f"fingerprint {fingerprint}")


def _status_row(msg: mqtt.MQTTMessage) -> dict[str, Any] | None:
    site, device, _ = _split(msg.topic)
    status = _json(msg.payload)
    if not device or not isinstance(status, dict):
        return None
    seen = next((status[k] for k in ("ts", "time", "timestamp", "last_seen") if k in status), None)
    intel = status.get("intel_version", status.get("intel"))
    if isinstance(intel, dict):
        intel = intel.get("version")
    return {
        "site": site,
        "device": device,
        "state": status.get("state"),
        "version": status.get("version"),
        "mode": status.get("mode"),
        "intel_version": intel,
        "last_seen": seen,
        "status": status,
    }


def _when(value: Any) -> str:
    if isinstance(value, int | float) and value > 0:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"
    return str(value) if value else "-"


@hub.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
@click.option("--wait", default=5.0, show_default=True, help="Longest wait for statuses (s).")
@click.pass_obj
def devices(obj: Ctx, as_json: bool, wait: float) -> None:
    """Devices from their retained statuses: state, version, mode, intel version, last seen."""
    site = obj.settings.site or "+"
    conn = obj.connect()
    try:
        msgs = collect_retained(
            conn, [f"{topics.ROOT}/{site}/+/status"], wait=wait, settle=min(1.0, wait)
        )
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    rows = sorted(
        (r for r in map(_status_row, msgs) if r is not None),
        key=lambda r: (r["site"], r["device"]),
    )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    header = ("SITE", "DEVICE", "STATE", "VERSION", "MODE", "INTEL", "LAST SEEN")
    table = [header] + [
        (
            r["site"],
            r["device"],
            str(r["state"] or "-"),
            str(r["version"] or "-"),
            str(r["mode"] or "-"),
            str(r["intel_version"] or "-"),
            _when(r["last_seen"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _parse_args_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"ARGS file {text[1:]}: {e.strerror or e}")
    try:
        value = json.loads(text)
    except ValueError as e:
        fail(f"ARGS is not JSON: {e}")
    if not isinstance(value, dict):
        fail("ARGS must be a JSON object")
    return value


def _print_answer(answer: dict[str, Any]) -> None:
    click.echo(json.dumps(answer, sort_keys=True, ensure_ascii=False))


@hub.command()
@click.argument("device")
@click.argument("cmd")
@click.argument("args_json", required=False, metavar="[ARGS-JSON|@FILE]")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--ttl", default=300, show_default=True, help="Seconds the command stays valid.")
@click.option("--wait-job/--no-wait-job", default=True, help="For job commands, wait for the end.")
@click.pass_obj
def send(
    obj: Ctx,
    device: str,
    cmd: str,
    args_json: str | None,
    timeout: float,
    ttl: int,
    wait_job: bool,
) -> None:
    """Sign CMD for DEVICE, publish it with a response topic, print the answer.

    Exit code 1 when the device answers with an error, 3 when no answer comes in time.
    """
    args = _parse_args_json(args_json)
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        req = Requester(obj, conn, device, site)
        env = req.send(cmd, args, ttl)
        deadline = time.monotonic() + timeout
        for answer in req.answers(deadline):
            if answer.get("id") != env["id"]:
                continue
            _print_answer(answer)
            job = answer.get("job")
            if wait_job and isinstance(job, dict) and job.get("state") not in jobs.TERMINAL:
                continue
            sys.exit(0 if answer.get("ok") is True else EXIT_ERROR)
        click.echo(f"error: no answer from {device} within {timeout:g} s", err=True)
        sys.exit(EXIT_TIMEOUT)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()


@hub.command("push-intel")
@click.argument("device")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--version", "version", required=True, help="Bundle version (shown in status).")
@click.option("--name", default=None, help="File name on the device (default: FILE's name).")
@click.option("--chunk-size", default=bundle.DEFAULT_CHUNK_BYTES, show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds for the whole job.")
@click.option("--retries", default=2, show_default=True, help="Resends of a refused chunk.")
@click.pass_obj
def push_intel(
    obj: Ctx,
    device: str,
    file: Path,
    version: str,
    name: str | None,
    chunk_size: int,
    timeout: float,
    retries: int,
) -> None:
    """Send an intel list to DEVICE as a signed bundle, in chunks; wait for the job to end."""
    data = file.read_bytes()
    key = obj.command_key()
    try:
        manifest = bundle.make_manifest(data, name or file.name, version, key)
        chunk_list = bundle.chunk_args(uuid.uuid4().hex[:16], manifest, data, chunk_size)
    except bundle.BundleError as e:
        fail(str(e))
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        req = Requester(obj, conn, device, site)
        deadline = time.monotonic() + timeout
        final = _push_chunks(req, chunk_list, deadline, retries)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    if final is None:
        click.echo(f"error: the job did not finish within {timeout:g} s", err=True)
        sys.exit(EXIT_TIMEOUT)
    _print_answer(final)
    sys.exit(0 if final["job"]["state"] == "succeeded" else EXIT_ERROR)


def _push_chunks(
    req: Requester, chunk_list: list[dict[str, Any]], deadline: float, retries: int
) -> dict[str, Any] | None:
    """Send chunks one at a time (each waits for its answer); the terminal job answer or None."""
    count = len(chunk_list)
    for args in chunk_list:
        for attempt in range(retries + 1):
            env = req.send("intel-update", args, ttl=max(60, int(deadline - time.monotonic())))
            answer = None
            for a in req.answers(deadline):
                if a.get("id") == env["id"]:
                    answer = a
                    break
            if answer is None:
                return None
            job = answer.get("job")
            state = job.get("state") if isinstance(job, dict) else None
            if state in jobs.TERMINAL:
                return answer
            if answer.get("ok"):
                click.echo(f"chunk {args['index'] + 1}/{count}: {state}", err=True)
                break
            # Refused before reaching the job (e.g. damaged in transit): send it again.
            click.echo(f"chunk {args['index']}: {answer.get('error')}", err=True)
            if attempt == retries:
                return {**answer, "job": {"state": "failed", "id": args["job"]}}
    # All chunks accepted: the last answer said in-progress; wait for the end.
    for a in req.answers(deadline):
        job = a.get("job")
        if isinstance(job, dict) and job.get("id") == chunk_list[0]["job"]:
            if job.get("state") in jobs.TERMINAL:
                return a
            click.echo(f"job: {job.get('state')} {job.get('step', '')}".rstrip(), err=True)
    return None


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@hub.command("set-config")
@click.argument("device")
@click.argument("changes_json", required=False, metavar="[CHANGES-JSON|@FILE]")
@click.option(
    "--file",
    "toml_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Changes as a TOML file (partial watchpost.toml).",
)
@click.option("--replace", is_flag=True, help="Do not merge into the current desired config.")
@click.option("--clear", is_flag=True, help="Remove the retained desired config.")
@click.option("--wait/--no-wait", default=True, help="Wait for the device's config/reported.")
@click.option("--timeout", default=15.0, show_default=True)
@click.pass_obj
def set_config(
    obj: Ctx,
    device: str,
    changes_json: str | None,
    toml_file: Path | None,
    replace: bool,
    clear: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Publish DEVICE's desired config (retained, signed); applied on every (re)connect.

    The desired config is the whole overlay the hub wants on the device's own file, so new
    changes are merged into the current retained one (unless --replace).
    """
    changes = _parse_args_json(changes_json)
    if toml_file is not None:
        try:
            changes = _deep_merge(changes, tomllib.loads(toml_file.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as e:
            fail(f"{toml_file}: {e}")
    if not changes and not clear:
        fail("no changes given (CHANGES-JSON or --file)")
    key = None if clear else obj.command_key()
    conn = obj.connect()
    try:
        site = find_site(obj, conn, device)
        desired_topic = topic(site, device, "config/desired")
        if clear:
            conn.publish(desired_topic, b"", retain=True)
            click.echo(f"cleared {desired_topic}")
            return
        if not replace:
            current = _current_desired(conn, desired_topic, key)
            changes = _deep_merge(current, changes)
        seq = obj.next_seq()
        env = env_mod.make_desired(device, changes, key, version=seq)
        reported_topic = topic(site, device, "config/reported")
        if wait:
            conn.subscribe([reported_topic])
        conn.publish(desired_topic, env_mod.encode(env), retain=True)
        click.echo(f"desired config version {seq} published to {desired_topic}", err=True)
        if not wait:
            return
        code = _wait_reported(conn, reported_topic, seq, time.monotonic() + timeout)
        sys.exit(code)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()


def _current_desired(conn: Connection, desired_topic: str, key: Any) -> dict[str, Any]:
    """The args of the retained desired envelope, if it verifies with our key."""
    msgs = collect_retained(
        conn, [desired_topic], wait=2.0, settle=0.5, enough=lambda m: m.topic == desired_topic
    )
    for msg in msgs:
        if msg.topic != desired_topic or not msg.payload:
            continue
        try:
            env = env_mod.parse(msg.payload)
            env_mod.verify(env, [key.public_key()])
        except env_mod.EnvelopeError as e:
            raise OperatorError(
                f"the retained desired config on {desired_topic} is not usable ({e}); use --replace"
            ) from None
        return dict(env["args"])
    return {}


def _wait_reported(conn: Connection, reported_topic: str, version: int, deadline: float) -> int:
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = conn.messages.get(timeout=remaining)
        except queue.Empty:
            break
        if msg.topic != reported_topic:
            continue
        rep = _json(msg.payload)
        if not isinstance(rep, dict):
            continue
        if rep.get("version") == version:
            _print_answer(rep)
            return 0
        if rep.get("rejected_version") == version:
            _print_answer(rep)
            click.echo(f"error: the device rejected it: {rep.get('error')}", err=True)
            return EXIT_ERROR
    click.echo("error: the device has not reported this version yet", err=True)
    return EXIT_TIMEOUT


# --- tail ---------------------------------------------------------------------------------------


class Dedup:
    """Alert ids already printed; a SQLite file lets several workers on one host share them."""

    def __init__(self, path: Path | None = None, memory_max: int = 200_000) -> None:
        self._mem: OrderedDict[str, None] = OrderedDict()
        self._max = memory_max
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, device TEXT, "
                "seq INTEGER, at REAL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS seen_dev ON seen(device, seq)")

    def first(self, alert_id: str, device: str, seq: int | None) -> bool:
        """True the first time `alert_id` is seen (by any worker sharing the file)."""
        if self._db is not None:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)",
                (alert_id, device, seq, time.time()),
            )
            return cur.rowcount == 1
        if alert_id in self._mem:
            self._mem.move_to_end(alert_id)
            return False
        self._mem[alert_id] = None
        if len(self._mem) > self._max:
            self._mem.popitem(last=False)
        return True

    def seen_seqs(self, device: str, lo: int, hi: int) -> set[int]:
        """Sequence numbers of `device` in [lo, hi] that any sharing worker has seen."""
        if self._db is None:
            return set()
        rows = self._db.execute(
            "SELECT seq FROM seen WHERE device = ? AND seq BETWEEN ? AND ?", (device, lo, hi)
        )
        return {r[0] for r in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


@dataclass
class _Device:
    low: int
    high: int
    missing: list[list[float]] = field(default_factory=list)  # [lo, hi, since]


class GapTracker:
    """Per-device alert sequence gaps, reported only once they have stayed open for `grace` s.

    A grace period matters: with QoS 1 redelivery and shared subscriptions alerts can arrive
    out of order or at another worker.
    """

    def __init__(self, grace: float = 5.0, dedup: Dedup | None = None) -> None:
        self.grace = grace
        self.dedup = dedup
        self.devices: dict[str, _Device] = {}

    def saw(self, device: str, seq: int, now: float) -> None:
        d = self.devices.get(device)
        if d is None:
            self.devices[device] = _Device(seq, seq)
            return
        if seq > d.high:
            if seq > d.high + 1:
                d.missing.append([d.high + 1, seq - 1, now])
            d.high = seq
        elif seq < d.low:
            d.low = seq  # older than anything seen so far: not a gap we were tracking
        else:
            self._fill(d, seq)

    @staticmethod
    def _fill(d: _Device, seq: int) -> None:
        for i, (lo, hi, since) in enumerate(d.missing):
            if lo <= seq <= hi:
                parts = []
                if lo < seq:
                    parts.append([lo, seq - 1, since])
                if seq < hi:
                    parts.append([seq + 1, hi, since])
                d.missing[i : i + 1] = parts
                return

    def due(self, now: float) -> list[tuple[str, int, int]]:
        """Gaps (device, first, last) open for longer than the grace period; reported once."""
        out = []
        for name, d in self.devices.items():
            if self.dedup is not None:
                for lo, hi, _since in list(d.missing):
                    if now - _since >= self.grace:
                        for s in self.dedup.seen_seqs(name, int(lo), int(hi)):
                            self._fill(d, s)
            keep = []
            for lo, hi, since in d.missing:
                if now - since >= self.grace:
                    out.append((name, int(lo), int(hi)))
                else:
                    keep.append([lo, hi, since])
            d.missing = keep
        return out


@hub.command()
@click.option("--device", default="+", help="Only this device (default all).")
@click.option("--client-id", default=None, help="Fixed client id: a persistent session.")
@click.option("--count", default=0, help="Stop after this many new alerts (0: never).")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: never).")
@click.option(
    "--dedup-db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file shared by the workers of one host for dedup and gap checks.",
)
@click.option("--gap-grace", default=5.0, show_default=True, help="Seconds before a gap counts.")
@click.pass_obj
def tail(
    obj: Ctx,
    device: str,
    client_id: str | None,
    count: int,
    duration: float,
    dedup_db: Path | None,
    gap_grace: float,
) -> None:
    """Print alerts as EVE-JSON lines, deduplicated by watchpost.id; gaps go to stderr.

    Subscribes through ``$share/<group>/…`` so several hub workers split the alerts.
    """
    s = obj.settings
    site = s.site or "+"
    conn = obj.connect(
        client_id=client_id,
        clean_start=client_id is None,
        session_expiry=86400 if client_id else 0,
        manual_ack=True,
    )
    dedup = Dedup(dedup_db)
    gaps = GapTracker(gap_grace, dedup if dedup_db else None)
    printed = 0
    stop_at = time.monotonic() + duration if duration > 0 else None
    try:
        conn.subscribe([f"$share/{s.group}/{topics.ROOT}/{site}/{device}/alerts"])
        click.echo(f"tail: subscribed as {conn.client_id} in group {s.group}", err=True)
        while stop_at is None or time.monotonic() < stop_at:
            try:
                msg = conn.messages.get(timeout=0.5)
            except queue.Empty:
                msg = None
            if msg is not None:
                printed += _handle_alert(msg, dedup, gaps)
                conn.ack(msg)
            for dev, lo, hi in gaps.due(time.time()):
                span = f"{lo}" if lo == hi else f"{lo}-{hi}"
                click.echo(f"gap: {dev} missing alert seq {span}", err=True)
            if count and printed >= count:
                break
            if conn.lost is not None:
                raise OperatorError(f"connection lost: {conn.lost}")
    except OperatorError as e:
        fail(str(e))
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `| head` has read enough
        pass
    finally:
        conn.close()
        dedup.close()


def _handle_alert(msg: mqtt.MQTTMessage, dedup: Dedup, gaps: GapTracker) -> int:
    site, device, _ = _split(msg.topic)
    alert = _json(msg.payload)
    if not isinstance(alert, dict):
        click.echo(f"warning: {msg.topic}: not a JSON alert, skipped", err=True)
        return 0
    wp = alert.get("watchpost") if isinstance(alert.get("watchpost"), dict) else {}
    alert_id = wp.get("id") or hashlib.sha256(msg.payload).hexdigest()
    name = f"{site}/{wp.get('device') or device}"
    seq = wp.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    if not dedup.first(str(alert_id), name, seq):
        return 0
    if seq is not None:
        gaps.saw(name, seq, time.time())
    click.echo(json.dumps(alert, ensure_ascii=False, separators=(",", ":")))
    sys.stdout.flush()
    return 1


__all__ = ["Connection", "Dedup", "GapTracker", "Settings", "hub", "load_settings"]
