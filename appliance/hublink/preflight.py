"""TLS preflight of the hub link: the device's TLS files checked before dialling, and a short,
specific reason for every way a connection attempt fails (for status, telemetry, LEDs, page)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import Config
from appliance.hublink.renewal import identity_paths


@dataclass(frozen=True)
class _Files:
    ca: str
    cert: str
    key: str


def describe_failure(exc: BaseException | None, host: str, port: int) -> str:
    """A short, specific reason for a failed connection attempt."""
    where = f"{host}:{port}"
    if exc is None:
        return f"cannot connect to {where}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve hub host {host!r} ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "unable to get local issuer" in msg or "self-signed" in msg or "self signed" in msg:
            msg += " (the hub's certificate is not signed by the pinned hub CA)"
        return f"hub certificate rejected: {msg}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {_ssl_text(str(exc))}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (no broker listening?)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {where} (timed out)"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


def _ssl_text(text: str) -> str:
    """'[SSL: X] sslv3 alert certificate expired (_ssl.c:2580)' -> 'sslv3 alert certificate
    expired'."""
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(" (_ssl.c", 1)[0].strip()


@dataclass(frozen=True)
class Preflight:
    """Local checks of the TLS files before dialling: `fatal` (key, problem) pairs stop the link
    (nothing would work), `notes` explain a failure that may follow (e.g. an expired
    certificate, when the clock may be wrong)."""

    fatal: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    context: ssl.SSLContext | None


def preflight(config: Config, now: float | None = None) -> Preflight:
    """Check the TLS files: ``hub.ca`` and the device's pair (the renewed one under the state
    directory when there is one, `renewal.identity_paths`, else ``hub.cert``/``hub.key``)."""
    cert_path, key_path = identity_paths(config)
    hub = _Files(config.hub.ca, cert_path, key_path)
    fatal: list[tuple[str, str]] = []
    notes: list[str] = []
    for key in ("ca", "cert", "key"):
        path = Path(getattr(hub, key))
        if not path.is_file():
            fatal.append((f"hub.{key}", f"{path}: no such file"))
    if fatal:
        return Preflight(tuple(fatal), (), None)
    try:
        cas = x509.load_pem_x509_certificates(Path(hub.ca).read_bytes())
    except (OSError, ValueError) as e:
        return Preflight((("hub.ca", f"{hub.ca}: not a PEM certificate ({e})"),), (), None)
    try:
        cert = x509.load_pem_x509_certificate(Path(hub.cert).read_bytes())
    except (OSError, ValueError) as e:
        return Preflight((("hub.cert", f"{hub.cert}: not a PEM certificate ({e})"),), (), None)
    try:
        private = serialization.load_pem_private_key(Path(hub.key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        return Preflight((("hub.key", f"{hub.key}: not an unencrypted PEM key ({e})"),), (), None)
    if private.public_key() != cert.public_key():
        fatal.append(("hub.key", f"{hub.key} does not belong to the certificate {hub.cert}"))
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn != config.device.id:
        fatal.append(
            (
                "hub.cert",
                f"the certificate is for {cn!r}, not for this device {config.device.id!r} "
                "(the broker takes the CN as the device id)",
            )
        )
    if fatal:
        return Preflight(tuple(fatal), (), None)
    now_dt = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    # Only trust our clock about expiry when it is past the CA's birth (no RTC on a Pi).
    clock_plausible = any(now_dt > ca.not_valid_before_utc for ca in cas)
    if clock_plausible and now_dt > cert.not_valid_after_utc:
        notes.append(f"the device certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    elif clock_plausible and now_dt < cert.not_valid_before_utc:
        notes.append(
            f"the device certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        )
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=hub.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(hub.cert, hub.key)
    except (OSError, ssl.SSLError, ValueError) as e:
        return Preflight((("hub.cert", f"cannot load the TLS files: {e}"),), tuple(notes), None)
    return Preflight((), tuple(notes), ctx)
