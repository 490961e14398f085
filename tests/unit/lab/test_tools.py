"""The lab's tiny servers: the resolver's answers (checked with scapy) and the FTP dialogue."""

from __future__ import annotations

import io

import pytest
from scapy.layers.dns import DNS, DNSQR

from lab.tools import answer, ftp_session, lookup, parse_records

RECORDS = parse_records(
    ["www.example.com=203.0.113.10", "*.cdn.example.org=203.0.113.20,203.0.113.21"]
)


def ask(name: str, qtype: str = "A", **kw) -> DNS:
    query = bytes(DNS(id=4321, rd=1, qd=DNSQR(qname=name, qtype=qtype), **kw))
    reply = answer(query, RECORDS)
    assert reply is not None
    return DNS(reply)


def test_known_name_gets_its_address() -> None:
    r = ask("WWW.Example.com")
    assert (r.id, r.qr, r.aa, r.rd, r.rcode, r.ancount) == (4321, 1, 1, 1, 0, 1)
    assert r.an[0].rdata == "203.0.113.10"
    assert r.qd[0].qname == b"WWW.Example.com."


def test_unknown_name_is_nxdomain_and_other_types_nodata() -> None:
    assert ask("nope.example.com").rcode == 3
    r = ask("www.example.com", "AAAA")
    assert (r.rcode, r.ancount) == (0, 0)
    assert ask("x.example.com", "TXT").rcode == 3


def test_wildcards_cover_subdomains_only() -> None:
    r = ask("a.b.cdn.example.org")
    assert sorted(rr.rdata for rr in r.an) == ["203.0.113.20", "203.0.113.21"]
    assert lookup(RECORDS, "cdn.example.org") is None


def test_malformed_queries_and_responses() -> None:
    assert answer(b"\x00", RECORDS) is None
    formerr = DNS(answer(b"\x12\x34" + b"\x00" * 4, RECORDS))
    assert (formerr.id, formerr.rcode) == (0x1234, 1)
    # A response is never answered (no reflection loops).
    assert answer(bytes(DNS(id=1, qr=1, qd=DNSQR(qname="www.example.com"))), RECORDS) is None
    # A label running past the end.
    assert (
        DNS(answer(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc", RECORDS)).rcode == 1
    )


def test_bad_record_arguments() -> None:
    with pytest.raises(ValueError, match="NAME=ADDRESS"):
        parse_records(["www.example.com"])
    with pytest.raises(OSError):
        parse_records(["www.example.com=not-an-ip"])


def test_ftp_login_dialogue() -> None:
    script = b"USER alice\r\nPASS bad\r\nUSER alice\r\nPASS wonderland\r\nRETR x\r\nQUIT\r\n"
    out = io.BytesIO()
    ftp_session(io.BytesIO(script), out, "alice", "wonderland")
    codes = [line[:3] for line in out.getvalue().decode().splitlines()]
    assert codes == ["220", "331", "530", "331", "230", "502", "221"]
