"""A bounded table of the connections whose heads we are looking at.

Only the first packets of each connection reach Python, so entries are short-lived; the table
still has hard limits (entry count, idle ageing) because a scan or flood creates a new entry per
packet. Direction comes from the bridge port a packet entered on (``Packet.side``, set by the queue
worker) or, for pcaps, from ``inline.home_nets``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from appliance.packet.addrset import AddrSet
from appliance.packet.decode import (
    ACK,
    ICMP,
    ICMPV6,
    SIDE_INTERNET,
    SIDE_OFFICE,
    SIDE_UNKNOWN,
    SYN,
    TCP,
    Packet,
)

# (proto, lower address, its port, higher address, its port): both directions share it.
FlowKey = tuple[int, bytes, int, bytes, int]

# Who started the connection, relative to the office.
DIR_UNKNOWN, DIR_OUTBOUND, DIR_INBOUND, DIR_INTERNAL = 0, 1, 2, 3
DIRECTION_NAMES = {
    DIR_UNKNOWN: "unknown",
    DIR_OUTBOUND: "outbound",
    DIR_INBOUND: "inbound",
    DIR_INTERNAL: "internal",
}

# What the engine decided about a flow; the queue worker copies it into the conntrack mark.
VERDICT_NONE, VERDICT_PASS, VERDICT_BLOCK = 0, 1, 2

# Idle seconds before an entry is forgotten.
IDLE_TIMEOUT = {TCP: 120.0, ICMP: 30.0, ICMPV6: 30.0}
DEFAULT_IDLE = 60.0


class Flow:
    """One connection as seen from its head packets; `client` is the side that opened it."""

    __slots__ = (
        "app",
        "client",
        "client_port",
        "direction",
        "family",
        "first",
        "key",
        "last",
        "notes",
        "pkts_c",
        "pkts_s",
        "proto",
        "server",
        "server_port",
        "tcp_flags_c",
        "tcp_flags_s",
        "verdict",
    )

    def __init__(self, key: FlowKey, pkt: Packet, client_is_src: bool) -> None:
        self.key = key
        self.proto = pkt.proto
        self.family = pkt.family
        if client_is_src:
            self.client, self.client_port = pkt.src, pkt.sport
            self.server, self.server_port = pkt.dst, pkt.dport
        else:
            self.client, self.client_port = pkt.dst, pkt.dport
            self.server, self.server_port = pkt.src, pkt.sport
        self.first = self.last = pkt.ts
        self.pkts_c = self.pkts_s = 0
        self.tcp_flags_c = self.tcp_flags_s = 0
        self.direction = DIR_UNKNOWN
        self.verdict = VERDICT_NONE
        self.app = ""
        # Per-detector scratch space, created on first use: {detector name: state}.
        self.notes: dict[str, Any] | None = None

    @property
    def established(self) -> bool:
        """For TCP: both sides sent SYN and the client acknowledged (a completed handshake)."""
        return bool(self.tcp_flags_s & SYN and self.tcp_flags_s & ACK and self.pkts_c >= 2)

    def note(self, name: str) -> dict[str, Any]:
        """Scratch dict for detector `name` on this flow."""
        if self.notes is None:
            self.notes = {}
        d = self.notes.get(name)
        if d is None:
            d = self.notes[name] = {}
        return d


class FlowTable:
    """Flows by canonical 5-tuple, bounded in count and aged by idleness."""

    def __init__(self, max_flows: int, home_nets: AddrSet) -> None:
        self.max_flows = max_flows
        self.home = home_nets
        self._flows: dict[FlowKey, Flow] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def lookup(self, pkt: Packet) -> tuple[Flow, bool]:
        """The packet's flow (created if new) and whether the packet goes client → server."""
        src, dst, sport, dport = pkt.src, pkt.dst, pkt.sport, pkt.dport
        if (src, sport) <= (dst, dport):
            key = (pkt.proto, src, sport, dst, dport)
        else:
            key = (pkt.proto, dst, dport, src, sport)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._create(key, pkt)
        from_client = src == flow.client and sport == flow.client_port
        if from_client:
            flow.pkts_c += 1
            flow.tcp_flags_c |= pkt.flags
        else:
            flow.pkts_s += 1
            flow.tcp_flags_s |= pkt.flags
        flow.last = pkt.ts
        return flow, from_client

    def _create(self, key: FlowKey, pkt: Packet) -> Flow:
        if len(self._flows) >= self.max_flows:
            # Oldest-created first: dicts keep insertion order, so this is O(1).
            del self._flows[next(iter(self._flows))]
            self.evicted += 1
        client_is_src = True
        if pkt.proto == TCP:
            # A SYN-ACK as first sight (mid-handshake capture): the receiver opened it.
            client_is_src = not (pkt.flags & SYN and pkt.flags & ACK)
        elif pkt.sport and pkt.dport:
            # UDP and others: a well-known source port answering an ephemeral one is the server.
            client_is_src = not (pkt.sport < 1024 <= pkt.dport)
        flow = Flow(key, pkt, client_is_src)
        flow.direction = self._direction(pkt, client_is_src)
        self._flows[key] = flow
        return flow

    def _direction(self, pkt: Packet, client_is_src: bool) -> int:
        side = pkt.side
        if side != SIDE_UNKNOWN:
            client_side = side if client_is_src else (SIDE_OFFICE + SIDE_INTERNET - side)
            return DIR_OUTBOUND if client_side == SIDE_OFFICE else DIR_INBOUND
        client, server = (pkt.src, pkt.dst) if client_is_src else (pkt.dst, pkt.src)
        home = self.home
        c_home = home.contains(client)
        s_home = home.contains(server)
        if c_home and s_home:
            return DIR_INTERNAL
        if c_home:
            return DIR_OUTBOUND
        if s_home:
            return DIR_INBOUND
        return DIR_UNKNOWN

    def expire(self, now: float) -> int:
        """Forget idle flows; returns how many went."""
        dead = [
            k
            for k, f in self._flows.items()
            if now - f.last > IDLE_TIMEOUT.get(f.proto, DEFAULT_IDLE)
        ]
        for k in dead:
            del self._flows[k]
        return len(dead)
