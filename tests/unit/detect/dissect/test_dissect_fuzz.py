"""100 000 random, truncated and mutated inputs through `Dissectors`: no parser may raise.

`Dissectors` catches exceptions (a parser bug must not cost a packet), so the parsers it calls
are wrapped here to record any exception before it is swallowed. Seeds are real and crafted
messages of each protocol; QUIC seeds are also mutated *inside* the encryption (mutate the
plaintext, then protect it) so the frame walk and hello parser behind the AEAD get fuzzed too.
Set WATCHPOST_FUZZ_SEED to try another seed.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from appliance.detect import dissect
from appliance.detect.dissect.quic import build_initial
from tests.unit.detect.dissect.build import (
    RFC_PAYLOAD,
    RFC_PROTECTED,
    client_hello,
    client_payloads,
    crypto_frame,
    default_extensions,
    ext,
    records,
)
from tests.unit.detect.dissect.capture import HANDSHAKES

TOTAL = 100_000
QUIC_INNER = 2_000  # of the QUIC share: plaintext mutations re-protected (slower to make)


def _seeds() -> dict[str, list[bytes]]:
    dns = [
        bytes(DNS(id=1, rd=1, qd=DNSQR(qname="www.example.com"))),
        bytes(
            DNS(
                id=2,
                qr=1,
                qd=DNSQR(qname="www.example.com"),
                an=[
                    DNSRR(rrname="www.example.com", type="CNAME", rdata="web.example.com"),
                    DNSRR(rrname="web.example.com", rdata="203.0.113.10"),
                    DNSRR(rrname="web.example.com", type="AAAA", rdata="2001:db8::1"),
                    DNSRR(rrname="web.example.com", type="MX", rdata=b"\x00\x0a\xc0\x0c"),
                    DNSRR(rrname="web.example.com", type="TXT", rdata=["x" * 40]),
                ],
            ).compress()
        ),
        *client_payloads(HANDSHAKES, 53).values(),
    ]
    tls = [
        *(p for p in client_payloads(HANDSHAKES, 443).values() if p[:1] == b"\x16"),
        records(client_hello([0x0A0A, 0x1301], default_extensions()), sizes=[30, 60]),
        records(client_hello([0x1301], [ext(0x0010, b"\x00\x03\x02h2")])),
    ]
    http = [
        *client_payloads(HANDSHAKES, 80).values(),
        b"GET /a?b=c HTTP/1.0\nHost: x\nAuthorization: Basic YTpi\n\n",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: c\r\n\r\n",  # pipelined
    ]
    hello = client_hello([0x1301, 0x1302], default_extensions(sni="q.example.com", alpn=(b"h3",)))
    frames = crypto_frame(40, hello[40:]) + b"\x01" + crypto_frame(0, hello[:40])
    quic = [RFC_PROTECTED, build_initial(b"\x42" * 8, b"", frames + bytes(1100))]
    return {"dns": dns, "tls": tls, "http": http, "quic": quic}


def _mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> bytes:
    """One random change of `seed`: truncate, flip bits, insert/delete, clobber a length-like
    pair of bytes, splice with another seed, or plain random bytes."""
    choice = rng.randrange(8)
    data = bytearray(seed)
    if choice == 0 or not data:
        return rng.randbytes(rng.randrange(0, 1600))
    if choice == 1:
        return bytes(data[: rng.randrange(len(data) + 1)])
    if choice == 2:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 3:
        at = rng.randrange(len(data) + 1)
        return bytes(data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:])
    if choice == 4:
        at = rng.randrange(len(data))
        return bytes(data[:at] + data[at + rng.randint(1, 16) :])
    if choice == 5:
        at = rng.randrange(max(1, len(data) - 1))
        data[at : at + 2] = rng.choice([b"\x00\x00", b"\xff\xff", b"\xc0\x0c", b"\x3f\xff"])
        return bytes(data)
    if choice == 6:
        other = rng.choice(others)
        return bytes(data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :])
    return bytes(data[: rng.randrange(len(data) + 1)] + rng.randbytes(rng.randrange(64)))


def _quic_inner(rng: random.Random) -> bytes:
    """A client Initial whose *plaintext* was mutated, protected again so it decrypts."""
    plain = bytearray(RFC_PAYLOAD)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(0, 260)  # inside the CRYPTO frame and the hello
        plain[at] = rng.randrange(256)
    return build_initial(rng.randbytes(rng.randint(0, 20)), b"", bytes(plain), pn=rng.randrange(4))


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes, BaseException]]:
    """Wrap the parsers `Dissectors` calls so exceptions are recorded before it hides them."""
    errors: list[tuple[str, bytes, BaseException]] = []

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(data: bytes, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(data, *args, **kwargs)
            except BaseException as e:
                errors.append((name, bytes(data), e))
                raise

        return wrapped

    for name in ("parse_dns", "parse_client_hello", "parse_initial", "parse_requests"):
        monkeypatch.setattr(dissect, name, wrap(name, getattr(dissect, name)))
    return errors


def test_fuzz_dissectors_never_raise(recording: list[tuple[str, bytes, BaseException]]) -> None:
    rng = random.Random(int(os.environ.get("WATCHPOST_FUZZ_SEED", "20261127")))
    seeds = _seeds()
    everything = [s for group in seeds.values() for s in group]
    d = dissect.Dissectors()
    calls = {
        "dns": lambda b: d.dns(b, tcp=False),
        "dns-tcp": lambda b: d.dns(struct.pack("!H", len(b)) + b, tcp=True),
        "tls": d.tls,
        "http": d.http,
        "quic": d.quic,
    }
    kinds = list(calls)
    records = 0
    for i in range(TOTAL):
        kind = kinds[i % len(kinds)]
        group = seeds["dns" if kind.startswith("dns") else kind]
        if kind == "quic" and i // len(kinds) < QUIC_INNER:
            data = _quic_inner(rng)
        else:
            data = _mutate(rng, rng.choice(group), everything)
        rec = calls[kind](data)
        if rec is not None:
            records += 1
            eve = rec.eve()  # every record renders; nothing in it but plain JSON types
            assert isinstance(eve, dict) and len(repr(eve)) < 20_000
    print("parsed", dict(d.parsed), "malformed", dict(d.malformed))
    assert not recording, recording[:3]
    assert sum(d.parsed.values()) + sum(d.malformed.values()) == TOTAL
    assert sum(d.parsed.values()) == records
    # The mutations must reach deep into every parser, not die at the first check.
    for name in ("dns", "tls", "http", "quic"):
        assert d.parsed[name] > 200, (name, d.parsed)
        assert d.malformed[name] > 200, (name, d.malformed)
