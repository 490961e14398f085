"""First boot, zero touch: the device enrols itself with the regional hub (`watchpost enrol`).

1. Read and check the enrolment bundle from the boot partition (`appliance.enrol.bundle`).
2. Make the device key here (EC P-256, ``/etc/watchpost/device.key``, 0600; kept across retries,
   never sent anywhere) and a CSR with CN = the device id.
3. Make the status-page setup code (`appliance.enrol.setupcode`), show it on the console and in
   the log.
4. Connect to the hub's enrolment listener (TLS, the bundle's CA, the token as MQTT password),
   send the CSR and the setup code on ``watchpost/v1/enrol/<token id>/request`` and wait for
   the answer on ``.../result``.
5. Check the certificate (`appliance.enrol.certcheck`, as renewal does: issued by the bundle's CA,
   for our key and device id, for client auth, not ended), store it with
   the hub CA and the command public key, write ``[device]`` and ``[hub]`` into the config.
6. Blank the token in the bundle, write the ``enrolled`` stamp.

Each failure leaves a reason in ``<state_dir>/enrol-status.json`` (the LEDs show "not enrolled"
and the page says why) and in the log; the bridge forwards throughout, as it never depends on
this. Exit codes: 0 enrolled (or already), 3 a bundle problem (retrying cannot help), 1 anything
else (the unit retries).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from appliance import __version__
from appliance.config import ConfigError, merged, save
from appliance.config import load as load_config
from appliance.enrol import bundle as bundle_mod
from appliance.enrol import hubaddr, setupcode, state
from appliance.enrol.certcheck import CertErrors, check_device_cert
from appliance.packet.addrset import AddrSet
from protocol import enrol as wire
from protocol.files import atomic_write

log = logging.getLogger(__name__)

EXIT_OK, EXIT_RETRY, EXIT_BUNDLE = 0, 1, 3


class EnrolFailure(Exception):
    """Enrolment did not succeed; the text is the reason shown on the page and in the log."""

    def __init__(self, reason: str, code: int = EXIT_RETRY) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Paths:
    config: Path = Path("/etc/watchpost/watchpost.toml")
    etc: Path = Path("/etc/watchpost")
    state_dir: Path | None = None  # default: device.state_dir of the config
    console: Path | None = Path("/dev/console")
    # The daemon's unit allows only private addresses plus this drop-in's (the hub's).
    unit_dropin: Path | None = hubaddr.DROPIN


def ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device key: the one already made (an earlier attempt) or a new one, 0600."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
        log.warning("%s is not an EC key: making a new one", path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, mode=0o600)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _connack_reason(rc: Any) -> str:
    text = str(rc)
    value = getattr(rc, "value", None)
    if value in (0x86, 0x87, 4, 5):  # bad user name or password / not authorized
        return (
            "the hub refused the enrolment token (wrong, already used or expired): ask the "
            "hub operator for a new bundle"
        )
    return f"the hub's broker refused the connection: {text}"


def exchange(b: bundle_mod.Bundle, csr_pem: str, setup_code: str, timeout: float) -> dict[str, Any]:
    """Send the CSR and wait for the hub's answer; EnrolFailure with the reason otherwise."""
    tid = wire.token_id(b.token)
    done = threading.Event()
    box: dict[str, Any] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"enrol-{tid}",
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    ctx = ssl.create_default_context(cadata=b.hub_ca)
    client.tls_set_context(ctx)
    client.username_pw_set(wire.username(tid), b.token)

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            box["error"] = _connack_reason(rc)
            done.set()
            return
        c.subscribe([(wire.result_topic(tid), SubscribeOptions(qos=1))])

    def on_subscribe(c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        if any(r.is_failure for r in rcs):
            box["error"] = f"the broker refused the enrolment topic ({rcs[0]})"
            done.set()
            return
        request = wire.request(b.device_id, b.site, b.token, csr_pem, setup_code, __version__)
        c.publish(wire.request_topic(tid), request, qos=1)

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            box["result"] = wire.parse_result(bytes(msg.payload))
        except wire.EnrolProtocolError as e:
            box["error"] = f"the hub's answer is malformed: {e}"
        done.set()

    def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not done.is_set():
            box.setdefault("error", f"the hub's broker closed the connection ({rc})")
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    where = f"{b.hub_host}:{b.enrol_port}"
    try:
        client.connect(b.hub_host, b.enrol_port, keepalive=30)
    except socket.gaierror as e:
        raise EnrolFailure(f"cannot resolve the hub's name {b.hub_host!r} ({e.strerror})") from None
    except ssl.SSLCertVerificationError as e:
        raise EnrolFailure(
            f"the hub at {where} is not the one of the bundle (TLS: {e.verify_message})"
        ) from None
    except (OSError, ssl.SSLError) as e:
        raise EnrolFailure(f"cannot reach the hub at {where}: {e.strerror or e}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise EnrolFailure(f"the hub at {where} did not answer within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if "error" in box:
        raise EnrolFailure(box["error"])
    result = box["result"]
    if not result["ok"]:
        code = EXIT_BUNDLE if result["code"] in ("wrong-token", "used", "expired") else EXIT_RETRY
        raise EnrolFailure(f"the hub refused the enrolment: {result['error']}", code)
    return result


# The checks are renewal's too (appliance.enrol.certcheck); these are enrolment's words.
ERRORS = CertErrors(
    refuse=EnrolFailure,
    not_pem="the hub sent no valid certificate ({error})",
    not_issued="the certificate is not issued by the bundle's hub CA ({error})",
    wrong_key="the certificate is not for this device's key",
    wrong_device="the certificate is not for device {device_id}",
)


def check_certificate(
    result: dict[str, Any], key: ec.EllipticCurvePrivateKey, b: bundle_mod.Bundle
) -> x509.Certificate:
    ca = x509.load_pem_x509_certificate(b.hub_ca.encode())
    now = dt.datetime.now(dt.UTC)
    return check_device_cert(result["cert"], [ca], key, b.device_id, now, ERRORS)


def write_hub_dropin(path: Path, host: str, port: int, office: AddrSet, state_dir: Path) -> None:
    """The unit's IPAddressAllow= drop-in for the hub's public addresses (resolved now; the
    daemon's start resolves them again: `appliance.enrol.hubaddr`)."""
    r = hubaddr.refresh(host, port, office, path, apply=None)
    if r.unresolved:
        raise EnrolFailure(r.unresolved)
    hubaddr.write_status(state_dir, r)


def show_setup_code(code: str, device_id: str, console: Path | None) -> None:
    text = (
        f"\nWatchpost {device_id}: status page setup code {code}\n"
        "(first login on the status page; it is also on the installer's sheet)\n\n"
    )
    log.info("status page setup code: %s", code)
    if console is not None and console.exists():
        try:
            with open(console, "w") as f:
                f.write(text)
        except OSError as e:
            log.warning("cannot write the setup code to %s: %s", console, e)


def enrol(bundle_paths: list[Path], paths: Paths, timeout: float = 60.0) -> tuple[int, str]:
    """One enrolment attempt: (exit code, what happened)."""
    try:
        config = load_config(paths.config)
    except ConfigError as e:
        return EXIT_BUNDLE, f"cannot read the config: {e}"
    state_dir = paths.state_dir or Path(config.device.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if state.enrolled(state_dir):
        return EXIT_OK, "already enrolled"
    state.write_status(state_dir, "enrolling")
    try:
        message = _enrol(config, state_dir, bundle_paths, paths, timeout)
    except bundle_mod.BundleError as e:
        reason = f"bad enrolment bundle: {e}"
        state.write_status(state_dir, "failed", reason)
        return EXIT_BUNDLE, reason
    except EnrolFailure as e:
        state.write_status(state_dir, "failed", str(e))
        return e.code, str(e)
    state.write_status(state_dir, "enrolled")
    (state_dir / state.STAMP).write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    return EXIT_OK, message


def _enrol(
    config: Any, state_dir: Path, bundle_paths: list[Path], paths: Paths, timeout: float
) -> str:
    path = bundle_mod.find(bundle_paths)
    b = bundle_mod.load(path)
    log.info("enrolment bundle %s: %s at %s, hub %s", path, b.device_id, b.site, b.hub_host)
    key_path = paths.etc / "device.key"
    key = ensure_key(key_path)
    csr = make_csr(key, b.device_id)
    code = setupcode.make(state_dir)
    show_setup_code(code, b.device_id, paths.console)
    result = exchange(b, csr, code, timeout)
    cert = check_certificate(result, key, b)
    etc = paths.etc
    atomic_write(etc / "device.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write(etc / "hub-ca.pem", b.hub_ca.encode(), mode=0o644)
    atomic_write(etc / "command.pub", b.command_pubkey.encode(), mode=0o644)
    changes = {
        "device": {"id": b.device_id, "site": b.site},
        "hub": {
            "enabled": True,
            "host": b.hub_host,
            "port": b.hub_port,
            "ca": str(etc / "hub-ca.pem"),
            "cert": str(etc / "device.pem"),
            "key": str(key_path),
            "command_pubkey": str(etc / "command.pub"),
        },
    }
    if paths.unit_dropin is not None:
        office = AddrSet(config.inline.home_nets)
        write_hub_dropin(paths.unit_dropin, b.hub_host, b.hub_port, office, state_dir)
    try:
        save(merged(config, changes), paths.config)
    except (ConfigError, OSError) as e:
        raise EnrolFailure(f"cannot write the config {paths.config}: {e}") from None
    os.chmod(paths.config, 0o640)
    extra = [p.parent / bundle_mod.USER_DATA for p in bundle_paths if p.name == bundle_mod.NAME]
    scrubbed = bundle_mod.scrub_token([*bundle_paths, *extra], b.token)
    if path not in scrubbed:
        raise EnrolFailure(f"enrolled, but cannot remove the token from {path}")
    log.info("token removed from %s", ", ".join(str(p) for p in scrubbed))
    return f"enrolled as {b.device_id} at {b.site} with hub {b.hub_host}"
