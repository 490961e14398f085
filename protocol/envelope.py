"""Signed command envelopes: the one format the hub uses to tell a device what to do.

An envelope is ``{"id", "device", "for", "cmd", "args", "seq", "issued_at", "expires_at",
"sig"}``; ``sig`` is an Ed25519 signature (standard base64) by the hub's command key over the
canonical JSON of every other field: keys sorted, separators ``,`` and ``:``, UTF-8 with
non-ASCII kept as is, no NaN/Infinity. The device re-serialises what it parsed and verifies
that, so whitespace or key order on the wire never matters, while any change of a value does.

``for`` binds an envelope to its purpose, inside the signature: ``"cmd"`` is a one-shot command
(published on ``cmd``, short expiry, ordered by `seq`), ``"desired"`` a desired config
(retained on ``config/desired``, `seq` is its version, a long expiry); the device refuses an
envelope on the other topic (`WRONG_PURPOSE`). Use `make` and `make_desired`.

`issued_at`/`expires_at` are integer Unix seconds. A Pi has no RTC: until its clock is
synchronised the device enforces expiry against a persisted time floor (the latest `issued_at`
it accepted, or the synchronised time it last saw). `seq` is the hub's per-device counter (issue
time in ms).

Every string (keys included) must be valid Unicode without lone surrogates, and nesting is
bounded (`MAX_DEPTH`), so that every payload either parses into an envelope or is refused with
a reason; nothing in here raises anything but EnvelopeError on bad input.

The same canonical form and key signs other hub documents (an intel bundle's manifest), through
`sign_document`/`verify_document`. Keys are PEM: PKCS#8 private, SubjectPublicKeyInfo public.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_ENVELOPE_BYTES = 64 * 1024
FIELDS = ("id", "device", "for", "cmd", "args", "seq", "issued_at", "expires_at", "sig")
SIGNED_FIELDS = FIELDS[:-1]
MAX_SEQ = (1 << 63) - 1
SIG_BYTES = 64
MAX_DEPTH = 32  # nesting of objects/arrays in an envelope

# What an envelope is for (its signed "for" field).
FOR_COMMAND = "cmd"  # a one-shot command on the `cmd` topic
FOR_DESIRED = "desired"  # a desired config on the retained `config/desired` topic
PURPOSES = (FOR_COMMAND, FOR_DESIRED)
COMMAND_TTL = 300  # seconds a one-shot command stays valid
DESIRED_TTL = 30 * 86400  # ... and a desired config

# Rejection kinds (the `code` of an answer); the message always says more.
MALFORMED = "malformed"
TOO_LARGE = "too-large"
UNSIGNED = "unsigned"
FORGED = "forged"
WRONG_DEVICE = "wrong-device"
EXPIRED = "expired"
REPLAYED = "replayed"
UNKNOWN = "unknown-command"
WRONG_PURPOSE = "wrong-purpose"
STALE = "stale"  # a desired config whose version is not above the applied one
FUTURE = "future"  # issued_at beyond the device's synchronised clock (+ MAX_SKEW)
MAX_SKEW = 300  # seconds an envelope's issued_at may be ahead of a synchronised device clock


class EnvelopeError(ValueError):
    """An envelope that must be rejected; `code` is one of the kinds above."""

    def __init__(self, code: str, message: str, envelope_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.envelope_id = envelope_id


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, unreadable, not an Ed25519 PEM key)."""


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of `obj` (what signatures cover)."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError, RecursionError) as e:
        raise EnvelopeError(MALFORMED, f"not representable as canonical JSON: {e}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(MALFORMED, "malformed: a string holds a lone surrogate") from None


def signing_bytes(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON of `doc` without its `sig` field."""
    return canonical({k: v for k, v in doc.items() if k != "sig"})


def sign_document(doc: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `doc` with `sig` set over the canonical JSON of its other fields."""
    out = {k: v for k, v in doc.items() if k != "sig"}
    out["sig"] = base64.b64encode(key.sign(signing_bytes(out))).decode("ascii")
    return out


def verify_document(doc: Mapping[str, Any], keys: Sequence[Ed25519PublicKey], what: str) -> None:
    """Raise EnvelopeError (unsigned/forged) unless `doc["sig"]` verifies with one of `keys`."""
    sig = doc.get("sig")
    if sig is None or sig == "":
        raise EnvelopeError(UNSIGNED, f"unsigned: {what} has no sig")
    if not isinstance(sig, str):
        raise EnvelopeError(MALFORMED, f"malformed: {what} sig must be a base64 string")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(FORGED, f"forged: {what} sig is not valid base64") from None
    if len(raw) != SIG_BYTES:
        raise EnvelopeError(FORGED, f"forged: {what} sig is {len(raw)} bytes, not {SIG_BYTES}")
    if not keys:
        raise EnvelopeError(FORGED, f"forged: no command key is configured to verify {what}")
    data = signing_bytes(doc)
    for key in keys:
        try:
            key.verify(raw, data)
            return
        except InvalidSignature:
            continue
    raise EnvelopeError(FORGED, f"forged: {what} signature does not verify with the command key")


def make(
    device: str,
    cmd: str,
    args: Mapping[str, Any] | None,
    key: Ed25519PrivateKey,
    *,
    seq: int,
    ttl: int = COMMAND_TTL,
    issued_at: int | None = None,
    envelope_id: str | None = None,
    purpose: str = FOR_COMMAND,
) -> dict[str, Any]:
    """A signed one-shot command envelope (the operator side); see `make_desired` too."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
    now = int(time.time()) if issued_at is None else issued_at
    env = {
        "id": envelope_id or uuid.uuid4().hex,
        "device": device,
        "for": purpose,
        "cmd": cmd,
        "args": dict(args or {}),
        "seq": seq,
        "issued_at": now,
        "expires_at": now + ttl,
    }
    return sign_document(env, key)


def make_desired(
    device: str,
    changes: Mapping[str, Any],
    key: Ed25519PrivateKey,
    *,
    version: int,
    ttl: int = DESIRED_TTL,
    issued_at: int | None = None,
) -> dict[str, Any]:
    """A signed desired config (retained on ``config/desired``): a ``set-config`` valid only
    there, with `version` (which must grow with every new desired config) as its seq."""
    return make(
        device,
        "set-config",
        changes,
        key,
        seq=version,
        ttl=ttl,
        issued_at=issued_at,
        purpose=FOR_DESIRED,
    )


def encode(env: Mapping[str, Any]) -> bytes:
    """Wire form of an envelope (canonical JSON, sig included)."""
    return canonical(dict(env))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _safe_id(v: Any) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= 128 else None


def _text_problem(obj: Any) -> str:
    """Why `obj` (parsed JSON) cannot be signed canonically: a lone surrogate in a string or a
    key, or nesting deeper than MAX_DEPTH; "" when it can."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (not valid Unicode)"
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return ""


def parse(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode and shape-check an envelope; raise EnvelopeError (too-large/malformed/unsigned).

    The signature itself is checked by `verify_document`; this only proves that every field is
    present, of the right type, and that nothing else is there. Whatever the payload, the only
    exception is EnvelopeError.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise EnvelopeError(MALFORMED, "malformed: the payload is not bytes")
    size = len(payload)
    if size > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(
            TOO_LARGE, f"too large: {size} bytes (limit {MAX_ENVELOPE_BYTES})", None
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise EnvelopeError(MALFORMED, f"malformed: not UTF-8 ({e.reason})") from None
    try:
        env = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise EnvelopeError(MALFORMED, f"malformed: not JSON ({e})") from None
    if not isinstance(env, dict):
        raise EnvelopeError(MALFORMED, "malformed: envelope must be a JSON object")
    text_problem = _text_problem(env)
    eid = _safe_id(env.get("id"))
    if eid is not None and _text_problem(eid):
        eid = None  # not even the id can go back in an answer
    if text_problem:
        raise EnvelopeError(MALFORMED, f"malformed: {text_problem}", eid)
    extra = sorted(set(env) - set(FIELDS))
    if extra:
        raise EnvelopeError(MALFORMED, f"malformed: unexpected field(s) {', '.join(extra)}", eid)
    missing = [f for f in SIGNED_FIELDS if f not in env]
    if missing:
        raise EnvelopeError(MALFORMED, f"malformed: missing field(s) {', '.join(missing)}", eid)
    problems = []
    if eid is None:
        problems.append("id must be a string of 1-128 characters")
    dev = env["device"]
    if not (
        isinstance(dev, str) and 0 < len(dev) <= 64 and all(c.isalnum() or c in "-_." for c in dev)
    ):
        problems.append("device must be a device id (1-64 letters, digits, '-', '_', '.')")
    cmd = env["cmd"]
    if not (
        isinstance(cmd, str) and 0 < len(cmd) <= 64 and all(c.isalnum() or c in "-_" for c in cmd)
    ):
        problems.append("cmd must be a command name")
    if not isinstance(env["args"], dict):
        problems.append("args must be an object")
    if env["for"] not in PURPOSES:
        problems.append(f"for must be one of {', '.join(repr(p) for p in PURPOSES)}")
    for name in ("seq", "issued_at", "expires_at"):
        v = env[name]
        if not _is_int(v) or not 0 <= v <= MAX_SEQ:
            problems.append(f"{name} must be a non-negative integer")
    if not problems and env["expires_at"] < env["issued_at"]:
        problems.append("expires_at is before issued_at")
    if problems:
        raise EnvelopeError(MALFORMED, "malformed: " + "; ".join(problems), eid)
    if "sig" not in env or env["sig"] in (None, ""):
        raise EnvelopeError(UNSIGNED, "unsigned: the envelope has no sig", eid)
    if not isinstance(env["sig"], str):
        raise EnvelopeError(MALFORMED, "malformed: sig must be a base64 string", eid)
    return env


def verify(env: Mapping[str, Any], keys: Sequence[Ed25519PublicKey]) -> None:
    """Raise EnvelopeError unless the envelope's signature verifies with one of `keys`."""
    try:
        verify_document(env, keys, "envelope")
    except EnvelopeError as e:
        e.envelope_id = _safe_id(env.get("id"))
        raise


# --- keys -------------------------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A new command key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path}: is a directory") from None
    except PermissionError:
        raise KeyFileError(f"{what} {path}: permission denied") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read(path, "command key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(
            f"command key {path}: not an unencrypted PEM private key ({e})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"command key {path}: not an Ed25519 key")
    return key


_PEM_BEGIN = b"-----BEGIN PUBLIC KEY-----"


def public_keys_from_pem(data: bytes, source: str = "key") -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM text (several allow a key rollover)."""
    blocks = [_PEM_BEGIN + part for part in data.split(_PEM_BEGIN)[1:]]
    if not blocks:
        raise KeyFileError(f"{source}: no PEM public key in it")
    keys: list[Ed25519PublicKey] = []
    for i, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as e:
            raise KeyFileError(f"{source}: public key #{i} is not valid PEM ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source}: public key #{i} is not an Ed25519 key")
        keys.append(key)
    return keys


def load_public_keys(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    return public_keys_from_pem(_read(path, "command public key"), f"command public key {path}")


def public_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
