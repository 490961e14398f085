"""A bounded table of the connections whose heads we are looking at.

Only the first packets of each connection reach Python, so entries are short-lived; the table
still has hard limits (entry count, idle ageing) because a scan or flood creates a new entry per
packet. Ageing costs O(expired), never a scan of the table: flows live in one ordered dict per
idle timeout (TCP, ICMP, the rest), each kept in last-activity order (moved to the end on every
packet), so the idle ones are always at the front. Direction comes from the bridge port a
packet entered on (``Packet.side``, set by the queue worker) or, for pcaps, from
``inline.home_nets``.
"""

from __future__ import annotations

from collections import OrderedDict
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

# Who started the connection, relative to the office.
DIR_UNKNOWN, DIR_OUTBOUND, DIR_INBOUND, DIR_INTERNAL = 0, 1, 2, 3
DIRECTION_NAMES = {
    DIR_UNKNOWN: "unknown",
    DIR_OUTBOUND: "outbound",
    DIR_INBOUND: "inbound",
    DIR_INTERNAL: "internal",
}

# What the engine decided about a flow; the queue worker copies it into the conntrack mark.
# DEEP: no verdict yet, and the flow (a cleartext protocol found by content) wants a longer head
# than `inline.head_packets`: the kernel queues it up to the deep bound (port DEEP_ANY_PORT of
# `Engine.deep_ports`), the engine passes it once its protocol's head is seen.
VERDICT_NONE, VERDICT_PASS, VERDICT_BLOCK, VERDICT_DEEP = 0, 1, 2, 3
DEEP_ANY_PORT = 0

# Idle seconds before an entry is forgotten.
IDLE_TIMEOUT = {TCP: 120.0, ICMP: 30.0, ICMPV6: 30.0}
DEFAULT_IDLE = 60.0


# (proto, client address, client port, server address, server port)
FlowKey = tuple[int, bytes, int, bytes, int]


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
    """Flows by canonical 5-tuple, bounded in count and aged by idleness.

    One OrderedDict per idle timeout, in last-activity order: `expire` pops idle flows off the
    fronts and stops at the first live one; the count bound evicts the least recently active
    flow of all (the oldest of the three fronts).
    """

    def __init__(self, max_flows: int, home_nets: AddrSet) -> None:
        self.max_flows = max_flows
        self.home = home_nets
        tcp: OrderedDict[FlowKey, Flow] = OrderedDict()
        icmp: OrderedDict[FlowKey, Flow] = OrderedDict()
        other: OrderedDict[FlowKey, Flow] = OrderedDict()
        # (flows, idle timeout) per class; `_by_proto` picks a protocol's class.
        self._classes = (
            (tcp, IDLE_TIMEOUT[TCP]),
            (icmp, IDLE_TIMEOUT[ICMP]),
            (other, DEFAULT_IDLE),
        )
        self._by_proto = {TCP: tcp, ICMP: icmp, ICMPV6: icmp}
        # The same as a list indexed by protocol number (a byte): one index per packet.
        self._table_of = [self._by_proto.get(n, other) for n in range(256)]
        self._other = other
        self._count = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Flow]:
        return iter([f for flows, _ in self._classes for f in flows.values()])

    def lookup(self, pkt: Packet) -> tuple[Flow, bool]:
        """The packet's flow (created if new) and whether the packet goes client → server."""
        src = pkt.src
        dst = pkt.dst
        sport = pkt.sport
        dport = pkt.dport
        proto = pkt.proto
        # The canonical key: the lower (address, port) end first.
        if src < dst or (src == dst and sport <= dport):
            key = (proto, src, sport, dst, dport)
        else:
            key = (proto, dst, dport, src, sport)
        flows = self._table_of[proto]
        try:  # (a hit, the common case, costs less than `get`; a new flow a little more)
            flow = flows[key]
        except KeyError:
            flow = self._create(flows, key, pkt)
        else:
            flows.move_to_end(key)
        flow.last = pkt.ts
        if sport == flow.client_port and src == flow.client:
            flow.pkts_c += 1
            flow.tcp_flags_c |= pkt.flags
            return flow, True
        flow.pkts_s += 1
        flow.tcp_flags_s |= pkt.flags
        return flow, False

    def _evict_one(self) -> None:
        """Forget the least recently active flow (the oldest front of the three classes)."""
        oldest: OrderedDict[FlowKey, Flow] | None = None
        when = 0.0
        for flows, _ in self._classes:
            if flows:
                f = flows[next(iter(flows))]
                if oldest is None or f.last < when:
                    oldest, when = flows, f.last
        if oldest is not None:
            oldest.popitem(last=False)
            self._count -= 1
            self.evicted += 1

    def _create(self, flows: OrderedDict[FlowKey, Flow], key: FlowKey, pkt: Packet) -> Flow:
        while self._count >= self.max_flows:
            self._evict_one()
        client_is_src = True
        if pkt.proto == TCP:
            # A SYN-ACK as first sight (mid-handshake capture): the receiver opened it.
            client_is_src = not (pkt.flags & SYN and pkt.flags & ACK)
        elif pkt.sport and pkt.dport:
            # UDP and others: a well-known source port answering an ephemeral one is the server.
            client_is_src = not (pkt.sport < 1024 <= pkt.dport)
        flow = Flow(key, pkt, client_is_src)
        flow.direction = self._direction(pkt, client_is_src)
        flows[key] = flow
        self._count += 1
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
        """Forget idle flows; returns how many went. O(expired): each class is in activity
        order, so the walk stops at the first flow that is still live."""
        gone = 0
        for flows, idle in self._classes:
            limit = now - idle
            while flows:
                key = next(iter(flows))
                if flows[key].last >= limit:
                    break
                del flows[key]
                gone += 1
        self._count -= gone
        self.expired += gone
        return gone
