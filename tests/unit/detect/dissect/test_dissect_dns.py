"""DNS dissection: scapy-built queries and answers (compressed and not, UDP and TCP) checked
field by field against tshark, real dig queries, and the bounds that keep hostile messages
cheap (pointer loops, long names, many answers)."""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRMX, DNSRRSRV
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.dns import MAX_ANSWERS, parse_dns
from tests.unit.detect.dissect.build import client_payloads
from tests.unit.detect.dissect.capture import HANDSHAKES, tshark_fields

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

TXT_SECRET = "exfil-4f2a9c-do-not-leak"


def _messages() -> list[DNS]:
    """Queries and answers of the kinds the detectors read, some compressed as resolvers do."""
    q = DNSQR(qname="www.example.com", qtype="A")
    return [
        DNS(id=1, rd=1, qd=DNSQR(qname="WWW.Example.COM", qtype="A")),
        DNS(
            id=2,
            qr=1,
            rd=1,
            ra=1,
            qd=q,
            an=[
                DNSRR(rrname="www.example.com", type="CNAME", ttl=300, rdata="web.example.com"),
                DNSRR(rrname="web.example.com", type="A", ttl=60, rdata="203.0.113.10"),
                DNSRR(rrname="web.example.com", type="A", ttl=60, rdata="203.0.113.11"),
            ],
        ).compress(),
        DNS(
            id=3,
            qr=1,
            qd=DNSQR(qname="v6.example.net", qtype="AAAA"),
            an=[
                DNSRR(rrname="v6.example.net", type="AAAA", ttl=5, rdata="2001:db8::1"),
                DNSRR(rrname="v6.example.net", type="AAAA", ttl=5, rdata="::ffff:192.0.2.1"),
            ],
        ),
        DNS(
            id=4,
            qr=1,
            qd=DNSQR(qname="10.113.0.203.in-addr.arpa", qtype="PTR"),
            an=[DNSRR(rrname="10.113.0.203.in-addr.arpa", type="PTR", rdata="web.example.com")],
        ).compress(),
        DNS(
            id=5,
            qr=1,
            qd=DNSQR(qname="example.org", qtype="MX"),
            an=[
                DNSRRMX(rrname="example.org", preference=10, exchange="mail.example.org"),
                DNSRR(rrname="example.org", type="NS", rdata="ns1.example.org"),
            ],
        ).compress(),
        DNS(
            id=6,
            qr=1,
            qd=DNSQR(qname="t.tunnel.example.com", qtype="TXT"),
            an=[
                DNSRR(rrname="t.tunnel.example.com", type="TXT", rdata=[TXT_SECRET]),
                DNSRR(rrname="t.tunnel.example.com", type="NULL", rdata=TXT_SECRET.encode()),
            ],
        ),
        DNS(id=7, qr=1, rcode=3, qd=DNSQR(qname="nxdomain.example.com", qtype="A")),
        DNS(id=8, qr=1, tc=1, qd=DNSQR(qname="big.example.com", qtype=255)),
        DNS(id=9, qr=1, opcode=0, qd=DNSQR(qname=".", qtype="NS")),
    ]


def _pcap(tmp_path: Path, messages: list[DNS]) -> tuple[Path, list[tuple[bytes, bool]]]:
    """Each message over UDP, then the first three again over TCP (with the length prefix)."""
    pkts, payloads = [], []
    for m in messages:
        raw = bytes(m)
        pkts.append(Ether() / IP(src="198.18.0.11", dst="203.0.113.53") / UDP(dport=53) / raw)
        payloads.append((raw, False))
    for i, m in enumerate(messages[:3]):
        raw = struct.pack("!H", len(bytes(m))) + bytes(m)
        pkts.append(
            Ether()
            / IP(src="198.18.0.11", dst="203.0.113.53")
            / TCP(sport=41000 + i, dport=53, flags="PA")
            / raw
        )
        payloads.append((raw, True))
    path = tmp_path / "dns.pcap"
    wrpcap(str(path), pkts)
    return path, payloads


def _flag(values: list[str]) -> bool:
    return values[0] in ("1", "True", "true")


@needs_tshark
def test_scapy_dns_agrees_with_tshark(tmp_path: Path) -> None:
    pcap, payloads = _pcap(tmp_path, _messages())
    names = {
        "dns.a": 1,
        "dns.aaaa": 28,
        "dns.cname": 5,
        "dns.ptr.domain_name": 12,
        "dns.ns": 2,
        "dns.mx.mail_exchange": 15,
    }
    fields = tshark_fields(
        pcap,
        [
            "dns.id",
            "dns.flags.response",
            "dns.flags.rcode",
            "dns.flags.truncated",
            "dns.qry.name",
            "dns.qry.type",
            "dns.resp.name",
            "dns.resp.type",
            "dns.resp.ttl",
            "dns.resp.len",
            *names,
        ],
    )
    assert len(fields) == len(payloads)
    for frame, (payload, tcp) in enumerate(payloads, start=1):
        msg = parse_dns(payload, tcp=tcp)
        want = fields[frame]
        assert msg is not None, frame
        assert msg.transport == ("tcp" if tcp else "udp")
        assert msg.id == int(want["dns.id"][0], 16)
        assert msg.response == _flag(want["dns.flags.response"])
        qname = want["dns.qry.name"][0]
        assert msg.qname == ("" if qname == "<Root>" else qname.lower())
        assert msg.qtype == int(want["dns.qry.type"][0])
        if not msg.response:
            assert msg.answers == []
            continue
        assert msg.rcode == int(want["dns.flags.rcode"][0])
        assert msg.truncated == _flag(want["dns.flags.truncated"])
        answers = msg.answers
        assert [a.name for a in answers] == [n.lower() for n in want["dns.resp.name"]]
        assert [a.rrtype for a in answers] == [int(t) for t in want["dns.resp.type"]]
        assert [a.ttl for a in answers] == [int(t) for t in want["dns.resp.ttl"]]
        assert [a.length for a in answers] == [int(t) for t in want["dns.resp.len"]]
        for field, rrtype in names.items():
            assert [a.data for a in msg.answers if a.rrtype == rrtype] == [
                v.lower() for v in want[field]
            ], (frame, field)


def test_answer_values() -> None:
    msgs = [parse_dns(bytes(m)) for m in _messages()]
    assert all(m is not None for m in msgs)
    cname = msgs[1]
    assert [(a.rrtype, a.data) for a in cname.answers] == [
        (5, "web.example.com"),
        (1, "203.0.113.10"),
        (1, "203.0.113.11"),
    ]
    assert [a.data for a in msgs[2].answers] == ["2001:db8::1", "::ffff:192.0.2.1"]
    assert [a.data for a in msgs[4].answers] == ["mail.example.org", "ns1.example.org"]
    srv = DNS(
        qr=1,
        qd=DNSQR(qname="_sip._tcp.example.org", qtype="SRV"),
        an=[DNSRRSRV(rrname="_sip._tcp.example.org", target="sip.example.org", port=5060)],
    )
    got = parse_dns(bytes(srv.compress()))
    assert got is not None and [(a.rrtype, a.data) for a in got.answers] == [(33, "")]
    assert msgs[6].rcode_name == "NXDOMAIN" and msgs[6].answers == []
    assert msgs[7].truncated
    assert msgs[8].qname == "" and msgs[8].qtype == 2
    eve = cname.eve()["dns"]
    assert eve["type"] == "answer" and eve["rrname"] == "www.example.com"
    assert eve["answers"][1] == {
        "rrname": "web.example.com",
        "rrtype": "A",
        "ttl": 60,
        "rdata": "203.0.113.10",
    }


def test_txt_and_null_contents_are_never_kept() -> None:
    msg = parse_dns(bytes(_messages()[5]))
    assert msg is not None
    assert [(a.rrtype, a.data, a.length) for a in msg.answers] == [
        (16, "", len(TXT_SECRET) + 1),
        (10, "", len(TXT_SECRET)),
    ]
    assert TXT_SECRET not in repr(msg) and TXT_SECRET not in repr(msg.eve())


def test_real_dig_queries() -> None:
    queries = [parse_dns(p) for p in client_payloads(HANDSHAKES, 53).values()]
    assert [(q.qname, q.qtype, q.response) for q in queries if q] == [
        ("www.example.com", 1, False),
        ("mail.example.org", 28, False),
    ]


# -- bounds and malformed input ------------------------------------------------------------------


def _header(qd: int = 1, an: int = 0, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, 0, 0)


def test_compression_pointer_loops_are_refused() -> None:
    self_loop = _header(an=0, flags=0x0100) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert parse_dns(self_loop) is None
    forward = _header(flags=0x0100) + b"\xc0\x0e" + b"\x01a\x00" + b"\x00\x01\x00\x01"
    assert parse_dns(forward) is None
    # Two labels pointing back at each other, reached from an answer.
    q = b"\x01a\x00\x00\x01\x00\x01"
    loop = (
        _header(an=1)
        + q
        + b"\x01b\xc0\x1d"
        + b"\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04"
        + bytes(4)
    )
    msg = parse_dns(loop)
    assert msg is not None and msg.qname == "a" and msg.answers == []


def test_pointer_chain_is_bounded() -> None:
    """Labels each pointing back at the previous one: legal one by one, but a 40-deep chain
    exceeds the jump limit long before the 255-octet limit."""
    question = b"\x01a\x00\x00\x01\x00\x01"
    chain_at = 12 + len(question) + 2 + 10  # inside the first answer's NULL data
    chain, prev = b"", 12
    for _ in range(40):
        here = chain_at + len(chain)
        chain += b"\x01b" + struct.pack("!H", 0xC000 | prev)
        prev = here
    first = b"\xc0\x0c" + struct.pack("!HHIH", 10, 1, 0, len(chain)) + chain
    second = struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4)
    msg = parse_dns(_header(an=2) + question + first + second)
    assert msg is not None
    assert [a.rrtype for a in msg.answers] == [10]  # the second answer's name is refused
    shallow = struct.pack("!H", 0xC000 | (chain_at + 4 * 10)) + struct.pack("!HHIH", 1, 1, 0, 4)
    msg = parse_dns(_header(an=2) + question + first + shallow + bytes(4))
    assert msg is not None and msg.answers[1].name == "b." * 11 + "a"


def test_name_length_limit() -> None:
    label = b"\x3f" + b"a" * 63
    ok = label * 3 + b"\x3d" + b"b" * 61 + b"\x00"  # 255 octets on the wire
    assert len(ok) == 255
    msg = parse_dns(_header(flags=0x0100) + ok + b"\x00\x01\x00\x01")
    assert msg is not None and len(msg.qname) == 253
    too_long = label * 3 + b"\x3e" + b"b" * 62 + b"\x00"
    assert parse_dns(_header(flags=0x0100) + too_long + b"\x00\x01\x00\x01") is None
    assert parse_dns(_header(flags=0x0100) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01") is None


def test_answers_are_bounded_and_a_cut_message_keeps_what_came_first() -> None:
    many = DNS(
        id=1,
        qr=1,
        qd=DNSQR(qname="many.example.com"),
        an=[DNSRR(rrname="many.example.com", rdata=f"198.51.100.{i}") for i in range(100)],
    ).compress()
    msg = parse_dns(bytes(many))
    assert msg is not None and len(msg.answers) == MAX_ANSWERS
    raw = bytes(many)
    cut = parse_dns(raw[: len(raw) // 10])
    assert cut is not None and 0 < len(cut.answers) < MAX_ANSWERS
    assert all(a.data.startswith("198.51.100.") for a in cut.answers)


def test_tcp_length_prefix() -> None:
    raw = bytes(_messages()[1])
    framed = struct.pack("!H", len(raw)) + raw
    msg = parse_dns(framed, tcp=True)
    udp = parse_dns(raw)
    assert msg is not None and udp is not None
    assert msg == dataclasses.replace(udp, transport="tcp")
    assert len(msg.answers) == 3
    half = parse_dns(framed[:40], tcp=True)  # a segment holding the start of the message
    assert half is not None and half.qname == "www.example.com" and half.answers == []
    assert parse_dns(raw, tcp=True) is None  # no prefix: the id is read as a length
    assert parse_dns(b"\x00\x05" + raw[:5], tcp=True) is None


def test_odd_bytes_in_labels_are_escaped() -> None:
    name = b"\x05a.b\x00C\x07example\x00"
    msg = parse_dns(_header(flags=0x0100) + name + b"\x00\x10\x00\x01")
    assert msg is not None and msg.qname == "a\\046b\\000c.example"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        _header(qd=0, flags=0x0100),  # a query without a question
        _header(flags=0x7800) + b"\x01a\x00\x00\x01\x00\x01",  # opcode 15
        _header(flags=0x0100) + b"\x01a\x00\x00\x01",  # question cut short
        _header(flags=0x0100) + b"\x80a\x00\x00\x01\x00\x01",  # reserved label type
    ],
)
def test_not_dns(data: bytes) -> None:
    assert parse_dns(data) is None


def test_dissectors_counts_dns() -> None:
    d = Dissectors()
    assert d.dns(bytes(_messages()[0])) is not None
    assert d.dns(b"\x00\x01garbage") is None
    assert d.parsed["dns"] == 1 and d.malformed["dns"] == 1
