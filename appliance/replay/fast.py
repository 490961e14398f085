"""The replay loop: frames looked at in place in the mapped capture, decoded by the hot path.

`Reader.spans()` gives each frame's place in the mapped file. Where the IP header starts is read
in place for the link layers nearly every capture has (Ethernet, one VLAN tag, raw IP), and the
frame then goes straight to `decode_ip` (its IPv4 TCP/UDP fast path) at that offset: the same
record `decode_frame` gives, without its link-layer walk. Every other frame goes through
`decode_frame`. Replay workers (appliance/replay/parallel.py) also read the IPv4 TCP/UDP
headers in place (`V4_HEAD`) to pass over other workers' packets without copying or decoding
them.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from collections.abc import Callable, Iterator

from appliance.packet.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD12,
    LINKTYPE_RAW_BSD14,
    LINKTYPES,
    DecodeStats,
    Packet,
    decode_frame,
    decode_ip,
)
from appliance.replay.reader import CaptureError, Reader

RAW_LINKS = frozenset(
    {LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14, LINKTYPE_IPV4, LINKTYPE_IPV6}
)
# Ethertypes of IP, and of the VLAN tags (802.1Q, 802.1ad, the old QinQ) peeled in place.
IP_ETHERTYPES = frozenset({0x0800, 0x86DD})
VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100})
U16 = struct.Struct("!H")
# IPv4 (no options) and the first bytes of TCP/UDP in place: version/IHL, total length, fragment
# field, protocol, addresses, ports, (TCP) data offset and flags. 34 bytes.
V4_HEAD = struct.Struct("!BxH2xHxB2x4s4sHH8xBB")
# The same after an Ethernet header, with its ethertype first. 48 bytes.
ETH_V4_HEAD = struct.Struct("!12xHBxH2xHxB2x4s4sHH8xBB")


def ip_start(mm: mmap.mmap, start: int, end: int, link: int) -> int:
    """Offset of the IP header in the frame at mm[start:end] when the link layer is one read in
    place (Ethernet, one VLAN tag, raw IP); -1: ask `decode_frame`. (The loops inline this.)"""
    if link == LINKTYPE_ETHERNET:
        if end - start < 34:
            return -1
        etype = U16.unpack_from(mm, start + 12)[0]
        if etype in IP_ETHERTYPES:
            return 14
        if etype in VLAN_ETHERTYPES and U16.unpack_from(mm, start + 16)[0] in IP_ETHERTYPES:
            return 18
        return -1
    return 0 if link in RAW_LINKS else -1


class UnsupportedLinktype(Exception):
    """A pcap whose file header names a link type we do not decode."""


def spans(r: Reader) -> Iterator[tuple[float, int, int, int]]:
    """`r.spans()`, refusing a pcap whose link type is not supported (once, before any frame)."""
    it = r.spans()
    if r.kind != "pcap":
        return it
    first = next(it, None)  # reads the file header: the link type is known
    if r.linktype is not None and r.linktype not in LINKTYPES:
        raise UnsupportedLinktype(f"{r.path}: unsupported link type {r.linktype}")
    if first is None:
        return iter(())
    return itertools.chain((first,), it)


def decode(
    mm: mmap.mmap, ts: float, link: int, start: int, end: int, stats: DecodeStats
) -> Packet | None:
    """The decoded record of one frame (None: counted in `stats`)."""
    if link not in LINKTYPES:
        stats.bad("unsupported_linktype")
        return None
    data = mm[start:end]
    off = ip_start(mm, start, end, link)
    if off >= 0:
        return decode_ip(data, ts, stats, off)
    return decode_frame(data, link, ts, stats)


def run(
    r: Reader,
    stats: DecodeStats,
    process: Callable[[Packet], object],
    progress: Callable[[Reader, int], None] | None = None,
) -> int:
    """Every frame of `r` decoded and handed to `process`; the number of frames.
    `progress(reader, frames)` every 65 536 frames and at the end. Raises CaptureError and
    UnsupportedLinktype."""
    mm = r.mm
    unpack16 = U16.unpack_from
    ethernet = LINKTYPE_ETHERNET
    raw_links = RAW_LINKS
    ip_types = IP_ETHERTYPES
    vlan_types = VLAN_ETHERTYPES
    n = 0
    for ts, link, start, end in spans(r):
        n += 1
        if not n & 0xFFFF and progress is not None:
            r.offset = end
            progress(r, n)
        if link == ethernet and end - start >= 34:
            etype = unpack16(mm, start + 12)[0]
            if etype in ip_types:
                pkt = decode_ip(mm[start:end], ts, stats, 14)
            elif etype in vlan_types and unpack16(mm, start + 16)[0] in ip_types:
                pkt = decode_ip(mm[start:end], ts, stats, 18)
            else:
                pkt = decode_frame(mm[start:end], link, ts, stats)
        elif link in raw_links:
            pkt = decode_ip(mm[start:end], ts, stats, 0)
        elif link in LINKTYPES:
            pkt = decode_frame(mm[start:end], link, ts, stats)
        else:
            stats.bad("unsupported_linktype")
            continue
        if pkt is not None:
            process(pkt)
    if progress is not None:
        progress(r, n)
    return n


__all__ = [
    "ETH_V4_HEAD",
    "V4_HEAD",
    "CaptureError",
    "UnsupportedLinktype",
    "decode",
    "ip_start",
    "run",
    "spans",
]
