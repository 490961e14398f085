"""Hub side of first-boot enrolment: one-time tokens, CSR signing, registry and broker ACL.

    watchpost-hub enrol token --dir CA --device ID --site S --hub-host H [--out BUNDLE]
    watchpost-hub enrol serve --dir CA --broker-conf DIR [--broker-pid PID] [--once]

`token` makes a one-time enrolment token for one device id at one site, valid for `--hours`
(72 by default). Only hashes are stored, in the CA's registry.json under "enrol": a scrypt hash
the hub checks, and mosquitto's PBKDF2 hash for the broker's password file (the token is the MQTT
password of user ``enrol-<token id>`` on the enrolment listener; see `protocol.enrol`). It writes
the enrolment bundle the installer copies to the SD card's boot partition: device id, site, hub
host and ports, the hub CA, the hub's command public key and the token.

`serve` answers enrolment requests: it checks the token (known, not expired, matching hash, for
this device and site, not used for another key), signs the device's CSR with the CA
(`hub.provisioning.sign_csr`, the same profile and registry as `provision device`), records the
device's status-page setup code for the installer's sheet (``<CA>/enrolled/<id>.json``), publishes
the certificate (retained, so a device that lost the answer gets it again with the same key),
then rewrites the broker ACL and password file so the new device may use its own topics, and
reloads the broker. Once the device reports its status with its own certificate, the token is
done: its broker user and its retained answer go. A signed token can never sign a second key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hub import provisioning as prov
from protocol import enrol as wire
from protocol import topics
from protocol.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_HOURS = 72
BUNDLE_NAME = "watchpost-enrol.toml"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class EnrolError(Exception):
    """A token or request that cannot be handled; `code` is what the device is told."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """mosquitto's password-file hash (``$7$``: PBKDF2-HMAC-SHA512), as mosquitto_passwd makes."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _check_hash(token: str, info: dict[str, Any]) -> bool:
    try:
        salt = bytes.fromhex(info["salt"])
        want = bytes.fromhex(info["check"])
    except (KeyError, ValueError):
        return False
    got = hashlib.scrypt(token.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(got, want)


# -- tokens --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    token: str
    tid: str
    device: str
    site: str
    expires: dt.datetime


def create_token(
    ca_dir: str | os.PathLike[str],
    device: str,
    site: str,
    hours: float = DEFAULT_HOURS,
    replace: bool = False,
    now: dt.datetime | None = None,
) -> Token:
    """A new one-time token for `device` at `site`; only its hashes are stored."""
    try:
        prov.check_name("device id", device)
        prov.check_name("site", site)
    except prov.ProvisionError as e:
        raise EnrolError("bad-name", str(e)) from None
    if site == wire.RESERVED_SITE:
        raise EnrolError("bad-name", f"site {site!r} is reserved for enrolment topics")
    if device.startswith(wire.USER_PREFIX):
        raise EnrolError("bad-name", f"device ids may not start with {wire.USER_PREFIX!r}")
    if not 0 < hours <= 24 * 90:
        raise EnrolError("bad-hours", f"hours must be between 0 and {24 * 90}, got {hours:g}")
    ca = prov.load_ca(ca_dir)
    reg = prov.registry(ca.dir)
    if device in reg["devices"]:
        raise EnrolError(
            "enrolled", f"device {device!r} is already enrolled at {reg['devices'][device]['site']}"
        )
    if device in reg["hubs"]:
        raise EnrolError("bad-name", f"{device!r} is a hub identity")
    now = now or _now()
    enrol = reg.setdefault("enrol", {})
    for tid, info in list(enrol.items()):
        if info.get("device") == device and info.get("state") in ("open", "signed"):
            if not replace:
                raise EnrolError(
                    "exists",
                    f"device {device!r} already has an open token ({tid}, expires "
                    f"{info.get('expires')}): use --replace to make a new one",
                )
            info["state"] = "replaced"
    token = secrets.token_urlsafe(32)
    tid = wire.token_id(token)
    salt = secrets.token_bytes(16)
    expires = now + dt.timedelta(hours=hours)
    enrol[tid] = {
        "device": device,
        "site": site,
        "state": "open",
        "created": now.isoformat(),
        "expires": expires.isoformat(),
        "salt": salt.hex(),
        "check": hashlib.scrypt(token.encode(), salt=salt, **_SCRYPT).hex(),
        "passwd": mosquitto_hash(token),
    }
    prov._save_registry(ca.dir, reg)
    return Token(token, tid, device, site, expires)


def bundle_text(
    token: Token,
    hub_host: str,
    ca_pem: str,
    command_pubkey_pem: str,
    hub_port: int = 8883,
    enrol_port: int = 8884,
) -> str:
    """The installer's watchpost-enrol.toml for the boot partition."""
    body = {
        "device_id": token.device,
        "site": token.site,
        "hub_host": hub_host,
        "hub_port": hub_port,
        "enrol_port": enrol_port,
        "hub_ca": ca_pem,
        "command_pubkey": command_pubkey_pem,
        "token": token.token,
        "expires": token.expires.isoformat(timespec="seconds"),
    }
    head = (
        f"# Watchpost enrolment bundle for {token.device} at {token.site}. Copy it to the boot\n"
        "# partition of the device's SD card as watchpost-enrol.toml. The token works once and\n"
        f"# until {body['expires']}; the device deletes it from this file when it has enrolled.\n"
    )
    return head + tomli_w.dumps(body, multiline_strings=True)


# -- requests ------------------------------------------------------------------------------------


def _expired(info: dict[str, Any], now: dt.datetime) -> bool:
    try:
        return now >= dt.datetime.fromisoformat(info["expires"])
    except (KeyError, ValueError):
        return True


def _key_id(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def handle_request(
    ca_dir: str | os.PathLike[str], tid: str, payload: bytes, now: dt.datetime | None = None
) -> tuple[bytes, bool]:
    """The answer to one enrolment request and whether the registry changed (EnrolError is
    turned into an error answer here, so the device always learns why)."""
    try:
        return handle_or_raise(ca_dir, tid, payload, now)
    except EnrolError as e:
        log.warning("enrolment %s refused: %s", tid, e)
        return wire.result_error(e.code, str(e)), False


def handle_or_raise(
    ca_dir: str | os.PathLike[str], tid: str, payload: bytes, now: dt.datetime | None = None
) -> tuple[bytes, bool]:
    now = now or _now()
    ca = prov.load_ca(ca_dir)
    reg = prov.registry(ca.dir)
    info = reg.get("enrol", {}).get(tid)
    if info is None:
        raise EnrolError("unknown-token", "unknown enrolment token")
    try:
        req = wire.parse_request(payload)
    except wire.EnrolProtocolError as e:
        raise EnrolError("bad-request", str(e)) from None
    if wire.token_id(req["token"]) != tid or not _check_hash(req["token"], info):
        raise EnrolError("wrong-token", "the enrolment token does not match")
    state = info.get("state")
    if state not in ("open", "signed"):
        raise EnrolError("used", f"the enrolment token is {state}")
    if state == "open" and _expired(info, now):
        raise EnrolError("expired", f"the enrolment token expired at {info.get('expires')}")
    if (req["device"], req["site"]) != (info["device"], info["site"]):
        raise EnrolError(
            "mismatch",
            f"the token is for {info['device']} at {info['site']}, the request is for "
            f"{req['device']} at {req['site']}",
        )
    try:
        csr = x509.load_pem_x509_csr(req["csr"].encode())
    except ValueError as e:
        raise EnrolError("bad-csr", f"not a PEM certificate request ({e})") from None
    key_id = _key_id(csr.public_key())
    ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    if state == "signed":
        if info.get("key") != key_id:
            raise EnrolError("used", "the enrolment token was already used for another key")
        return wire.result_ok(info["device"], info["site"], info["cert"], ca_pem), False
    try:
        cert = prov.sign_csr(ca.dir, csr, info["device"], info["site"])
    except prov.ProvisionError as e:
        raise EnrolError("refused", str(e)) from None
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    reg = prov.registry(ca.dir)  # sign_csr added the device
    info = reg["enrol"][tid]
    info.update(state="signed", key=key_id, cert=cert_pem, signed=now.isoformat())
    prov._save_registry(ca.dir, reg)
    sheet = {
        "device": info["device"],
        "site": info["site"],
        "setup_code": req["setup_code"],
        "firmware": req["firmware"],
        "enrolled": now.isoformat(timespec="seconds"),
        "serial": format(cert.serial_number, "x"),
        "fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
    }
    atomic_write(
        ca.dir / "enrolled" / f"{info['device']}.json",
        (json.dumps(sheet, indent=2) + "\n").encode(),
        mode=0o600,
    )
    log.info("enrolled %s at %s (setup code on the sheet)", info["device"], info["site"])
    return wire.result_ok(info["device"], info["site"], cert_pem, ca_pem), True


def device_seen(ca_dir: str | os.PathLike[str], site: str, device: str) -> str | None:
    """The device reported with its own certificate: its signed token is done. Returns the
    token id that was closed, if any."""
    reg = prov.registry(ca_dir)
    for tid, info in reg.get("enrol", {}).items():
        if (info.get("site"), info.get("device"), info.get("state")) == (site, device, "signed"):
            info["state"] = "done"
            info.pop("cert", None)
            prov._save_registry(Path(ca_dir), reg)
            return tid
    return None


def expire_tokens(ca_dir: str | os.PathLike[str], now: dt.datetime | None = None) -> list[str]:
    """Mark open tokens past their expiry as expired; returns their ids."""
    now = now or _now()
    reg = prov.registry(ca_dir)
    gone = [
        tid
        for tid, info in reg.get("enrol", {}).items()
        if info.get("state") == "open" and _expired(info, now)
    ]
    for tid in gone:
        reg["enrol"][tid]["state"] = "expired"
    if gone:
        prov._save_registry(Path(ca_dir), reg)
    return gone


def write_broker_files(ca_dir: str | os.PathLike[str], conf_dir: Path, acl_mode: str) -> None:
    """Rewrite the broker's ACL and enrolment password file from the registry."""
    reg = prov.registry(ca_dir)
    atomic_write(conf_dir / "acl", prov.acl_text(reg, acl_mode).encode(), mode=0o644)
    passwd = conf_dir / "enrol.passwd"
    mode = passwd.stat().st_mode & 0o777 if passwd.exists() else 0o640
    uid = passwd.stat().st_uid if passwd.exists() else -1
    atomic_write(passwd, prov.enrol_passwd_text(reg).encode(), mode=mode)
    if uid >= 0 and os.geteuid() == 0:
        os.chown(passwd, uid, -1)


# -- the server ----------------------------------------------------------------------------------


class Server:
    """Answers enrolment requests over an operator `Connection` (the hub identity)."""

    def __init__(
        self,
        conn: Any,
        ca_dir: Path,
        conf_dir: Path,
        reload: Callable[[], None],
        acl_mode: str = "sites",
    ) -> None:
        self.conn = conn
        self.ca_dir = ca_dir
        self.conf_dir = conf_dir
        self.reload = reload
        self.acl_mode = acl_mode
        self.enrolled: list[str] = []
        conn.subscribe([f"{wire.ROOT}/+/request", f"{topics.ROOT}/+/+/{topics.STATUS}"])

    def refresh(self) -> None:
        write_broker_files(self.ca_dir, self.conf_dir, self.acl_mode)
        self.reload()

    def step(self, timeout: float) -> bool:
        """Handle one message if one comes within `timeout`; True if one was handled."""
        try:
            msg = self.conn.messages.get(timeout=timeout)
        except queue.Empty:
            if expire_tokens(self.ca_dir):
                self.refresh()
            return False
        if msg.topic.startswith(wire.ROOT + "/"):
            try:
                tid, kind = wire.split_topic(msg.topic)
            except wire.EnrolProtocolError:
                return True
            if kind != "request" or not msg.payload:
                return True
            answer, changed = handle_request(self.ca_dir, tid, msg.payload)
            ok = json.loads(answer).get("ok") is True
            # Publish first: the device's read permission goes with the token.
            self.conn.publish(wire.result_topic(tid), answer, retain=ok)
            if changed:
                self.enrolled.append(json.loads(answer)["device"])
                self.refresh()
            return True
        try:
            site, device, _sub = topics.split(msg.topic)
        except ValueError:
            return True
        closed = device_seen(self.ca_dir, site, device) if msg.payload else None
        if closed is not None:
            log.info(
                "%s at %s is online with its own certificate: token %s done", device, site, closed
            )
            self.conn.publish(wire.result_topic(closed), b"", retain=True)
            self.refresh()
        return True


def _reloader(pid: int | None, pid_file: Path | None) -> Callable[[], None]:
    def reload() -> None:
        target = pid
        if pid_file is not None:
            try:
                target = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError) as e:
                log.error("cannot read the broker pid from %s: %s", pid_file, e)
                return
        if target is None:
            log.warning("ACL updated; reload the broker yourself (no --broker-pid)")
            return
        try:
            os.kill(target, signal.SIGHUP)
        except OSError as e:
            log.error("cannot reload the broker (pid %d): %s", target, e)

    return reload


# -- CLI -----------------------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


@click.group("enrol")
def enrol() -> None:
    """First-boot enrolment: one-time tokens and the service that signs device CSRs."""


@enrol.command("token")
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", required=True, help="The device id (certificate CN).")
@click.option("--site", required=True, help="The office site.")
@click.option("--hours", default=DEFAULT_HOURS, show_default=True, type=float)
@click.option("--replace", is_flag=True, help="Replace the device's open token.")
@click.option("--hub-host", required=True, help="The broker name/address devices dial.")
@click.option("--hub-port", default=8883, show_default=True, type=int)
@click.option("--enrol-port", default=8884, show_default=True, type=int)
@click.option(
    "--command-pubkey",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The hub's Ed25519 command public key (from 'keygen').",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Where to write the bundle (default: ./{BUNDLE_NAME}).",
)
def token_cmd(
    ca_dir: Path,
    device: str,
    site: str,
    hours: float,
    replace: bool,
    hub_host: str,
    hub_port: int,
    enrol_port: int,
    command_pubkey: Path,
    out: Path | None,
) -> None:
    """Make a one-time enrolment token and the installer's bundle for one device."""
    try:
        pub = command_pubkey.read_text()
    except OSError as e:
        _fail(f"--command-pubkey {command_pubkey}: {e.strerror or e}")
    if "BEGIN PUBLIC KEY" not in pub:
        _fail(f"--command-pubkey {command_pubkey}: not a PEM public key")
    try:
        tok = create_token(ca_dir, device, site, hours=hours, replace=replace)
    except (EnrolError, prov.ProvisionError) as e:
        _fail(str(e))
        raise
    ca_pem = (ca_dir / "ca.pem").read_text()
    target = out or Path(BUNDLE_NAME)
    atomic_write(
        target, bundle_text(tok, hub_host, ca_pem, pub, hub_port, enrol_port).encode(), 0o600
    )
    click.echo(
        f"token {tok.tid} for {device} at {site}, valid until {tok.expires:%Y-%m-%d %H:%M} UTC: "
        f"bundle {target}. Refresh the broker ('provision broker-conf --enrol-port "
        f"{enrol_port}' or a running 'enrol serve' does it) before the device boots."
    )


@enrol.command("serve")
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--broker-conf",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The broker config directory (its acl and enrol.passwd are rewritten).",
)
@click.option("--acl", "acl_mode", type=click.Choice(prov.ACL_MODES), default="sites")
@click.option("--broker-pid", type=int, default=None, help="Send the broker SIGHUP after changes.")
@click.option("--broker-pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--once", is_flag=True, help="Stop after the first device is enrolled.")
@click.option("--timeout", type=float, default=0, help="Stop after this many seconds (0: never).")
@click.pass_obj
def serve_cmd(
    obj: Any,
    ca_dir: Path,
    broker_conf: Path,
    acl_mode: str,
    broker_pid: int | None,
    broker_pid_file: Path | None,
    once: bool,
    timeout: float,
) -> None:
    """Answer enrolment requests until stopped (with the hub identity's connection)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prov.load_ca(ca_dir)
    except prov.ProvisionError as e:
        _fail(str(e))
    conn = obj.connect(client_id=f"hub-enrol-{os.getpid()}")
    server = Server(conn, ca_dir, broker_conf, _reloader(broker_pid, broker_pid_file), acl_mode)
    server.refresh()
    click.echo("enrol: waiting for enrolment requests", err=True)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while deadline is None or time.monotonic() < deadline:
            if conn.lost is not None:
                _fail(f"connection to the broker lost ({conn.lost})", 1)
            server.step(0.5)
            if once and server.enrolled:
                break
    finally:
        conn.close()
    for device in server.enrolled:
        click.echo(f"enrolled {device}")
