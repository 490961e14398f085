"""DNS messages (UDP, and TCP with its 2-byte length prefix): question, rcode and answers.

Runs on every queued DNS packet, so it reads the wire format directly with `struct` instead of
building objects per field. Every loop is bounded (labels, pointer jumps, answers), any
malformation returns None, and record data that is payload (TXT, NULL, unknown types) is never
copied: only its length is kept.
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6, inet_ntop

from appliance.detect.records import DnsAnswer, DnsMessage

MAX_ANSWERS = 32  # answers kept per message; the rest are not read
MAX_QUESTIONS = 4  # more questions than this: answers are not read (nobody sends >1)
MAX_JUMPS = 16  # compression pointers followed in one name
MAX_NAME = 255  # RFC 1035 limit on a name's wire length

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")

# Bytes that may appear in a rendered label as they are; anything else is escaped as \DDD
# (the master-file notation), so a label holding a dot or a control byte cannot pose as
# another name in an alert or an intel match.
_PLAIN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/"
_PLAIN_DOT = _PLAIN + b"."

# rrtypes whose data is a domain name at offset 0 (NS, CNAME, PTR) or 2 (MX).
_NAME_AT = {2: 0, 5: 0, 12: 0, 15: 2}


def label_text(label: bytes) -> str:
    """One label as text: lower case, unusual bytes (and dots) escaped as \\DDD."""
    if not label.translate(None, _PLAIN):
        return label.decode("ascii").lower()
    out = []
    for b in label.lower():
        if b in _PLAIN:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def host_text(name: bytes) -> str:
    """A dotted host name (SNI, HTTP Host) as text: lower case, no trailing dot, odd bytes
    escaped as in `label_text`."""
    if name.endswith(b"."):
        name = name[:-1]
    if not name.translate(None, _PLAIN_DOT):
        return name.decode("ascii").lower()
    return ".".join(label_text(lb) for lb in name.split(b"."))


# A per-message memo of names already read: start offset → (text, wire octets without the
# root byte, pointer jumps). Compressed answers mostly point at the question or a CNAME target
# read just before, so most answer names cost one dict lookup.
NameCache = dict[int, tuple[str, int, int]]


def read_name(data: bytes, off: int, cache: NameCache | None = None) -> tuple[str, int]:
    """The name at `off` and the offset just after it (after the first pointer, if any).

    Raises ValueError on a name that runs off the end, loops, or exceeds 255 octets.
    Pointers must point backwards (to an earlier offset than the label being read), which
    with the jump limit rules out loops.
    """
    start_off = off
    labels: list[bytes] = []
    end = -1
    total = 0
    jumps = 0
    suffix = ""
    n = len(data)
    while True:
        if off >= n:
            raise ValueError("name runs off the end")
        ln = data[off]
        if ln == 0:
            if end < 0:
                end = off + 1
            break
        if ln & 0xC0 == 0xC0:
            if off + 1 >= n:
                raise ValueError("truncated pointer")
            target = ((ln & 0x3F) << 8) | data[off + 1]
            if end < 0:
                end = off + 2
            jumps += 1
            if jumps > MAX_JUMPS or target >= off:
                raise ValueError("pointer loop")
            if cache is not None and target in cache:
                suffix, more, more_jumps = cache[target]
                total += more
                jumps += more_jumps
                if total >= MAX_NAME or jumps > MAX_JUMPS:
                    raise ValueError("name too long")
                break
            off = target
            continue
        if ln & 0xC0:
            raise ValueError("reserved label type")
        total += ln + 1
        if total >= MAX_NAME:  # with the root's zero byte, over 255 octets
            raise ValueError("name too long")
        start = off + 1
        off = start + ln
        if off > n:
            raise ValueError("label runs off the end")
        labels.append(data[start:off])
    if labels:
        raw = b".".join(labels)
        if not raw.translate(None, _PLAIN_DOT):
            name = raw.decode("ascii").lower()
        else:
            name = ".".join([label_text(lb) for lb in labels])
        if suffix:
            name = name + "." + suffix
    else:
        name = suffix
    if cache is not None:
        cache[start_off] = (name, total, jumps)
    return name, end


def _rdata_text(data: bytes, rrtype: int, off: int, rdlen: int, cache: NameCache) -> str:
    """Rendered record data for address and name records; "" for everything else."""
    if rrtype == 1:
        if rdlen != 4:
            raise ValueError("bad A length")
        return inet_ntop(AF_INET, data[off : off + 4])
    if rrtype == 28:
        if rdlen != 16:
            raise ValueError("bad AAAA length")
        return inet_ntop(AF_INET6, data[off : off + 16])
    skip = _NAME_AT.get(rrtype)
    if skip is None:
        return ""  # TXT, NULL and the rest: payload, never kept
    if rdlen < skip + 1:
        raise ValueError("short name record")
    name, end = read_name(data, off + skip, cache)
    if end > off + rdlen:
        raise ValueError("name overruns its record")
    return name


def parse_dns(data: bytes, tcp: bool = False) -> DnsMessage | None:
    """A DNS message, or None if `data` is not one. Answers past a malformed one are dropped."""
    if tcp:
        if len(data) < 14:
            return None
        (msglen,) = _U16.unpack_from(data)
        if msglen < 12:
            return None
        data = data[2 : 2 + msglen]  # a message longer than the segment: parse what is here
    elif len(data) < 12:
        return None
    try:
        return _parse(data, "tcp" if tcp else "udp")
    except (ValueError, IndexError, struct.error):
        return None


def _parse(data: bytes, transport: str) -> DnsMessage | None:
    ident, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(data)
    response = bool(flags & 0x8000)
    opcode = (flags >> 11) & 0xF
    if opcode > 6:  # unassigned opcodes: not DNS (or nothing we can read)
        return None
    qname = ""
    qtype = 0
    off = 12
    cache: NameCache = {}
    if qdcount:
        qname, off = read_name(data, off, cache)
        if off + 4 > len(data):
            return None
        (qtype,) = _U16.unpack_from(data, off)
        off += 4
    elif not response and opcode == 0:
        return None  # a standard query without a question is not one
    msg = DnsMessage(
        id=ident,
        response=response,
        opcode=opcode,
        rcode=flags & 0xF,
        qname=qname,
        qtype=qtype,
        truncated=bool(flags & 0x0200),
        transport=transport,
    )
    if not response or not ancount or qdcount > MAX_QUESTIONS:
        return msg
    try:
        for _ in range(qdcount - 1):
            _, off = read_name(data, off, cache)
            off += 4
        answers = msg.answers
        n = len(data)
        for _ in range(min(ancount, MAX_ANSWERS)):
            name, off = read_name(data, off, cache)
            if off + 10 > n:
                break
            rrtype, _cls, ttl, rdlen = _RR.unpack_from(data, off)
            off += 10
            if off + rdlen > n:
                break
            answers.append(
                DnsAnswer(name, rrtype, ttl, _rdata_text(data, rrtype, off, rdlen, cache), rdlen)
            )
            off += rdlen
    except (ValueError, IndexError, struct.error):
        pass  # keep the header, question and the answers read so far
    return msg
