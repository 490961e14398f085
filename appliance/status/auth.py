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
- logins back off per client (an IPv4 address or an IPv6 /64), counted before the hash is
  checked, with bounded state; only one password check runs at a time; a hash's cost parameters
  are bounded (a pasted-in hash cannot make each login eat the Pi's memory).
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
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from protocol.files import atomic_write

log = logging.getLogger(__name__)

SECRET_FILE = "status-secret.key"
SECRET_BYTES = 32
SESSION_LIFETIME = 8 * 3600.0  # seconds a login lasts, whatever the activity
MIN_PASSWORD = 10
MIN_DISTINCT = 5
MAX_PASSWORD = 1024
HASH_METHODS = ("scrypt", "pbkdf2")
MAX_SCRYPT_N = 2**17
MAX_SCRYPT_MEMORY = 128 * 1024 * 1024  # bytes scrypt may use for one check
MAX_PBKDF2_ROUNDS = 2_000_000
PAGE_HASH = "scrypt:32768:8:1"  # what a password set on the page is hashed with (32 MiB)


# -- password ------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """The value for ``status.password_hash`` (werkzeug's scrypt)."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    return generate_password_hash(password, method=PAGE_HASH)


PASSWORD_RULES = (
    f"at least {MIN_PASSWORD} characters (a few words in a row are easy to remember)",
    f"at least {MIN_DISTINCT} different characters",
    "not a well-known password such as password123 or qwertyuiop",
    "no spaces at the start or the end",
)
COMMON = frozenset(
    {
        "password", "password1", "password12", "password123", "password1234", "qwertyuiop",
        "1234567890", "12345678910", "0987654321", "iloveyou12", "letmein123", "welcome123",
        "administrator", "changeme123", "watchpost", "watchpost1", "qwerty12345", "abc1234567",
    }
)  # fmt: skip


def password_problem(password: str) -> str:
    """Why `password` is not acceptable as the page's password ("" when it is)."""
    if len(password) < MIN_PASSWORD:
        return f"the password needs at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password may have at most {MAX_PASSWORD} characters"
    if password != password.strip():
        return "the password must not start or end with spaces"
    if len(set(password)) < MIN_DISTINCT:
        return f"the password needs at least {MIN_DISTINCT} different characters"
    if password.lower() in COMMON:
        return "that password is on every attacker's list: pick another"
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
    return _cost_problem(parts[0])


def _cost_problem(head: str) -> str:
    """Why the hash's cost parameters are out of bounds ("" when within): a hash pasted in with
    huge parameters would make every login a denial of service on the Pi."""
    method, _, params = head.partition(":")
    try:
        if method == "scrypt":
            n, r, p = (int(x) for x in params.split(":")) if params else (2**15, 8, 1)
            if n < 2 or n & (n - 1) or n > MAX_SCRYPT_N or not 1 <= r <= 16 or not 1 <= p <= 4:
                return (
                    f"scrypt parameters out of bounds (N a power of two up to {MAX_SCRYPT_N}, "
                    "r 1-16, p 1-4)"
                )
            if 128 * n * r * p > MAX_SCRYPT_MEMORY:
                return "scrypt parameters need too much memory"
        else:
            hash_name, _, rounds = params.partition(":")
            if rounds and not 1 <= int(rounds) <= MAX_PBKDF2_ROUNDS:
                return f"pbkdf2 rounds out of bounds (at most {MAX_PBKDF2_ROUNDS})"
            if hash_name and hash_name not in ("sha256", "sha512"):
                return f"pbkdf2 hash {hash_name[:20]!r} is not allowed (sha256 or sha512)"
    except ValueError:
        return "not a hash made by `watchpost passwd` (damaged parameters)"
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
    """Per-client back-off: after `free` attempts that did not succeed, a client waits 1 s, then
    2, 4, ... up to `max_wait` before its next try. There is no global lock-out (one LAN host
    could lock the owner out with one): each client only slows itself down. An attempt counts
    when it starts (`begin`), before the password is hashed, so concurrent tries cannot slip
    past; a success clears the client. Memory is bounded by `max_clients` (least recently seen
    first out) and a client quiet for `forget` seconds starts afresh."""

    def __init__(
        self,
        free: int = 3,
        max_wait: float = 900.0,
        forget: float = 3600.0,
        max_clients: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.max_wait = max_wait
        self.forget = forget
        self.max_clients = max_clients
        self.clock = clock
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # tries, last try
        self._lock = threading.Lock()
        self.refused = 0

    def _wait(self, key: str, now: float) -> float:
        entry = self._clients.get(key)
        if entry is None:
            return 0.0
        tries, last = entry
        if now - last > self.forget:
            del self._clients[key]
            return 0.0
        if tries < self.free:
            return 0.0
        delay = min(self.max_wait, 2.0 ** (tries - self.free))
        return max(0.0, last + delay - now)

    def retry_after(self, address: str | None) -> float:
        """Seconds until this client may try again (0: now)."""
        with self._lock:
            return self._wait(client_key(address), self.clock())

    def begin(self, address: str | None) -> float:
        """Start an attempt: 0 and the attempt is counted, or the seconds to wait (refused)."""
        now = self.clock()
        key = client_key(address)
        with self._lock:
            wait = self._wait(key, now)
            if wait:
                self.refused += 1
                return wait
            tries, _ = self._clients.pop(key, (0, now))
            self._clients[key] = (tries + 1, now)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            return 0.0

    def succeeded(self, address: str | None) -> None:
        with self._lock:
            self._clients.pop(client_key(address), None)

    def __len__(self) -> int:
        return len(self._clients)


class PasswordGate:
    """At most one password (or setup code) check at a time: scrypt costs memory and CPU, and a
    flood of logins must not take them from the packet path. A second caller does not queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.acquire(blocking=False)

    def try_enter(self) -> bool:
        return self._lock.acquire(blocking=False)

    def leave(self) -> None:
        self._lock.release()
