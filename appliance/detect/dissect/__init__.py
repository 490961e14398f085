"""Dissectors for the few packets that carry names: DNS, TLS/QUIC ClientHello, HTTP/1 requests.

Hand-written over bytes because they run on the packet path (every DNS packet is queued);
scapy and tshark check them in the tests. Each parser returns a record or None; `Dissectors`
counts what was malformed and never lets an exception escape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from appliance.detect.dissect.dns import parse_dns
from appliance.detect.dissect.http import parse_requests
from appliance.detect.dissect.quic import (
    hello_from_crypto,
    initial_crypto,
    parse_initial,
    parse_initials,
)
from appliance.detect.dissect.tls import parse_client_hello
from appliance.detect.records import DnsMessage, HttpRequest, TlsHello

T = TypeVar("T")


class Dissectors:
    """The parsers, with counts of what they saw and what was malformed (for telemetry)."""

    def __init__(self) -> None:
        self.parsed: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()

    def _run(self, name: str, fn: Callable[[bytes], T | None], payload: bytes) -> T | None:
        try:
            rec = fn(payload)
        except Exception:  # a parser bug must not cost a packet; count it as malformed input
            rec = None
        if rec is None:
            self.malformed[name] += 1
        else:
            self.parsed[name] += 1
        return rec

    def dns(self, payload: bytes, tcp: bool = False) -> DnsMessage | None:
        return self._run("dns", lambda b: parse_dns(b, tcp=tcp), payload)

    def tls(self, payload: bytes) -> TlsHello | None:
        return self._run("tls", parse_client_hello, payload)

    def http(self, payload: bytes) -> HttpRequest | None:
        """The segment's first request head, the complete ones pipelined after it in its
        `pipelined`."""
        return self._run("http", parse_requests, payload)

    def quic(self, payload: bytes) -> TlsHello | None:
        return self._run("quic", parse_initial, payload)

    def quic_many(self, datagrams: list[bytes]) -> TlsHello | None:
        """The ClientHello from a connection's first Initial datagrams (a hello over several)."""
        return self._run("quic", lambda _: parse_initials(datagrams), b"")

    def quic_crypto(self, payload: bytes) -> list[tuple[int, bytes]]:
        """The CRYPTO chunks of one Initial datagram (decrypted once; [] if it does not)."""
        try:
            return initial_crypto(payload)
        except Exception:  # a parser bug must not cost a packet
            self.malformed["quic"] += 1
            return []

    def quic_hello(self, chunks: list[tuple[int, bytes]]) -> TlsHello | None:
        """The ClientHello in a connection's CRYPTO chunks so far."""
        return self._run("quic", lambda _: hello_from_crypto(chunks), b"")
