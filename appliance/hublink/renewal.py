"""Device side of certificate renewal: a new key and CSR before the device certificate ends.

When `hub.renew_at_percent` of the certificate's lifetime has passed (67 %: a 365-day
certificate is renewed about four months before it ends), the link, while connected, makes a new
EC P-256 key on the device (it never leaves it: only the CSR is sent), and publishes the CSR
(PEM, CN = the device id) on ``{root}/cert/csr``. The hub's ``watchpost-hub renewals`` answers on
``{root}/cert/issued`` (retained)::

    {"ok": true, "cert": "-----BEGIN CERTIFICATE-----...", "not_after": "..."}
    {"ok": false, "error": "..."}

The answer is installed only if the certificate is directly issued by a CA of ``hub.ca`` (the
one the device pins), is for the new key, names this device (CN), allows client authentication
and has not ended. Anything else is refused with the reason (kept in `stats` as ``error``), the
old certificate stays in use, and the next attempt follows a back-off (1 h doubling to 1 day).
No answer within `answer_timeout` counts as a failure too.

The office's ``/etc/watchpost`` is read-only to the daemon, so a renewed pair lives under the
state directory: ``identity-<serial>/device.pem`` and ``device.key`` (each `atomic_write`n, the
key 0600), made current by replacing the symlink ``identity`` in one rename, so a power cut
leaves the old pair or the new one, never a mix. `identity_paths` gives the link the pair to use:
the renewed one when it is there and ends later than the configured ``hub.cert``. After an
install the link reconnects with it (``take_reconnect``). The pending key waits in
``renewal/pending.key`` (0600), so an answer that arrives after a restart still finds it.

``stats`` (in the link's ``hub`` status, telemetry, the page and the LEDs) says when the
certificate ends, the renewal state (``ok``, ``due``, ``waiting``, ``failed``) and why it
failed; ``problem`` is set once a failing renewal has used half of its window (or the
certificate has ended): the amber LED blinks and the page says so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import Config
from appliance.enrol.certcheck import CertErrors, check_device_cert
from protocol.files import atomic_write

log = logging.getLogger(__name__)

CSR_TOPIC = "cert/csr"
ISSUED_TOPIC = "cert/issued"
IDENTITY = "identity"
PENDING_DIR = "renewal"
ANSWER_TIMEOUT_S = 600.0
BACKOFF_S = (3600.0, 86400.0)
MAX_ANSWER = 16 * 1024
OK, DUE, WAITING, FAILED = "ok", "due", "waiting", "failed"


class RenewalRefused(ValueError):
    """An answer on cert/issued that is not installed; the message says why."""


# The certificate checks are enrolment's (appliance.enrol.certcheck); these are renewal's words.
ERRORS = CertErrors(
    refuse=RenewalRefused,
    not_pem="the answer's certificate is not PEM ({error})",
    not_issued="the certificate is not issued by the hub CA this device trusts",
    wrong_key="the certificate is not for this device's new key",
    wrong_device="the certificate is for {got!r}, not for this device {device_id!r}",
)


def _load_cert(path: str | os.PathLike[str]) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def identity_paths(config: Config) -> tuple[str, str]:
    """(cert, key) for the hub link: the renewed pair under the state directory when it is
    complete and ends later than the configured ``hub.cert``, else ``hub.cert``/``hub.key``."""
    d = Path(config.device.state_dir) / IDENTITY
    cert, key = d / "device.pem", d / "device.key"
    if not (cert.is_file() and key.is_file()):
        return config.hub.cert, config.hub.key
    renewed, configured = _load_cert(cert), _load_cert(config.hub.cert)
    if renewed is None:
        return config.hub.cert, config.hub.key
    if configured is not None and configured.not_valid_after_utc >= renewed.not_valid_after_utc:
        return config.hub.cert, config.hub.key  # the office installed a newer one by hand
    return str(cert), str(key)


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_issued(
    payload: bytes,
    cas: list[x509.Certificate],
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    now: dt.datetime,
) -> x509.Certificate:
    """The certificate of a ``cert/issued`` answer, checked; RenewalRefused says what is wrong."""
    if len(payload) > MAX_ANSWER:
        raise RenewalRefused(f"the answer is over {MAX_ANSWER} bytes")
    try:
        body = json.loads(payload)
    except ValueError:
        raise RenewalRefused("the answer is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise RenewalRefused('the answer is not {"ok": ...}')
    if not body["ok"]:
        raise RenewalRefused(f"the hub refused the CSR: {str(body.get('error') or '?')[:300]}")
    pem = body.get("cert")
    if not isinstance(pem, str):
        raise RenewalRefused("the answer carries no certificate")
    return check_device_cert(pem, cas, key, device_id, now, ERRORS)


class CertRenewal:
    """Renewal state for one hub link; `tick` from the daemon's loop, `on_issued` from paho."""

    def __init__(
        self,
        config: Config,
        publish: Callable[[str, bytes], bool],
        *,
        clock: Callable[[], float] = time.time,
        answer_timeout: float = ANSWER_TIMEOUT_S,
        backoff: tuple[float, float] = BACKOFF_S,
    ) -> None:
        self.config = config
        self.publish = publish
        self.clock = clock
        self.answer_timeout = answer_timeout
        self.backoff = backoff
        self.state_dir = Path(config.device.state_dir)
        self._lock = threading.Lock()
        self._state = OK
        self._error = ""
        self._failures = 0
        self._next_try = 0.0
        self._sent_at = 0.0
        self._reconnect = False
        self._pending: ec.EllipticCurvePrivateKey | None = self._load_pending()
        self.counters = {"csr_sent": 0, "installed": 0, "refused": 0, "timeouts": 0}

    # -- paths --------------------------------------------------------------------------------

    @property
    def _pending_key(self) -> Path:
        return self.state_dir / PENDING_DIR / "pending.key"

    def _load_pending(self) -> ec.EllipticCurvePrivateKey | None:
        try:
            key = serialization.load_pem_private_key(self._pending_key.read_bytes(), None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("pending renewal key %s unusable (%s)", self._pending_key, e)
            return None
        return key if isinstance(key, ec.EllipticCurvePrivateKey) else None

    def current(self) -> x509.Certificate | None:
        cert, _key = identity_paths(self.config)
        return _load_cert(cert)

    # -- policy -------------------------------------------------------------------------------

    def due_at(self, cert: x509.Certificate) -> float:
        start = cert.not_valid_before_utc.timestamp()
        end = cert.not_valid_after_utc.timestamp()
        return start + (end - start) * self.config.hub.renew_at_percent / 100.0

    def _problem(self, cert: x509.Certificate | None, now: float) -> str:
        if cert is None:
            return ""
        end = cert.not_valid_after_utc.timestamp()
        days = max(0, int((end - now) // 86400))
        if now >= end:
            why = f": {self._error}" if self._error else ""
            return f"the hub certificate ended on {cert.not_valid_after_utc:%Y-%m-%d}{why}"
        if self._state == FAILED and now >= (self.due_at(cert) + end) / 2:
            return f"the hub certificate ends in {days} days and renewal failed: {self._error}"
        return ""

    # -- driving ------------------------------------------------------------------------------

    def tick(self, now: float, connected: bool) -> None:
        """Start an attempt when due (and connected); time out an unanswered one."""
        with self._lock:
            if self._state == WAITING:
                if now - self._sent_at >= self.answer_timeout:
                    self.counters["timeouts"] += 1
                    self._fail(f"no answer from the hub within {int(self.answer_timeout)} s", now)
                return
            cert = self.current()
            if cert is None or now < self.due_at(cert):
                self._state, self._error, self._failures = OK, "", 0
                return
            if self._state == OK:
                self._state = DUE
            if not connected or now < self._next_try:
                return
            self._send(now)

    def _send(self, now: float) -> None:
        if self._pending is None:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                atomic_write(self._pending_key, pem, mode=0o600)
            except OSError as e:
                self._fail(f"cannot save the new key ({e.strerror or e})", now)
                return
            self._pending = key
        csr = make_csr(self._pending, self.config.device.id)
        if not self.publish(CSR_TOPIC, csr):
            self._fail("could not publish the CSR", now)
            return
        self.counters["csr_sent"] += 1
        self._state, self._sent_at = WAITING, now
        log.info("certificate renewal: CSR sent on %s", CSR_TOPIC)

    def _fail(self, why: str, now: float) -> None:
        self._failures += 1
        lo, hi = self.backoff
        delay = min(hi, lo * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.0)
        self._state, self._error, self._next_try = FAILED, why, now + delay
        log.warning("certificate renewal failed (%s); next try in %d s", why, int(delay))

    def on_issued(self, payload: bytes, retained: bool) -> None:
        """An answer on cert/issued (from the MQTT thread)."""
        with self._lock:
            key = self._pending
            if key is None:
                return  # nothing asked: the retained answer to an earlier renewal
            now = self.clock()
            try:
                when = dt.datetime.fromtimestamp(now, dt.UTC)
                cert = check_issued(payload, self._cas(), key, self.config.device.id, when)
            except RenewalRefused as e:
                if retained:
                    return  # an older answer kept by the broker, not the one to our CSR
                self.counters["refused"] += 1
                self._fail(f"answer refused: {e}", now)
                return
            try:
                self._install(cert, key)
            except OSError as e:
                self._fail(f"cannot install the certificate ({e.strerror or e})", now)
                return
            self.counters["installed"] += 1
            self._pending = None
            self._pending_key.unlink(missing_ok=True)
            self._state, self._error, self._failures, self._next_try = OK, "", 0, 0.0
            self._reconnect = True
            log.info(
                "certificate renewed: serial %x until %s", cert.serial_number,
                cert.not_valid_after_utc.isoformat(),
            )  # fmt: skip

    def _cas(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(Path(self.config.hub.ca).read_bytes())
        except (OSError, ValueError):
            return []

    def _install(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        name = f"{IDENTITY}-{cert.serial_number:x}"
        d = self.state_dir / name
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
        atomic_write(d / "device.key", key_pem, mode=0o600)
        atomic_write(d / "device.pem", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        link = self.state_dir / IDENTITY
        tmp = self.state_dir / f".{IDENTITY}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        previous = os.readlink(link) if link.is_symlink() else None
        os.symlink(name, tmp)
        os.replace(tmp, link)  # the one step that switches key and certificate together
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self.state_dir.glob(f"{IDENTITY}-*"):  # keep the one before, for the record
            if old.name not in (name, previous) and old.is_dir():
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()

    def take_reconnect(self) -> bool:
        """True once after an install: the link should reconnect with the new pair."""
        with self._lock:
            again, self._reconnect = self._reconnect, False
            return again

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            cert = self.current()
            out: dict[str, Any] = {"state": self._state, "error": self._error}
            if cert is not None:
                out["not_after"] = cert.not_valid_after_utc.isoformat()
                out["days_left"] = int((cert.not_valid_after_utc.timestamp() - now) // 86400)
                out["renew_from"] = dt.datetime.fromtimestamp(self.due_at(cert), dt.UTC).isoformat()
                out["serial"] = format(cert.serial_number, "x")
            if self._state == FAILED:
                out["next_try"] = self._next_try
            out["problem"] = self._problem(cert, now)
            out.update(self.counters)
            return out
