"""Hot-path decode against scapy-built packets, and robustness against junk."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from appliance.packet.decode import (
    ACK,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    SYN,
    DecodeStats,
    decode_frame,
    decode_ip,
)


def dec(pkt: object) -> object:
    stats = DecodeStats()
    p = decode_ip(bytes(pkt), 1.5, stats)
    assert p is not None, stats.errors
    return p


def test_ipv4_tcp() -> None:
    p = dec(
        IP(src="198.18.0.11", dst="203.0.113.10", ttl=33)
        / TCP(sport=41000, dport=443, flags="SA")
        / b"hello"
    )
    assert (p.src_ip, p.dst_ip, p.sport, p.dport) == ("198.18.0.11", "203.0.113.10", 41000, 443)
    assert p.proto == 6 and p.flags == SYN | ACK and p.ttl == 33
    assert p.payload == b"hello" and p.payload_len == 5 and p.family == 4
    assert p.ts == 1.5


def test_ipv4_options_and_udp() -> None:
    pkt = IP(src="198.18.0.11", dst="203.0.113.53", options=[IPOption_RR(routers=["192.0.2.1"])])
    p = dec(pkt / UDP(sport=5353, dport=53) / b"q")
    assert p.proto == 17 and (p.sport, p.dport) == (5353, 53) and p.payload == b"q"


def test_icmp_and_icmpv6() -> None:
    p = dec(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP(type=8, code=0) / b"ping")
    assert (p.icmp_type, p.icmp_code) == (8, 0)
    p6 = dec(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest())
    assert p6.proto == 58 and p6.icmp_type == 128 and p6.family == 6
    assert p6.src_ip == "2001:db8::1"


def test_ipv6_extension_headers_are_skipped() -> None:
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / TCP(sport=1234, dport=22, flags="S")
    )
    p = dec(pkt)
    assert p.proto == 6 and (p.sport, p.dport) == (1234, 22) and p.flags == SYN


def test_fragments_only_first_has_ports() -> None:
    frags = IP(src="198.18.0.11", dst="203.0.113.10") / UDP(sport=9, dport=7) / (b"x" * 3000)
    from scapy.layers.inet import fragment

    parts = [dec(f) for f in fragment(frags, fragsize=1000)]
    assert parts[0].fragment == 1 and (parts[0].sport, parts[0].dport) == (9, 7)
    assert all(p.fragment == 2 and p.sport == 0 for p in parts[1:])
    v6 = dec(
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrFragment(offset=100, m=0)
        / Raw(b"y" * 50)
    )
    assert v6.fragment == 2 and v6.sport == 0


@pytest.mark.parametrize(
    ("frame", "linktype"),
    [
        (Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=80), LINKTYPE_ETHERNET),
        (
            Ether() / Dot1Q(vlan=7) / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=80),
            LINKTYPE_ETHERNET,
        ),
        (
            Ether()
            / Dot1AD(vlan=100)
            / Dot1Q(vlan=7)
            / IP(src="198.18.0.11", dst="203.0.113.10")
            / TCP(dport=80),
            LINKTYPE_ETHERNET,
        ),
        (
            Ether()
            / PPPoE(sessionid=3)
            / PPP(proto=0x0021)
            / IP(src="198.18.0.11", dst="203.0.113.10")
            / TCP(dport=80),
            LINKTYPE_ETHERNET,
        ),
        (
            CookedLinux(proto=0x0800) / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=80),
            LINKTYPE_LINUX_SLL,
        ),
        (IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=80), LINKTYPE_RAW),
    ],
)
def test_link_layers(frame: object, linktype: int) -> None:
    stats = DecodeStats()
    p = decode_frame(bytes(frame), linktype, 0.0, stats)
    assert p is not None, stats.errors
    assert p.dst_ip == "203.0.113.10" and p.dport == 80


def test_sll2() -> None:
    # SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8)
    hdr = bytes.fromhex("0800") + b"\0\0" + (3).to_bytes(4, "big") + bytes.fromhex("0001")
    hdr += b"\x00\x06" + b"\xaa" * 6 + b"\0\0"
    ip = bytes(IP(src="198.18.0.11", dst="203.0.113.10") / UDP(sport=1, dport=53))
    p = decode_frame(hdr + ip, LINKTYPE_LINUX_SLL2, 0.0, DecodeStats())
    assert p is not None and p.dport == 53


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x45",
        bytes(IP(dst="203.0.113.1") / TCP())[:30],  # TCP header cut short
        b"\x46" + bytes(19),  # IHL says options, none present
        b"\x60" + bytes(10),  # truncated IPv6
        b"\x75" + bytes(40),  # version 7
        bytes(IP(dst="203.0.113.1", ihl=4) / UDP()),  # IHL below minimum
    ],
)
def test_malformed_is_counted_not_raised(raw: bytes) -> None:
    stats = DecodeStats()
    assert decode_ip(raw, 0.0, stats) is None
    assert stats.malformed == 1


def test_claimed_length_longer_than_capture_is_bounded() -> None:
    raw = bytearray(bytes(IP(src="198.18.0.11", dst="203.0.113.10") / UDP() / b"abc"))
    raw[2:4] = (60000).to_bytes(2, "big")
    p = decode_ip(bytes(raw), 0.0, DecodeStats())
    assert p is not None and p.payload == b"abc"


def test_fuzz_decode_and_engine_never_raise() -> None:
    """100 000 random, truncated and mutated packets through decode + the whole engine."""
    from tests.helpers import Harness

    rng = random.Random(1234)
    h = Harness()
    seeds = [
        bytes(
            IP(src="198.18.0.11", dst="203.0.113.10")
            / TCP(sport=1000, dport=80, flags="PA")
            / b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
        ),
        bytes(
            IP(src="198.18.0.11", dst="203.0.113.53")
            / UDP(sport=1000, dport=53)
            / bytes.fromhex("123401000001000000000000036177730378797a0000010001")
        ),
        bytes(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / IPv6ExtHdrHopByHop()
            / UDP(sport=5, dport=443)
            / (b"\xc3" + bytes(60))
        ),
        bytes(
            IP(src="198.18.0.11", dst="203.0.113.10")
            / TCP(sport=1, dport=443, flags="PA")
            / (b"\x16\x03\x01\x00\x50\x01" + bytes(80))
        ),
        bytes(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP()),
    ]
    stats = h.stats
    for i in range(100_000):
        base = bytearray(rng.choice(seeds))
        kind = i % 4
        if kind == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        elif kind == 1:
            data = bytes(base[: rng.randrange(0, len(base))])
        else:
            for _ in range(rng.randrange(1, 6)):
                base[rng.randrange(len(base))] = rng.getrandbits(8)
            data = bytes(base)
        pkt = decode_ip(data, 1_800_000_000.0 + i * 0.001, stats)
        if pkt is not None:
            h.engine.process(pkt)
    h.finish()
    assert stats.ok + stats.malformed == 100_000
    assert stats.ok > 10_000 and stats.malformed > 10_000
    assert not h.engine.stats.hook_errors, h.engine.stats.hook_errors


def test_icmp_echo_identifier_keys_the_flow() -> None:
    a = dec(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP(type=8, id=7, seq=1))
    b = dec(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP(type=8, id=9, seq=1))
    assert (a.sport, a.dport, b.sport) == (7, 7, 9)
    other = dec(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP(type=3, code=3))
    assert other.sport == 0


def test_fast_paths_give_the_general_record() -> None:
    """decode_ip's IPv4 TCP/UDP fast paths agree field for field (and on errors) with the
    general decoder, on the office mix and on mutated, truncated copies of it."""
    from appliance.packet.decode import Packet, _decode_any
    from bench.mix import office_mix_timed

    rng = random.Random(99)
    raws = [raw for _, raw in office_mix_timed(3000, seed=3)]
    cases: list[tuple[bytes, int]] = [(r, 0) for r in raws]
    for raw in raws[:1500]:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(min(len(b), 40))] = rng.randrange(256)
        cases.append((bytes(b[: rng.randint(0, len(b))]), 0))
        cases.append((bytes(14) + bytes(b), 14))
    fast_taken = 0
    for raw, off in cases:
        s1, s2 = DecodeStats(), DecodeStats()
        a, b2 = decode_ip(raw, 2.5, s1, off), _decode_any(raw, 2.5, s2, off)
        assert (s1.ok, s1.errors) == (s2.ok, s2.errors), raw.hex()
        assert (a is None) == (b2 is None), raw.hex()
        if a is not None and b2 is not None:
            for f in Packet.__slots__:
                assert getattr(a, f) == getattr(b2, f), (f, raw.hex())
            fast_taken += a.family == 4 and a.proto in (6, 17) and not a.fragment
    assert fast_taken > 3000
