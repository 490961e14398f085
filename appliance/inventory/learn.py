"""What an office frame says about a device: its MAC and address, and the names it goes by.

Pure functions over raw Ethernet frames (the packet socket hands them over whole): ARP (address
and MAC), DHCP (host name option 12, client FQDN option 81, the address a server acknowledged),
mDNS and LLMNR answers (``name.local`` -> address), NetBIOS name registrations and answers, and
unicast DNS PTR answers an office device receives for an office address. Every read is bounded
and a malformed frame yields nothing, never an exception.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_ntop

from appliance.detect.dissect.dns import parse_dns

ETH_IP4, ETH_IP6, ETH_ARP, ETH_VLAN = 0x0800, 0x86DD, 0x0806, 0x8100
DHCP_PORTS = (67, 68)
MDNS, LLMNR, NBNS, DNS = 5353, 5355, 137, 53
MAX_NAME = 63
DHCP_MAGIC = b"\x63\x82\x53\x63"


@dataclass(frozen=True, slots=True)
class Seen:
    """One thing learnt: `ip` has `mac` and/or goes by `name` (learnt from `source`)."""

    ip: str
    mac: str = ""
    name: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Syn:
    """A device opened a TCP connection (the first SYN) to `dest`."""

    src: str
    dest: str


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def clean_name(raw: str) -> str:
    """A host name as shown: printable, no trailing dot or `.local`, at most 63 characters."""
    name = "".join(c for c in raw if c.isprintable() and c not in "<>\"'&").strip().rstrip(".")
    for suffix in (".local", ".lan", ".home"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name[:MAX_NAME]


def parse_frame(frame: bytes) -> list[Seen | Syn]:
    try:
        return _parse(frame)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return []


def _parse(frame: bytes) -> list[Seen | Syn]:
    if len(frame) < 14:
        return []
    src_mac = frame[6:12]
    (etype,) = struct.unpack_from("!H", frame, 12)
    off = 14
    if etype == ETH_VLAN:
        (etype,) = struct.unpack_from("!H", frame, 16)
        off = 18
    if etype == ETH_ARP:
        return _arp(frame, off)
    if etype == ETH_IP4:
        if len(frame) < off + 20:
            return []
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        flags_frag = struct.unpack_from("!H", frame, off + 6)[0]
        if flags_frag & 0x1FFF or ihl < 20:
            return []
        src = inet_ntop(AF_INET, frame[off + 12 : off + 16])
        dst = inet_ntop(AF_INET, frame[off + 16 : off + 20])
        l4 = off + ihl
    elif etype == ETH_IP6:
        if len(frame) < off + 40:
            return []
        proto = frame[off + 6]
        src = inet_ntop(AF_INET6, frame[off + 8 : off + 24])
        dst = inet_ntop(AF_INET6, frame[off + 24 : off + 40])
        l4 = off + 40
    else:
        return []
    if proto == 6:
        flags = frame[l4 + 13]
        return [Syn(src, dst)] if flags & 0x12 == 0x02 else []
    if proto != 17:
        return []
    sport, dport = struct.unpack_from("!HH", frame, l4)
    payload = frame[l4 + 8 :]
    if sport in DHCP_PORTS and dport in DHCP_PORTS:
        return _dhcp(payload)
    if MDNS in (sport, dport) or sport == LLMNR:
        return _mdns(payload, src, mac_text(src_mac), "mdns" if MDNS in (sport, dport) else "llmnr")
    if NBNS in (sport, dport):
        return _netbios(payload, src, mac_text(src_mac))
    if sport == DNS:
        return _ptr(payload)
    return []


def _arp(frame: bytes, off: int) -> list[Seen | Syn]:
    htype, ptype, hlen, plen, _op = struct.unpack_from("!HHBBH", frame, off)
    if (htype, ptype, hlen, plen) != (1, ETH_IP4, 6, 4):
        return []
    mac = frame[off + 8 : off + 14]
    ip = inet_ntop(AF_INET, frame[off + 14 : off + 18])
    if ip == "0.0.0.0":
        return []
    return [Seen(ip, mac=mac_text(mac), source="arp")]


def _dhcp(p: bytes) -> list[Seen | Syn]:
    if len(p) < 240 or p[236:240] != DHCP_MAGIC or p[2] != 6:
        return []
    op = p[0]
    ciaddr = inet_ntop(AF_INET, p[12:16])
    yiaddr = inet_ntop(AF_INET, p[16:20])
    mac = mac_text(p[28:34])
    opts: dict[int, bytes] = {}
    i = 240
    while i < len(p) and len(opts) < 64:
        code = p[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        n = p[i + 1]
        opts.setdefault(code, p[i + 2 : i + 2 + n])
        i += 2 + n
    msg_type = opts.get(53, b"\x00")[0]
    name = ""
    if 81 in opts and len(opts[81]) > 3:
        flags, data = opts[81][0], opts[81][3:]
        name = _wire_name(data) if flags & 0x04 else data.decode("ascii", "replace")
        name = name.split(".")[0]
    if not name and 12 in opts:
        name = opts[12].decode("ascii", "replace")
    ip = ""
    if op == 2 and msg_type == 5:  # DHCPACK: the server gave this address to that MAC
        ip = yiaddr
    elif op == 1:
        requested = opts.get(50, b"")
        ip = (
            ciaddr
            if ciaddr != "0.0.0.0"
            else (inet_ntop(AF_INET, requested) if len(requested) == 4 else "")
        )
    if not ip or ip == "0.0.0.0":
        return []
    return [Seen(ip, mac=mac, name=clean_name(name), source="dhcp")]


def _wire_name(data: bytes) -> str:
    labels: list[str] = []
    i = 0
    while i < len(data) and data[i] and len(labels) < 16:
        n = data[i]
        labels.append(data[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels)


def _mdns(p: bytes, src: str, mac: str, source: str) -> list[Seen | Syn]:
    msg = parse_dns(p)
    if msg is None or not msg.response:
        return []
    out: list[Seen | Syn] = []
    for a in msg.answers:
        if a.rrtype in (1, 28) and a.data:
            name = clean_name(a.name)
            if name and not name.startswith("_"):
                out.append(Seen(a.data, mac=mac if a.data == src else "", name=name, source=source))
    return out


def _nb_name(encoded: bytes) -> str:
    if len(encoded) != 32:
        return ""
    raw = bytes(((encoded[i] - 0x41) << 4) | (encoded[i + 1] - 0x41) for i in range(0, 32, 2))
    if raw[15] not in (0x00, 0x20):  # workstation / server names, not group or service names
        return ""
    return raw[:15].decode("ascii", "replace").strip()


def _netbios(p: bytes, src: str, mac: str) -> list[Seen | Syn]:
    if len(p) < 12 + 34:
        return []
    flags = struct.unpack_from("!H", p, 2)[0]
    opcode = (flags >> 11) & 0x0F
    response = bool(flags & 0x8000)
    if p[12] != 32:
        return []
    name = _nb_name(p[13:45])
    if not name or name.startswith("__"):
        return []
    if opcode in (5, 8) and not response:  # registration / refresh: the sender's own name
        return [Seen(src, mac=mac, name=clean_name(name), source="netbios")]
    if opcode == 0 and response:  # an answer: the address is in the record data
        off = 12 + 34 + 10  # name (34 with terminator), type, class, ttl, rdlength
        if len(p) >= off + 6:
            ip = inet_ntop(AF_INET, p[off + 2 : off + 6])
            return [Seen(ip, name=clean_name(name), source="netbios")]
    return []


def _ptr(p: bytes) -> list[Seen | Syn]:
    msg = parse_dns(p)
    if msg is None or not msg.response or msg.qtype != 12:
        return []
    ip = reverse_address(msg.qname)
    if not ip:
        return []
    for a in msg.answers:
        if a.rrtype == 12 and a.data and a.name.lower() == msg.qname:
            name = clean_name(a.data.split(".")[0]) if "." in a.data else clean_name(a.data)
            return [Seen(ip, name=name, source="ptr")] if name else []
    return []


def reverse_address(qname: str) -> str:
    """The address an in-addr.arpa / ip6.arpa name stands for ("" if it is not one)."""
    try:
        if qname.endswith(".in-addr.arpa"):
            parts = qname[: -len(".in-addr.arpa")].split(".")
            if len(parts) == 4:
                return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        if qname.endswith(".ip6.arpa"):
            nibbles = qname[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32:
                h = "".join(reversed(nibbles))
                return str(ipaddress.IPv6Address(int(h, 16)))
    except ValueError:
        return ""
    return ""
