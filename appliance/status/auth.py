"""Who may see the status page: one password, sessions, CSRF tokens and login rate limits.

The page sits on the office LAN, where anyone plugged in can reach it, so:

- the password is kept only as a werkzeug (scrypt) hash in ``status.password_hash``; checks run
  in constant time (werkzeug compares with `hmac.compare_digest`);
- sessions are Flask's signed cookies holding a random session id, a CSRF token, the login time
  and a tag of the password hash (an HMAC, so the cookie, which is signed but readable, does not
  reveal the hash). A new password ends every session; a session lasts `SESSION_LIFETIME` at
  most; logout revokes the id on the server side (in memory: a restart forgets revocations, the
  lifetime still applies);
- the signing key is made once and kept 0600 in ``device.state_dir`` so a daemon restart does
  not log everyone out;
- failed logins are limited per client (an IPv4 address or an IPv6 /64) and overall, with
  bounded state, so neither guessing nor a flood of addresses gets far.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from protocol.files import atomic_write

log = logging.getLogger(__name__)

SECRET_FILE = "status-secret.key"
SECRET_BYTES = 32
SESSION_LIFETIME = 8 * 3600.0  # seconds a login lasts, whatever the activity
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
HASH_METHODS = ("scrypt", "pbkdf2")


# -- password ------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """The value for ``status.password_hash`` (werkzeug's scrypt)."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return generate_password_hash(password, method="scrypt")


def password_problem(password: str) -> str:
    """Why `password` is not acceptable as the page's password ("" when it is)."""
    if len(password) < MIN_PASSWORD:
        return f"the password needs at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password may have at most {MAX_PASSWORD} characters"
    if password != password.strip():
        return "the password must not start or end with spaces"
    return ""


def hash_problem(value: str) -> str:
    """Why `value` is not a usable ``status.password_hash`` ("" when it is, or is empty)."""
    if not value:
        return ""
    parts = value.split("$")
    method = parts[0].split(":", 1)[0]
    if len(parts) != 3 or method not in HASH_METHODS or not parts[1] or not parts[2]:
        return "not a hash made by `watchpost passwd` (a plain password does not work here)"
    try:
        bytes.fromhex(parts[2])
    except ValueError:
        return "not a hash made by `watchpost passwd` (damaged hash)"
    return ""


def check_password(password_hash: str, password: str) -> bool:
    """True when `password` matches; False for an empty or unusable hash (never raises)."""
    if not password_hash or hash_problem(password_hash) or len(password) > MAX_PASSWORD:
        return False
    try:
        return check_password_hash(password_hash, password)
    except (ValueError, TypeError):
        return False


# -- the signing key -----------------------------------------------------------------------------


def load_secret(state_dir: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The session signing key from the state directory, made there (0600) the first time.

    Returns (key, problem): when the directory cannot hold it, a key for this run only and why
    (sessions then end with the daemon)."""
    path = Path(state_dir) / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= SECRET_BYTES:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, 0o600)
                log.warning("status page key %s was readable by others: now 0600", path)
            return data[:SECRET_BYTES], ""
        log.warning("status page key %s is damaged: making a new one", path)
    except FileNotFoundError:
        pass
    except OSError as e:
        return secrets.token_bytes(SECRET_BYTES), f"cannot read {path}: {e.strerror or e}"
    key = secrets.token_bytes(SECRET_BYTES)
    try:
        atomic_write(path, key, mode=0o600)
    except OSError as e:
        return key, f"cannot write {path}: {e.strerror or e}"
    return key, ""


# -- sessions ------------------------------------------------------------------------------------


class Sessions:
    """What a valid session cookie holds, and the ids revoked by logout (bounded)."""

    MAX_REVOKED = 1024

    def __init__(
        self,
        secret: bytes,
        lifetime: float = SESSION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.lifetime = lifetime
        self.clock = clock
        self._revoked: dict[str, float] = {}  # session id -> when it would have expired anyway
        self._lock = threading.Lock()

    def tag(self, password_hash: str) -> str:
        """Binds a session to the password it was opened with, without revealing the hash."""
        return hmac.new(self.secret, password_hash.encode(), "sha256").hexdigest()[:32]

    def login(self, session: MutableMapping[str, Any], password_hash: str) -> None:
        """Start a fresh session (new id and CSRF token: nothing from before the login stays)."""
        session.clear()
        session["sid"] = secrets.token_urlsafe(24)
        session["csrf"] = secrets.token_urlsafe(32)
        session["iat"] = self.clock()
        session["pw"] = self.tag(password_hash)

    def valid(self, session: MutableMapping[str, Any], password_hash: str) -> bool:
        sid, iat, pw = session.get("sid"), session.get("iat"), session.get("pw")
        if not isinstance(sid, str) or not isinstance(pw, str):
            return False
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            return False
        now = self.clock()
        if not iat <= now < iat + self.lifetime:
            return False
        if not password_hash or not hmac.compare_digest(pw, self.tag(password_hash)):
            return False
        with self._lock:
            return sid not in self._revoked

    def logout(self, session: MutableMapping[str, Any]) -> None:
        sid, iat = session.get("sid"), session.get("iat")
        session.clear()
        if not isinstance(sid, str) or not isinstance(iat, int | float):
            return
        now = self.clock()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}
            if len(self._revoked) >= self.MAX_REVOKED:  # drop those that end soonest
                keep = sorted(self._revoked.items(), key=lambda kv: kv[1])
                self._revoked = dict(keep[len(keep) - self.MAX_REVOKED + 1 :])
            self._revoked[sid] = iat + self.lifetime


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, made on first use (the login form has one before any login)."""
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: MutableMapping[str, Any], submitted: str | None) -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


# -- login rate limit ----------------------------------------------------------------------------


def client_key(address: str | None) -> str:
    """Whom to count failures against: the IPv4 address, or the IPv6 /64 (one host can pick any
    address in its /64)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "?"
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """At most `per_client` failed logins per client in any `window` seconds, and `overall` in
    all; memory bounded by `max_clients` (least recently failing clients forgotten first; the
    overall cap still holds for them)."""

    def __init__(
        self,
        per_client: int = 5,
        overall: int = 100,
        window: float = 900.0,
        max_clients: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=overall)
        self._lock = threading.Lock()
        self.refused = 0

    def _wait(self, times: deque[float], now: float) -> float:
        if times.maxlen is None or len(times) < times.maxlen:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def retry_after(self, address: str | None) -> float:
        """Seconds until this client may try a password again (0: now)."""
        now = self.clock()
        with self._lock:
            times = self._clients.get(client_key(address))
            wait = max(self._wait(self._all, now), self._wait(times, now) if times else 0.0)
            if wait:
                self.refused += 1
            return wait

    def failed(self, address: str | None) -> None:
        now = self.clock()
        key = client_key(address)
        with self._lock:
            times = self._clients.pop(key, None) or deque(maxlen=self.per_client)
            times.append(now)
            self._clients[key] = times
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            self._all.append(now)

    def succeeded(self, address: str | None) -> None:
        with self._lock:
            self._clients.pop(client_key(address), None)

    def __len__(self) -> int:
        return len(self._clients)
