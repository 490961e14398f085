"""Canonical JSON, Ed25519 signing/verification and the envelope shape checks."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import envelope as E

# RFC 8032 section 7.1, test 1: a fixed key makes the signature vector reproducible elsewhere.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


@pytest.fixture(scope="module")
def rfc_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(RFC_SEED)


def test_canonical_vectors() -> None:
    assert E.canonical({"b": 1, "a": "é", "c": [1, 2, {"z": None, "y": True}]}) == (
        '{"a":"é","b":1,"c":[1,2,{"y":true,"z":null}]}'.encode()
    )
    # Non-ASCII stays UTF-8 (not \u escapes); nested keys are sorted; no whitespace.
    assert E.canonical({"k": "日本", "a": {"d": 1.5, "c": -2}}) == (
        b'{"a":{"c":-2,"d":1.5},"k":"\xe6\x97\xa5\xe6\x9c\xac"}'
    )
    assert E.canonical('x\n"') == b'"x\\n\\""'
    with pytest.raises(E.EnvelopeError):
        E.canonical({"x": float("nan")})


def test_signing_bytes_leave_out_sig() -> None:
    doc = {"seq": 1, "sig": "whatever", "id": "a"}
    assert E.signing_bytes(doc) == b'{"id":"a","seq":1}'


ENV_FIELDS = {
    "id": "0001",
    "device": "dev1",
    "cmd": "ping",
    "args": {},
    "seq": 1700000000000,
    "issued_at": 1700000000,
    "expires_at": 1700000300,
}
ENV_CANONICAL = (
    b'{"args":{},"cmd":"ping","device":"dev1","expires_at":1700000300,"id":"0001",'
    b'"issued_at":1700000000,"seq":1700000000000}'
)


def test_signature_vector_matches_openssl(rfc_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    """The signature covers exactly the hand-written canonical bytes (checked by openssl)."""
    signed = E.sign_document(ENV_FIELDS, rfc_key)
    assert E.signing_bytes(signed) == ENV_CANONICAL
    keyfile = tmp_path / "k.pem"
    keyfile.write_bytes(
        rfc_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    msg = tmp_path / "msg"
    msg.write_bytes(ENV_CANONICAL)
    out = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(keyfile), "-in", str(msg)],
        capture_output=True,
        check=True,
    ).stdout
    assert base64.b64decode(signed["sig"]) == out
    assert rfc_key.public_key().public_bytes_raw() == RFC_PUBLIC


def test_make_parse_verify_roundtrip() -> None:
    key = Ed25519PrivateKey.generate()
    env = E.make("dev1", "block", {"address": "203.0.113.66"}, key, seq=5, ttl=60, issued_at=100)
    assert env["expires_at"] == 160 and env["seq"] == 5 and len(env["id"]) == 32
    parsed = E.parse(E.encode(env))
    E.verify(parsed, [key.public_key()])
    # Whitespace and key order on the wire do not matter.
    pretty = json.dumps(dict(reversed(list(env.items()))), indent=2).encode()
    E.verify(E.parse(pretty), [key.public_key()])


def test_verify_tries_every_key_for_rollover() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    env = E.make("dev1", "ping", {}, new, seq=1)
    E.verify(env, [old.public_key(), new.public_key()])
    with pytest.raises(E.EnvelopeError) as e:
        E.verify(env, [old.public_key()])
    assert e.value.code == E.FORGED


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda e: e.pop("sig"), E.UNSIGNED, "no sig"),
        (lambda e: e.update(sig=""), E.UNSIGNED, "no sig"),
        (lambda e: e.update(sig=None), E.UNSIGNED, "no sig"),
        (lambda e: e.update(sig=5), E.MALFORMED, "sig must be"),
        (lambda e: e.update(seq="5"), E.MALFORMED, "seq must be"),
        (lambda e: e.update(seq=True), E.MALFORMED, "seq must be"),
        (lambda e: e.update(seq=-1), E.MALFORMED, "seq must be"),
        (lambda e: e.update(issued_at=1.5), E.MALFORMED, "issued_at must be"),
        (lambda e: e.update(args=[]), E.MALFORMED, "args must be an object"),
        (lambda e: e.update(cmd=""), E.MALFORMED, "cmd must be"),
        (lambda e: e.update(device="a/b"), E.MALFORMED, "device must be"),
        (lambda e: e.update(id=7), E.MALFORMED, "id must be"),
        (lambda e: e.update(expires_at=1), E.MALFORMED, "before issued_at"),
        (lambda e: e.pop("seq"), E.MALFORMED, "missing field(s) seq"),
        (lambda e: e.update(extra=1), E.MALFORMED, "unexpected field(s) extra"),
    ],
)
def test_parse_rejects_bad_shapes(mutate, code: str, words: str) -> None:
    env = E.make("dev1", "ping", {}, Ed25519PrivateKey.generate(), seq=1, issued_at=100)
    mutate(env)
    with pytest.raises(E.EnvelopeError) as e:
        E.parse(json.dumps(env).encode())
    assert e.value.code == code
    assert words in str(e.value)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"id": "a", "id": "b"}', "duplicate key"),
        (b'{"seq": NaN}', "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),
    ],
)
def test_parse_rejects_non_envelopes(payload: bytes, words: str) -> None:
    with pytest.raises(E.EnvelopeError) as e:
        E.parse(payload)
    assert e.value.code == E.MALFORMED
    assert words in str(e.value)


def test_parse_rejects_over_64_kib_before_decoding() -> None:
    with pytest.raises(E.EnvelopeError) as e:
        E.parse(b" " * (E.MAX_ENVELOPE_BYTES + 1))
    assert e.value.code == E.TOO_LARGE
    assert "65537 bytes" in str(e.value)


def test_forgeries_are_detected() -> None:
    key = Ed25519PrivateKey.generate()
    pub = [key.public_key()]
    env = E.make("dev1", "set-mode", {"mode": "monitor"}, key, seq=1)
    tampered = dict(env, args={"mode": "block"})
    flipped = bytearray(base64.b64decode(env["sig"]))
    flipped[0] ^= 1
    cases = [
        tampered,
        dict(env, sig=base64.b64encode(bytes(flipped)).decode()),
        dict(env, sig="!!!notbase64"),
        dict(env, sig=base64.b64encode(b"short").decode()),
        E.make("dev1", "set-mode", {"mode": "monitor"}, Ed25519PrivateKey.generate(), seq=1),
    ]
    for bad in cases:
        with pytest.raises(E.EnvelopeError) as e:
            E.verify(bad, pub)
        assert e.value.code == E.FORGED, bad
        assert e.value.envelope_id == bad["id"]
    with pytest.raises(E.EnvelopeError, match="no command key"):
        E.verify(env, [])


def test_key_files(tmp_path: Path) -> None:
    private, public = E.generate_keypair()
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    (tmp_path / "k").write_bytes(private)
    (tmp_path / "p").write_bytes(public + E.generate_keypair()[1])
    key = E.load_private_key(tmp_path / "k")
    keys = E.load_public_keys(tmp_path / "p")
    assert len(keys) == 2
    E.verify(E.make("d", "ping", {}, key, seq=1), keys)
    assert E.public_pem(key) == public

    with pytest.raises(E.KeyFileError, match="no such file"):
        E.load_public_keys(tmp_path / "missing")
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(E.KeyFileError, match="no PEM public key"):
        E.load_public_keys(tmp_path / "junk")
    with pytest.raises(E.KeyFileError, match="not an unencrypted PEM private key"):
        E.load_private_key(tmp_path / "junk")
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ec").write_bytes(ec_pub)
    with pytest.raises(E.KeyFileError, match="not an Ed25519 key"):
        E.load_public_keys(tmp_path / "ec")
