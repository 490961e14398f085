"""Dissector cost per packet (µs) against scapy parsing the same payloads, side by side.

Payloads are what the kernel queues to Python: DNS queries and answers, a browser-like TLS
ClientHello (GREASE, 16 extensions, JA3 + JA4 computed), the same hello in a QUIC v1 Initial
(key derivation, header protection, AES-GCM, CRYPTO frames, hello), and an HTTP/1.1 GET.
Our figures go through `Dissectors` (the engine's entry point). scapy's: `DNS(...)`,
`TLS(...)`, `HTTP(...)`, and for QUIC only `QUIC(...)`'s header dissection (scapy cannot
decrypt Initials, so that baseline does far less work than ours).
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.http import HTTP
from scapy.layers.quic import QUIC
from scapy.layers.tls.record import TLS

from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.quic import build_initial

NAMES = ["www.example.com", "mail.example.org", "cdn.assets.example.net", "a1b2c3.example.com"]


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def _list16(values: list[int]) -> bytes:
    body = struct.pack(f"!{len(values)}H", *values)
    return struct.pack("!H", len(body)) + body


def browser_hello(sni: str, quic: bool = False) -> bytes:
    """A ClientHello handshake message shaped like a current browser's (no record layer)."""
    host = sni.encode()
    alpn = b"\x02h3" if quic else b"\x02h2\x08http/1.1"
    exts = [
        _ext(0x1A1A, b""),  # GREASE
        _ext(0x0000, struct.pack("!HBH", len(host) + 3, 0, len(host)) + host),
        _ext(0x0017, b""),
        _ext(0xFF01, b"\x00"),
        _ext(0x000A, _list16([0x2A2A, 0x001D, 0x0017, 0x0018])),
        _ext(0x000B, b"\x01\x00"),
        _ext(0x0023, b""),
        _ext(0x0010, struct.pack("!H", len(alpn)) + alpn),
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),
        _ext(0x000D, _list16([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601])),
        _ext(0x0012, b""),
        _ext(0x0033, struct.pack("!HHH", 38, 0x001D, 32) + bytes(range(32))),
        _ext(0x002D, b"\x01\x01"),
        _ext(0x002B, b"\x06\x3a\x3a\x03\x04\x03\x03"),
        _ext(0x001B, b"\x02\x00\x02"),
        _ext(0x4469, b"\x00\x03\x02h2"),
        _ext(0x0039 if quic else 0x0015, bytes(12)),
        _ext(0x4A4A, b"\x00"),  # GREASE
    ]
    ciphers = [0x5A5A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9]
    ciphers += [0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    body = b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32)
    body += _list16(ciphers) + b"\x01\x00"
    ext_block = b"".join(exts)
    body += struct.pack("!H", len(ext_block)) + ext_block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def payloads() -> dict[str, list[bytes]]:
    """A few variants of each kind (different names, ids, connection IDs)."""
    out: dict[str, list[bytes]] = {"dns_query": [], "dns_answer": [], "tls": [], "quic": []}
    for i, name in enumerate(NAMES):
        out["dns_query"].append(bytes(DNS(id=i, rd=1, qd=DNSQR(qname=name))))
        answer = DNS(
            id=i,
            qr=1,
            rd=1,
            ra=1,
            qd=DNSQR(qname=name),
            an=[
                DNSRR(rrname=name, type="CNAME", ttl=300, rdata="edge.example.net"),
                DNSRR(rrname="edge.example.net", ttl=60, rdata=f"203.0.113.{10 + i}"),
                DNSRR(rrname="edge.example.net", ttl=60, rdata=f"198.51.100.{10 + i}"),
            ],
        )
        out["dns_answer"].append(bytes(answer.compress()))
        hello = browser_hello(name)
        out["tls"].append(b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello)
        qhello = browser_hello(name, quic=True)
        crypto = b"\x06\x00" + struct.pack("!H", 0x4000 | len(qhello)) + qhello
        dcid = bytes([i]) * 8
        out["quic"].append(
            build_initial(dcid, b"\x01\x02\x03\x04", crypto + bytes(1150 - len(crypto)))
        )
    out["http"] = [
        (
            f"GET /static/app{i}.js?v={i} HTTP/1.1\r\nHost: {name}\r\n"
            "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n"
            "Accept: */*\r\nAccept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, br\r\n"
            "Referer: http://www.example.com/\r\nCookie: sid=0123456789abcdef\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
        for i, name in enumerate(NAMES)
    ]
    return out


def us_per_call(fn: Callable[[bytes], Any], items: list[bytes], seconds: float) -> float:
    """µs per call of `fn` over `items`: the median over batches run for about `seconds`
    (the median, because this machine is shared and bursts of other work inflate a mean)."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        t1 = time.perf_counter()
        samples.append((t1 - t0) / len(items) * 1e6)
        if t1 >= deadline and len(samples) >= 5:
            return statistics.median(samples)


def run(quick: bool) -> dict[str, Any]:
    ours_s = 0.3 if quick else 1.5
    scapy_s = 0.3 if quick else 1.0
    d = Dissectors()
    data = payloads()
    ours: dict[str, Callable[[bytes], Any]] = {
        "dns_query": d.dns,
        "dns_answer": d.dns,
        "tls": d.tls,
        "quic": d.quic,
        "http": d.http,
    }
    theirs: dict[str, Callable[[bytes], Any]] = {
        "dns_query": DNS,
        "dns_answer": DNS,
        "tls": TLS,
        "quic": QUIC,
        "http": HTTP,
    }
    for kind, items in data.items():  # every payload must dissect, or the figure means nothing
        for item in items:
            if ours[kind](item) is None:
                raise RuntimeError(f"bench.dissect: a {kind} payload did not dissect")
    out: dict[str, Any] = {}
    for kind, items in data.items():
        mine = us_per_call(ours[kind], items, ours_s)
        base = us_per_call(theirs[kind], items, scapy_s)
        out[f"dissect_{kind}_us"] = round(mine, 2)
        out[f"scapy_{kind}_us"] = round(base, 1)
        out[f"dissect_vs_scapy_{kind}_ratio"] = round(base / mine, 1)
        print(f"bench.dissect: {kind}: {mine:.1f} µs vs scapy {base:.0f} µs", file=sys.stderr)
    out["scapy_quic_is_header_only"] = True
    return out
