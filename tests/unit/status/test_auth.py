"""Passwords, the signing key, sessions and the login limiter, on their own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from werkzeug.security import generate_password_hash

from appliance.status.auth import (
    SECRET_BYTES,
    SECRET_FILE,
    LoginLimiter,
    Sessions,
    check_password,
    client_key,
    csrf_ok,
    csrf_token,
    hash_password,
    hash_problem,
    load_secret,
    password_problem,
)


def test_hash_and_check() -> None:
    h = hash_password("a long enough password")
    assert h.startswith("scrypt:") and hash_problem(h) == ""
    assert check_password(h, "a long enough password")
    assert not check_password(h, "a long enough passworD")
    assert not check_password(h, "")
    assert not check_password("", "")
    assert not check_password(h, "x" * 5000)
    pbkdf2 = generate_password_hash("another password", method="pbkdf2:sha256:1000")
    assert hash_problem(pbkdf2) == "" and check_password(pbkdf2, "another password")


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",
        "md5$salt$abcd",
        "scrypt:32768:8:1$salt",
        "scrypt:32768:8:1$$abcd",
        "scrypt:32768:8:1$salt$nothex",
        "scrypt:32768:8:1$a$b$c",
    ],
)
def test_unusable_hashes_are_named_and_never_match(value: str) -> None:
    assert "watchpost passwd" in hash_problem(value)
    assert not check_password(value, value)
    assert not check_password(value, "hunter2")


@pytest.mark.parametrize(
    ("password", "problem"),
    [("short", "at least 8"), ("x" * 1025, "at most 1024"), (" padded password", "spaces")],
)
def test_password_rules(password: str, problem: str) -> None:
    assert problem in password_problem(password)
    with pytest.raises(ValueError, match=problem):
        hash_password(password)


def test_secret_is_made_once_0600(tmp_path: Path) -> None:
    key, problem = load_secret(tmp_path)
    assert problem == "" and len(key) == SECRET_BYTES
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == (key, "")
    os.chmod(path, 0o644)  # someone loosened it
    assert load_secret(tmp_path) == (key, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")  # damaged: a new key
    fresh, problem = load_secret(tmp_path)
    assert problem == "" and fresh != key and len(fresh) == SECRET_BYTES


def test_secret_without_a_usable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    key, problem = load_secret(blocker / "state")
    assert len(key) == SECRET_BYTES and "cannot" in problem


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_session_lifetime_password_and_revocation() -> None:
    clock = Clock()
    s = Sessions(b"k" * 32, lifetime=100.0, clock=clock)
    sess: dict[str, object] = {"csrf": "from the login form"}
    s.login(sess, "hash-1")
    assert set(sess) == {"sid", "csrf", "iat", "pw"}
    assert sess["csrf"] != "from the login form"  # a fresh token after login
    assert s.valid(sess, "hash-1")
    assert not s.valid(sess, "hash-2")  # the password changed
    assert not s.valid(sess, "")
    clock.t += 99
    assert s.valid(sess, "hash-1")
    clock.t += 2
    assert not s.valid(sess, "hash-1")  # expired
    clock.t = 900.0
    assert not s.valid(sess, "hash-1")  # issued in the future: the clock went back
    clock.t = 1000.0
    copy = dict(sess)
    s.logout(sess)
    assert sess == {}
    assert not s.valid(copy, "hash-1")


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"sid": 1, "iat": 1000.0, "pw": "x"},
        {"sid": "a", "iat": "1000", "pw": "x"},
        {"sid": "a", "iat": True, "pw": "x"},
        {"sid": "a", "iat": 1000.0},
    ],
)
def test_malformed_sessions_are_not_valid(bad: dict[str, object]) -> None:
    s = Sessions(b"k" * 32, clock=Clock())
    bad = dict(bad)
    if "pw" in bad:
        bad["pw"] = s.tag("h")
    assert not s.valid(bad, "h")


def test_revocations_are_bounded() -> None:
    clock = Clock()
    s = Sessions(b"k" * 32, lifetime=1000.0, clock=clock)
    s.MAX_REVOKED = 10
    first = {}
    s.login(first, "h")
    copy_first = dict(first)
    s.logout(first)
    for _ in range(50):
        clock.t += 1
        sess: dict[str, object] = {}
        s.login(sess, "h")
        s.logout(sess)
    assert len(s._revoked) <= 10
    clock.t += 1000  # old revocations expire with the sessions themselves
    assert not s.valid(copy_first, "h")


def test_csrf_token() -> None:
    sess: dict[str, object] = {}
    token = csrf_token(sess)
    assert len(token) >= 32 and csrf_token(sess) == token
    assert csrf_ok(sess, token)
    assert not csrf_ok(sess, token + "x") and not csrf_ok(sess, "") and not csrf_ok(sess, None)
    assert not csrf_ok({}, token)
    assert not csrf_ok({"csrf": token}, "é" * 10)


def test_client_key() -> None:
    assert client_key("198.18.0.11") == "198.18.0.11"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:198.18.0.11") == "198.18.0.11"
    assert client_key(None) == "?"


def test_limiter_window_per_client_and_overall() -> None:
    clock = Clock()
    lim = LoginLimiter(per_client=3, overall=5, window=60.0, clock=clock)
    a, b, c = "198.18.0.11", "198.18.0.12", "198.18.0.13"
    for _ in range(3):
        assert lim.retry_after(a) == 0
        lim.failed(a)
        clock.t += 1
    assert lim.retry_after(a) == pytest.approx(57.0)
    assert lim.retry_after(b) == 0
    clock.t += 57
    assert lim.retry_after(a) == 0  # the oldest failure left the window
    lim.failed(b)
    lim.failed(b)
    lim.failed("198.18.0.14")
    assert lim.retry_after(c) > 0  # five failures in the last minute overall: everyone waits
    clock.t += 61
    assert lim.retry_after(c) == 0
    lim.succeeded(b)
    assert len(lim) == 2  # a and .14 remain


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    lim = LoginLimiter(per_client=2, overall=10**6, max_clients=100, clock=clock)
    for i in range(10_000):
        lim.failed(f"198.18.{i // 250}.{i % 250}")
    assert len(lim) == 100
    lim.failed("198.18.200.1")
    lim.failed("198.18.200.1")
    assert lim.retry_after("198.18.200.1") > 0
