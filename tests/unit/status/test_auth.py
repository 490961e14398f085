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
    PasswordGate,
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
    [
        ("short", "at least 10"),
        ("aaaaabbbbbb", "different characters"),
        ("Password123", "every attacker"),
        ("x" * 1025, "at most 1024"),
        (" padded password", "spaces"),
    ],
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


def test_limiter_backs_off_per_client_without_a_global_lock_out() -> None:
    clock = Clock()
    lim = LoginLimiter(free=3, max_wait=900.0, forget=3600.0, clock=clock)
    a, b = "198.18.0.11", "198.18.0.12"
    for _ in range(3):
        assert lim.begin(a) == 0  # counted when it starts, before any hashing
    assert lim.begin(a) == pytest.approx(1.0)  # then 1 s, 2 s, 4 s ...
    assert lim.refused == 1
    clock.t += 1
    assert lim.begin(a) == 0
    assert lim.begin(a) == pytest.approx(2.0)
    clock.t += 2
    assert lim.begin(a) == 0
    assert lim.retry_after(a) == pytest.approx(4.0)
    for _ in range(50):  # a patient guesser: the wait stops growing at max_wait
        clock.t += lim.retry_after(a)
        lim.begin(a)
    assert lim.retry_after(a) == pytest.approx(900.0)
    # Thousands of tries from one host never lock another out.
    assert lim.begin(b) == 0
    lim.succeeded(a)
    assert lim.begin(a) == 0  # a success clears the client
    clock.t += 3601  # and a client quiet for an hour starts afresh
    assert lim.retry_after(b) == 0


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    lim = LoginLimiter(free=2, max_clients=100, clock=clock)
    for i in range(10_000):
        lim.begin(f"198.18.{i // 250}.{i % 250}")
    assert len(lim) == 100
    for _ in range(3):
        lim.begin("198.18.200.1")
    assert lim.retry_after("198.18.200.1") > 0


@pytest.mark.parametrize(
    "value, problem",
    [
        ("scrypt:1048576:8:1$salt$00", "out of bounds"),
        ("scrypt:32768:64:1$salt$00", "out of bounds"),
        ("scrypt:131072:16:4$salt$00", "too much memory"),
        ("scrypt:1000:8:1$salt$00", "out of bounds"),
        ("pbkdf2:sha256:99999999$salt$00", "rounds out of bounds"),
        ("pbkdf2:md5:1000$salt$00", "not allowed"),
    ],
)
def test_hash_parameters_are_bounded(value: str, problem: str) -> None:
    assert problem in hash_problem(value)
    assert check_password(value, "anything at all") is False


def test_the_page_hash_is_within_bounds() -> None:
    assert hash_problem(hash_password("correct horse battery")) == ""


def test_one_password_check_at_a_time() -> None:
    gate = PasswordGate()
    assert gate.try_enter()
    assert not gate.try_enter()  # a second caller does not queue
    gate.leave()
    assert gate.try_enter()
    gate.leave()
