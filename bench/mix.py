"""The honest office mix: sessions in the shares of a real office capture, with timestamps.

Shares of sessions (a 304 k-packet office capture, 26.6 k sessions): 53 % HTTPS (handshake,
browser-like ClientHello with SNI, server flight, a little data, FIN), 15 % DNS (query and an
answer with addresses), 11 % HTTP (GET, response, FIN), 11 % QUIC-like UDP/443 (a real protected
client Initial, server and short-header packets), 4 % NTP, 4 % ICMP echo (4 pairs), 2 % refused
TCP (SYN, RST): about 11 packets per session, as in the capture. Server names come from a pool of
a few hundred, clients from 50 office PCs, servers from the documentation ranges.

Templates are built once with scapy per (kind, name) and varied by patching addresses and ports
in the bytes (checksums are not recomputed: nothing here checks them), so a million packets cost
seconds. `write_pcap` writes Ethernet pcap with plain `struct` (scapy's writer is too slow for
1 M packets).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR

from bench.engine import quic_initial, tls_client_hello

SHARES = {"tls": 53, "dns": 15, "http": 11, "quic": 11, "ntp": 4, "icmp": 4, "refused": 2}
WORDS = ("www", "mail", "outlook", "teams", "login", "cdn", "static", "api", "docs", "drive",
         "calendar", "update", "news", "shop", "maps", "video", "fonts", "analytics", "chat",
         "files")  # fmt: skip
DOMAINS = ("example.com", "example.org", "example.net", "contoso.example", "fabrikam.example",
           "northwind.example", "tailspin.example", "wingtip.example", "adatum.example",
           "litware.example", "proseware.example", "lucerne.example")  # fmt: skip
RESOLVER = bytes([203, 0, 113, 53])


def _names(n: int, rng: random.Random) -> list[str]:
    out = [f"{w}.{d}" for d in DOMAINS for w in WORDS]
    rng.shuffle(out)
    return out[:n]


_CA, _SA = bytes([198, 18, 0, 10]), bytes([203, 0, 113, 10])
_FLAGS = {"S": 0x02, "SA": 0x12, "A": 0x10, "PA": 0x18, "FA": 0x11, "RA": 0x14}


def _ip(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0, src,
                       dst) + l4  # fmt: skip


def _tcp(from_client: bool, dport: int, flags: str, payload: bytes = b"") -> bytes:
    sp, dp = (40000, dport) if from_client else (dport, 40000)
    src, dst = (_CA, _SA) if from_client else (_SA, _CA)
    hdr = struct.pack("!HHIIBBHHH", sp, dp, 1, 1, 0x50, _FLAGS[flags], 64240, 0, 0)
    return _ip(src, dst, 6, hdr + payload)


def _udp(from_client: bool, sport: int, dport: int, payload: bytes, server: bytes = _SA) -> bytes:
    sp, dp = (sport, dport) if from_client else (dport, sport)
    src, dst = (_CA, server) if from_client else (server, _CA)
    return _ip(src, dst, 17, struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload)


def _tcp_session(dport: int, hello: bytes, server_flight: list[int], data: int) -> list[bytes]:
    seq = [
        _tcp(True, dport, "S"),
        _tcp(False, dport, "SA"),
        _tcp(True, dport, "A"),
        _tcp(True, dport, "PA", hello),
        _tcp(False, dport, "A"),
    ]
    seq += [_tcp(False, dport, "PA", b"\x16\x03\x03" + bytes(n)) for n in server_flight]
    seq.append(_tcp(True, dport, "A"))
    if data:
        seq.append(_tcp(True, dport, "PA", b"\x17\x03\x03" + bytes(80)))
        seq.append(_tcp(False, dport, "PA", b"\x17\x03\x03" + bytes(data)))
    seq += [_tcp(True, dport, "FA"), _tcp(False, dport, "FA"), _tcp(True, dport, "A")]
    return seq


def _templates(rng: random.Random) -> dict[str, list[list[bytes]]]:
    names = _names(240, rng)
    out: dict[str, list[list[bytes]]] = {k: [] for k in SHARES}
    for i, name in enumerate(names):
        out["tls"].append(_tcp_session(443, tls_client_hello(name), [1400, 1400, 700], 1200))
        if i % 3 == 0:
            get = (
                f"GET /{WORDS[i % len(WORDS)]}/index.html?id={i} HTTP/1.1\r\nHost: {name}\r\n"
                "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64)\r\nAccept: */*\r\n\r\n"
            )
            out["http"].append(_tcp_session(80, get.encode(), [1200], 0))
        if i % 2 == 0:
            qd = DNSQR(qname=name, qtype="A")
            ans = DNSRR(rrname=name, type="A", rdata=f"203.0.113.{10 + i % 200}", ttl=300)
            if i % 4:
                ans = ans / DNSRR(rrname=name, type="A", rdata=f"198.51.100.{10 + i % 200}")
            query = bytes(DNS(id=i, rd=1, qd=qd))
            answer = bytes(DNS(id=i, qr=1, rd=1, ra=1, qd=qd, an=ans))
            out["dns"].append(
                [_udp(True, 40000, 53, query, RESOLVER), _udp(False, 40000, 53, answer, RESOLVER)]
            )
        if i % 4 == 0:
            out["quic"].append(
                [_udp(True, 40000, 443, quic_initial(name))]
                + [_udp(False, 40000, 443, b"\xc1\x00\x00\x00\x01" + bytes(1195))] * 2
                + [_udp(True, 40000, 443, b"\x41" + bytes(60))] * 2
                + [_udp(False, 40000, 443, b"\x41" + bytes(1000))] * 3
            )
    out["ntp"] = [
        [_udp(True, 123, 123, b"\x23" + bytes(47)), _udp(False, 123, 123, b"\x24" + bytes(47))]
    ]
    echo = []
    for k in range(4):
        for t in (8, 0):
            icmp = struct.pack("!BBHHH", t, 0, 0, 7, k) + bytes(56)
            echo.append(_ip(_CA, _SA, 1, icmp) if t == 8 else _ip(_SA, _CA, 1, icmp))
    out["icmp"] = [echo]
    out["refused"] = [[_tcp(True, 8443, "S"), _tcp(False, 8443, "RA")]]
    return out


def _patch(raw: bytes, client: bytes, server: bytes, cport: int) -> bytes:
    b = bytearray(raw)
    from_client = b[12:16] == b"\xc6\x12\x00\x0a"
    b[12:16], b[16:20] = (client, server) if from_client else (server, client)
    if b[9] in (6, 17):
        ihl = (b[0] & 0x0F) * 4
        off = ihl if from_client else ihl + 2
        if raw[ihl : ihl + 2] != b"\x00\x7b":  # NTP keeps 123 on both sides
            struct.pack_into("!H", b, off, cport)
    return bytes(b)


def office_mix_timed(
    n_packets: int, seed: int = 7, sessions_per_s: float = 200.0
) -> list[tuple[float, bytes]]:
    """About `n_packets` (timestamp, raw IPv4 packet) of interleaved office sessions, in time
    order: sessions start at `sessions_per_s` (Poisson), packets within one ~RTT apart."""
    rng = random.Random(seed)
    templates = _templates(rng)
    kinds = [k for k, share in SHARES.items() for _ in range(share)]
    office = [bytes([198, 18, 0, i]) for i in range(10, 60)]
    internet = [bytes([203, 0, 113, i]) for i in range(2, 250) if i != 53]
    internet += [bytes([198, 51, 100, i]) for i in range(2, 250)]
    internet += [bytes([192, 0, 2, i]) for i in range(2, 250)]
    out: list[tuple[float, bytes]] = []
    t = 1_800_000_000.0
    port = 20000
    count = 0
    while count < n_packets:
        t += rng.expovariate(sessions_per_s)
        kind = rng.choice(kinds)
        seq = rng.choice(templates[kind])
        client = rng.choice(office)
        server = RESOLVER if kind == "dns" else rng.choice(internet)
        port = 20000 + (port - 19999) % 40000
        rtt = rng.uniform(0.005, 0.06)
        ts = t
        for raw in seq:
            out.append((ts, _patch(raw, client, server, port)))
            ts += rtt * rng.uniform(0.3, 1.0)
        count += len(seq)
    out.sort(key=lambda x: x[0])
    return out[:n_packets]


ETH = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """Ethernet pcap (microsecond timestamps) of timed raw IPv4 packets."""
    rec = struct.Struct("<IIII")
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, raw in packets:
            sec = int(ts)
            n = len(raw) + 14
            f.write(rec.pack(sec, int((ts - sec) * 1e6), n, n))
            f.write(ETH)
            f.write(raw)
