"""Header decoding for the hot path: struct over bytes, no scapy.

scapy takes ~200 µs to parse a packet; this takes a couple of µs, which is what lets one core
keep up with the flow heads of a whole office. Everything here is total: truncated or malformed
input yields ``None`` plus a counted reason, never an exception. Link layers are only decoded for
pcaps (``decode_frame``); NFQUEUE hands us the IP packet directly (``decode_ip``).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter

# IP protocol numbers we look into.
ICMP, TCP, UDP, ICMPV6 = 1, 6, 17, 58
PROTO_NAMES = {ICMP: "ICMP", TCP: "TCP", UDP: "UDP", ICMPV6: "IPv6-ICMP", 47: "GRE", 50: "ESP"}

# TCP flags.
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# Which side of the bridge a packet came from.
SIDE_UNKNOWN, SIDE_OFFICE, SIDE_INTERNET = 0, 1, 2

# pcap link types (LINKTYPE_*) we accept.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
# DLT_RAW as some BSDs number it in pcap headers (libpcap maps both to LINKTYPE_RAW on write)
LINKTYPE_RAW_BSD12 = 12
LINKTYPE_RAW_BSD14 = 14
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_NULL = 0
LINKTYPE_LOOP = 108
LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_RAW_BSD12: "raw IP (DLT_RAW 12)",
    LINKTYPE_RAW_BSD14: "raw IP (DLT_RAW 14)",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD, ETH_PPPOE_SESSION = (
    0x0800,
    0x86DD,
    0x8100,
    0x88A8,
    0x9100,
    0x8864,
)
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057

# IPv6 extension headers that we skip to reach the transport header.
_V6_EXT = frozenset({0, 43, 60, 135, 139, 140})
_V6_FRAG = 44
_V6_AH = 51

_ECHO = frozenset({0, 8, 128, 129})  # ICMP echo reply/request, ICMPv6 echo request/reply
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBB")
_ICMP = struct.Struct("!BB")
# IPv4 without options and its TCP / UDP header in one go: total length, fragment field, TTL,
# addresses, ports (TCP: data offset and flags too).
_V4TCP = struct.Struct("!2xH2xHB3x4s4sHH8xBB")
_V4UDP = struct.Struct("!2xH2xHB3x4s4sHH")
_new = object.__new__
_v4tcp = _V4TCP.unpack_from
_v4udp = _V4UDP.unpack_from

_ntop = socket.inet_ntop
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class Packet:
    """The decoded headers of one IP packet; `data[payload_off:]` is the transport payload."""

    __slots__ = (
        "data",
        "dport",
        "dst",
        "family",
        "flags",
        "fragment",
        "icmp_code",
        "icmp_type",
        "length",
        "payload_len",
        "payload_off",
        "proto",
        "side",
        "sport",
        "src",
        "ts",
        "ttl",
    )

    def __init__(self) -> None:
        self.ts = 0.0
        self.family = 0
        self.src = b""
        self.dst = b""
        self.proto = 0
        self.sport = 0
        self.dport = 0
        self.flags = 0
        self.ttl = 0
        self.length = 0
        self.icmp_type = -1
        self.icmp_code = -1
        # 0: not a fragment; 1: first fragment (has ports); 2: later fragment (no L4 header).
        self.fragment = 0
        self.side = SIDE_UNKNOWN
        self.data = b""
        self.payload_off = 0
        self.payload_len = 0

    @property
    def payload(self) -> bytes:
        off = self.payload_off
        return self.data[off : off + self.payload_len]

    @property
    def src_ip(self) -> str:
        return _ntop(_AF[self.family], self.src)

    @property
    def dst_ip(self) -> str:
        return _ntop(_AF[self.family], self.dst)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def __repr__(self) -> str:
        return (
            f"Packet({self.proto_name} {self.src_ip}:{self.sport} -> {self.dst_ip}:{self.dport}"
            f" flags={self.flags:#x} len={self.length} payload={self.payload_len})"
        )


def ip_to_str(addr: bytes) -> str:
    """Text form of a packed 4- or 16-byte address."""
    return _ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class DecodeStats:
    """Counts of packets that could not be decoded, by reason (for telemetry)."""

    __slots__ = ("errors", "ok")

    def __init__(self) -> None:
        self.ok = 0
        self.errors: Counter[str] = Counter()

    def bad(self, reason: str) -> None:
        self.errors[reason] += 1

    @property
    def malformed(self) -> int:
        return sum(self.errors.values())


def decode_ip(data: bytes, ts: float, stats: DecodeStats, off: int = 0) -> Packet | None:
    """Decode the IPv4/IPv6 packet starting at `data[off]`; None (and a count) if it is bad.

    Fast paths for what most packets are (IPv4 without options, not a fragment, TCP or UDP with
    a whole header): one `unpack_from` for the IP and transport headers, each field of the
    record written once. Everything else goes through `_decode_any`, which gives the same
    record for these packets too.
    """
    n = len(data) - off
    if n >= 28 and data[off] == 0x45:
        proto = data[off + 9]
        if proto == 6 and n >= 40:
            total, frag, ttl, src, dst, sport, dport, doff, flags = _v4tcp(data, off)
            if total >= 40 and not frag & 0x3FFF:
                hlen = (doff >> 4) * 4
                room = (total if total < n else n) - 20
                if 20 <= hlen <= room:
                    p = _new(Packet)
                    p.ts = ts
                    p.family = 4
                    p.src = src
                    p.dst = dst
                    p.proto = 6
                    p.sport = sport
                    p.dport = dport
                    p.flags = flags
                    p.ttl = ttl
                    p.length = total
                    p.icmp_type = p.icmp_code = -1
                    p.fragment = 0
                    p.side = SIDE_UNKNOWN
                    p.data = data
                    p.payload_off = off + 20 + hlen
                    p.payload_len = room - hlen
                    stats.ok += 1
                    return p
        elif proto == 17:
            total, frag, ttl, src, dst, sport, dport = _v4udp(data, off)
            if total >= 28 and not frag & 0x3FFF:
                p = _new(Packet)
                p.ts = ts
                p.family = 4
                p.src = src
                p.dst = dst
                p.proto = 17
                p.sport = sport
                p.dport = dport
                p.flags = 0
                p.ttl = ttl
                p.length = total
                p.icmp_type = p.icmp_code = -1
                p.fragment = 0
                p.side = SIDE_UNKNOWN
                p.data = data
                p.payload_off = off + 28
                p.payload_len = (total if total < n else n) - 28
                stats.ok += 1
                return p
    return _decode_any(data, ts, stats, off)


def _decode_any(data: bytes, ts: float, stats: DecodeStats, off: int = 0) -> Packet | None:
    """`decode_ip` for every packet (options, fragments, IPv6, ICMP, errors): the general path
    the fast paths of `decode_ip` must agree with (the unit tests compare them)."""
    n = len(data) - off
    if n < 1:
        stats.bad("empty")
        return None
    version = data[off] >> 4
    if version == 4:
        if n < 20:
            stats.bad("ipv4_truncated")
            return None
        vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _IP4.unpack_from(data, off)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or n < ihl:
            stats.bad("ipv4_bad_header")
            return None
        end = off + (total if total < n else n)  # the shorter of claimed and captured length
        p = Packet()
        p.family = 4
        p.ttl = ttl
        p.length = total
        l4 = off + ihl
        frag_off = frag & 0x1FFF
        if frag_off:
            p.fragment = 2
        elif frag & 0x2000:
            p.fragment = 1
    elif version == 6:
        if n < 40:
            stats.bad("ipv6_truncated")
            return None
        _vtf, plen, proto, ttl, src, dst = _IP6.unpack_from(data, off)
        p = Packet()
        p.family = 6
        p.ttl = ttl
        p.length = plen + 40
        end = off + (plen + 40 if plen + 40 < n else n)
        l4 = off + 40
        # Walk extension headers to the transport header.
        hops = 0
        while proto in _V6_EXT or proto in (_V6_FRAG, _V6_AH):
            hops += 1
            if hops > 8 or l4 + 8 > end:
                stats.bad("ipv6_bad_extension")
                return None
            nxt = data[l4]
            if proto == _V6_FRAG:
                frag_field = _U16.unpack_from(data, l4 + 2)[0]
                if frag_field & 0xFFF8:
                    p.fragment = 2
                elif frag_field & 1:
                    p.fragment = 1
                size = 8
            elif proto == _V6_AH:
                size = (data[l4 + 1] + 2) * 4
            else:
                size = (data[l4 + 1] + 1) * 8
            proto = nxt
            l4 += size
            if proto == 59:  # no next header
                break
        if l4 > end:
            stats.bad("ipv6_bad_extension")
            return None
    else:
        stats.bad("not_ip")
        return None

    p.ts = ts
    p.data = data
    p.proto = proto
    p.src = src
    p.dst = dst
    room = end - l4
    if p.fragment == 2:
        # Later fragments carry no transport header; their bytes are payload of unknown ports.
        p.payload_off = l4
        p.payload_len = room
        stats.ok += 1
        return p
    if proto == TCP:
        if room < 20:
            stats.bad("tcp_truncated")
            return None
        sport, dport, _seq, _ack, doff, flags = _TCP.unpack_from(data, l4)
        hlen = (doff >> 4) * 4
        if hlen < 20 or hlen > room:
            stats.bad("tcp_bad_header")
            return None
        p.sport = sport
        p.dport = dport
        p.flags = flags
        p.payload_off = l4 + hlen
        p.payload_len = room - hlen
    elif proto == UDP:
        if room < 8:
            stats.bad("udp_truncated")
            return None
        p.sport, p.dport = _U16X2.unpack_from(data, l4)
        p.payload_off = l4 + 8
        p.payload_len = room - 8
    elif proto in (ICMP, ICMPV6):
        if room < 4:
            stats.bad("icmp_truncated")
            return None
        p.icmp_type, p.icmp_code = _ICMP.unpack_from(data, l4)
        p.payload_off = l4 + 4
        p.payload_len = room - 4
        if p.icmp_type in _ECHO and room >= 6:
            # Echo request/reply: the identifier keys the flow (as in conntrack), so two ping
            # sessions between the same hosts are two flows.
            p.sport = p.dport = _U16.unpack_from(data, l4 + 4)[0]
    else:
        p.payload_off = l4
        p.payload_len = room
    stats.ok += 1
    return p


def ip_offset(data: bytes, linktype: int, stats: DecodeStats) -> int:
    """Offset of the IP header in a frame of `linktype`, or -1 (counted) if there is none."""
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        etype = -1
    elif linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14, LINKTYPE_IPV4,
                      LINKTYPE_IPV6):  # fmt: skip
        return 0
    elif linktype == LINKTYPE_LINUX_SLL:
        off = 14
        etype = -1
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            stats.bad("sll2_truncated")
            return -1
        etype = _U16.unpack_from(data, 0)[0]
        off = 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4 if n > 4 else -1
    else:
        stats.bad("unsupported_linktype")
        return -1
    # Ethernet/SLL: read the ethertype, then peel VLAN / QinQ tags and PPPoE sessions.
    for _ in range(8):
        if etype == -1:
            if off + 2 > n:
                stats.bad("link_truncated")
                return -1
            etype = _U16.unpack_from(data, off)[0]
            off += 2
        if etype in (ETH_IPV4, ETH_IPV6):
            return off
        if etype in (ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD):
            off += 2  # TCI; the next ethertype follows
            etype = -1
            continue
        if etype == ETH_PPPOE_SESSION:
            if off + 8 > n:
                stats.bad("pppoe_truncated")
                return -1
            ppp = _U16.unpack_from(data, off + 6)[0]
            off += 8
            if ppp in (PPP_IPV4, PPP_IPV6):
                return off
            stats.bad("pppoe_not_ip")
            return -1
        stats.bad("not_ip")
        return -1
    stats.bad("too_many_tags")
    return -1


def decode_frame(data: bytes, linktype: int, ts: float, stats: DecodeStats) -> Packet | None:
    """Decode a captured frame of any supported link type down to its IP headers."""
    off = ip_offset(data, linktype, stats)
    if off < 0:
        return None
    return decode_ip(data, ts, stats, off)
