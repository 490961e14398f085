"""`portscan`: one host probing many ports on another, or one port on many hosts.

A scan is nothing but connection heads, which is exactly what reaches Python. A probe counts
when it *fails*: refused (the target's first answer is a TCP RST; counted at once), unanswered
by the end of `probe_timeout` seconds (filtered ports, UDP ports answered by ICMP unreachable or
nothing), or accepted and then reset by the prober without completing the handshake (nmap's SYN
scan); FIN, NULL and Xmas probes, which no real client sends, count at once. Completed handshakes
and answered UDP are ordinary use, so a browser reaching fifty sites or passive FTP opening many
data ports on one server is no scan; nor is traceroute (its UDP ports are skipped, and probes
that an ICMP "time exceeded" says died on the way are not counted). Attempts wait in a queue in
arrival order and are judged from their flow's own flags when their timeout passes, so packets
cost no table lookup.

Per source, distinct failed targets are counted in a sliding window of `window` seconds: ports
per destination (vertical, threshold `ports`) and destinations per port (horizontal, threshold
`hosts`). Crossing either starts a scan episode, reported at once; every later failed probe of
that source joins the episode, and when the source has been quiet for `window` seconds a closing
alert carries the rest of the count (a long scan also reports its progress every 15 minutes).
So one nmap run gives two alerts whose counts add up to the ports (or hosts) it probed. A scan by
an office host has its own, more severe signatures: something on the office network is looking
for victims.

State is bounded: `max_sources` sources (least recently active dropped first), at most
`MAX_PENDING` attempts awaiting judgement, `MAX_RECENT` targets per source before an episode,
`MAX_EPISODES` episodes at once, each with a 16 KiB port bitmap and at most `MAX_HOSTS` hosts.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.detectors._behaviour import (
    address_entry,
    address_option,
    direction_class,
    direction_name,
    not_unicast,
)
from appliance.packet.addrset import AddrSet
from appliance.packet.decode import ACK, FIN, ICMP, ICMPV6, PSH, RST, SYN, TCP, UDP, URG, ip_to_str

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Port scan"
IN_VERTICAL = Signature(
    8102001,
    "Port scan: a host on the internet probed many ports on an office computer",
    CATEGORY,
    2,
)
IN_HORIZONTAL = Signature(
    8102002,
    "Port scan: a host on the internet probed one port on many office computers",
    CATEGORY,
    2,
)
OUT_VERTICAL = Signature(
    8102003,
    "Port scan: an office computer probed many ports on another computer (it may be infected)",
    CATEGORY,
    1,
)
OUT_HORIZONTAL = Signature(
    8102004,
    "Port scan: an office computer probed one port on many computers (it may be infected)",
    CATEGORY,
    1,
)
VERTICAL = Signature(8102005, "Port scan: one host probed many ports on another", CATEGORY, 2)
HORIZONTAL = Signature(8102006, "Port scan: one host probed one port on many others", CATEGORY, 2)
SIGNATURES = {
    ("in", "vertical"): IN_VERTICAL,
    ("in", "horizontal"): IN_HORIZONTAL,
    ("out", "vertical"): OUT_VERTICAL,
    ("out", "horizontal"): OUT_HORIZONTAL,
    ("unknown", "vertical"): VERTICAL,
    ("unknown", "horizontal"): HORIZONTAL,
}

# Kinds of failed probe, as bits so an episode can list what it saw.
P_SYN, P_HALF_OPEN, P_FIN, P_NULL, P_XMAS, P_ODD, P_UDP = 1, 2, 4, 8, 16, 32, 64
PROBE_NAMES = (
    (P_SYN, "TCP SYN refused or unanswered"),
    (P_HALF_OPEN, "TCP half-open (SYN scan)"),
    (P_FIN, "TCP FIN"),
    (P_NULL, "TCP NULL"),
    (P_XMAS, "TCP Xmas"),
    (P_ODD, "TCP odd flags"),
    (P_UDP, "UDP"),
)
_FLAGS6 = FIN | SYN | RST | PSH | ACK | URG
_XMAS = FIN | PSH | URG
UDP_BIT = 0x10000  # a UDP port is 0x10000 + port in an episode's port bitmap

# UDP ports of classic traceroute probes, whose unanswered or refused probes are no scan.
_TRACEROUTE_LO, _TRACEROUTE_HI = 33434, 33534

MAX_PENDING = 65536
MAX_RECENT = 1024
MAX_EPISODES = 64
MAX_HOSTS = 4096
PROGRESS_EVERY = 900.0
SAMPLE = 10


def _stealth_kind(flags: int) -> int:
    """The probe kind of a first packet with neither SYN, ACK nor RST."""
    f = flags & _FLAGS6
    if not f:
        return P_NULL
    if f == FIN:
        return P_FIN
    return P_XMAS if f == _XMAS else P_ODD


class _Episode:
    """One source's scan from recognition until it has been quiet for a window."""

    __slots__ = (
        "dst",
        "first",
        "flow",
        "hosts",
        "hosts_full",
        "kind",
        "last",
        "nports",
        "port",
        "port_max",
        "port_min",
        "ports",
        "probes",
        "reported",
        "reported_at",
        "sample_ports",
        "sig",
        "src",
        "types",
    )

    def __init__(self, kind: str, flow: Flow, dst: bytes, port: int, first: float) -> None:
        self.kind = kind
        self.sig = SIGNATURES[direction_class(flow.direction), kind]
        self.flow = flow  # the probe that tipped it: direction, protocol, source port
        self.src = ip_to_str(flow.client)
        self.dst = ip_to_str(dst)
        self.port = port & 0xFFFF
        self.first = self.last = first
        self.ports = bytearray(0x20000 // 8)
        self.nports = 0
        self.port_min = 65535
        self.port_max = 0
        self.sample_ports: list[int] = []
        self.hosts: set[bytes] = set()
        self.hosts_full = False
        self.probes = 0
        self.types = 0
        self.reported = 0
        self.reported_at = first

    def add(self, dst: bytes, pport: int, bits: int, ts: float) -> None:
        self.probes += 1
        self.types |= bits
        if ts > self.last:
            self.last = ts
        if ts < self.first:
            self.first = ts
        i, bit = pport >> 3, 1 << (pport & 7)
        ports = self.ports
        if not ports[i] & bit:
            ports[i] |= bit
            self.nports += 1
            port = pport & 0xFFFF
            self.port_min = min(self.port_min, port)
            self.port_max = max(self.port_max, port)
            if len(self.sample_ports) < SAMPLE:
                self.sample_ports.append(port)
        hosts = self.hosts
        if dst not in hosts:
            if len(hosts) < MAX_HOSTS:
                hosts.add(dst)
            else:
                self.hosts_full = True

    def count(self) -> int:
        """What the alert counts: distinct ports (vertical) or distinct hosts (horizontal)."""
        return self.nports if self.kind == "vertical" else len(self.hosts)

    def details(self, status: str) -> dict[str, Any]:
        targets = sorted(ip_to_str(h) for h in self.hosts)
        out: dict[str, Any] = {
            "scan": self.kind,
            "status": status,
            "direction": direction_name(self.flow.direction),
            "ports": self.nports,
            "hosts": len(self.hosts),
            "probes": self.probes,
            "probe_types": [name for bit, name in PROBE_NAMES if self.types & bit],
            "port_range": [self.port_min, self.port_max],
            "sample_ports": sorted(self.sample_ports),
            "targets": targets[:SAMPLE],
            "duration_s": round(self.last - self.first, 3),
        }
        if self.hosts_full:
            out["hosts_at_least"] = True
        if self.kind == "horizontal":
            out["port"] = self.port
        return out


class _Source:
    """Failed probes of one source inside the window, until an episode takes over."""

    __slots__ = ("episode", "last", "per_dst", "per_port", "recent", "types")

    def __init__(self, ts: float) -> None:
        self.last = ts
        self.recent: OrderedDict[tuple[bytes, int], float] = OrderedDict()
        self.per_dst: dict[bytes, int] = {}  # distinct ports per destination
        self.per_port: dict[int, int] = {}  # distinct destinations per port
        self.types = 0
        self.episode: _Episode | None = None

    def forget(self, key: tuple[bytes, int]) -> None:
        dst, pport = key
        n = self.per_dst[dst] - 1
        if n:
            self.per_dst[dst] = n
        else:
            del self.per_dst[dst]
        n = self.per_port[pport] - 1
        if n:
            self.per_port[pport] = n
        else:
            del self.per_port[pport]


class PortScanDetector(Detector):
    name = "portscan"
    # replay --workers (Detector.partition): state per scanning source.
    partition = "client"
    # ICMP time-exceeded notes name probes of any flow: every worker sees them.
    replicated = (ICMP, ICMPV6)
    signatures = (IN_VERTICAL, IN_HORIZONTAL, OUT_VERTICAL, OUT_HORIZONTAL, VERTICAL, HORIZONTAL)

    def __init__(self) -> None:
        self.ports = 10
        self.hosts = 20
        self.window = 60.0
        self.probe_timeout = 5.0
        self.max_sources = 4096
        self.ignore = AddrSet()
        self._pending: deque[Flow] = deque()  # connection attempts, oldest first
        self._expired: set[tuple] = set()  # attempts that died in transit (ICMP time exceeded)
        self._sources: OrderedDict[bytes, _Source] = OrderedDict()
        self._episodes: dict[bytes, _Episode] = {}

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "ports",
            int,
            10,
            "Distinct ports on one host, probed without success within the window, that make a"
            " (vertical) port scan; Maltrail's threshold is 10.",
            range=(2, MAX_RECENT),
            remote=True,
        )
        loader.add_option(
            "hosts",
            int,
            20,
            "Distinct hosts probed without success on one port within the window that make a"
            " (horizontal) scan.",
            range=(2, MAX_RECENT),
            remote=True,
        )
        loader.add_option(
            "window",
            float,
            60.0,
            "Sliding window in seconds; also the quiet time ending a scan.",
            range=(1, 86400),
            remote=True,
        )
        loader.add_option(
            "probe_timeout",
            float,
            5.0,
            "Seconds after which an unanswered connection attempt counts as a failed probe.",
            range=(0.1, 600),
            remote=True,
        )
        loader.add_option(
            "max_sources",
            int,
            4096,
            "Most probing hosts remembered at once (oldest forgotten).",
            range=(16, 10_000_000),
            remote=True,
            remote_range=(16, 100_000),
        )
        loader.add_option(
            "ignore",
            tuple[str, ...],
            (),
            "Scanners never reported: addresses or networks (the office's own vulnerability"
            " scanner, a monitoring system).",
            check=address_entry,
            remote=True,
        )

    @classmethod
    def check(cls, opts: Options) -> None:
        if opts.probe_timeout >= opts.window:
            raise opts.error("probe_timeout", f"must be shorter than window ({opts.window:g} s)")

    def configure(self, opts: Options) -> None:
        self.ports, self.hosts, self.window = opts.ports, opts.hosts, opts.window
        self.probe_timeout, self.max_sources = opts.probe_timeout, opts.max_sources
        self.ignore = address_option(opts, "ignore")

    # -- the packet path -------------------------------------------------------------------------

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # A new connection attempt joins the pending queue, judged when its timeout passes, from
        # the flow's own counters: no table lookup per packet. Only a refusal (the target's first
        # answer is a RST) counts at once, so a scan of closed ports is seen without delay.
        proto = pkt.proto
        if proto == TCP:
            flags = pkt.flags
            if from_client:
                if flow.pkts_c == 1 and not flow.pkts_s:
                    if flags & SYN:
                        if not flags & ACK:
                            self._await(ctx, flow)
                    elif not flags & (ACK | RST):
                        self._failed(ctx, flow, _stealth_kind(flags), pkt.ts)
            elif (
                flow.pkts_s == 1
                and flags & RST
                and flow.tcp_flags_c & (SYN | ACK) == SYN
                and not flow.tcp_flags_s & SYN
            ):
                self._failed(ctx, flow, P_SYN, flow.first)
        elif proto == UDP:
            if (
                from_client
                and flow.pkts_c == 1
                and not flow.pkts_s
                and not _TRACEROUTE_LO <= pkt.dport <= _TRACEROUTE_HI
            ):
                self._await(ctx, flow)
        elif proto == ICMP:
            # Time exceeded: the probe died on the way (traceroute), it reached no target.
            if pkt.icmp_type == 11 and self._pending:
                self._expired_in_transit(pkt)
        elif proto == ICMPV6 and pkt.icmp_type == 3 and self._pending:
            self._expired_in_transit(pkt)

    def _await(self, ctx: Context, flow: Flow) -> None:
        """Queue a new connection attempt until its answer (or silence) can be judged."""
        if not_unicast(flow.server):
            return
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self._timed_out(ctx, pending.popleft())
        pending.append(flow)

    def _expired_in_transit(self, pkt: Packet) -> None:
        """Remember the connection an ICMP time-exceeded message quotes (not a failed probe)."""
        data = pkt.data
        off = pkt.payload_off + 4  # past the ICMP header's unused word
        room = pkt.payload_off + pkt.payload_len - off
        if pkt.family == 4:
            if room < 28 or data[off] >> 4 != 4:
                return
            ihl = (data[off] & 0x0F) * 4
            if ihl < 20 or room < ihl + 4:
                return
            proto = data[off + 9]
            src, dst = bytes(data[off + 12 : off + 16]), bytes(data[off + 16 : off + 20])
            p = off + ihl
        else:
            if room < 44 or data[off] >> 4 != 6:
                return
            proto = data[off + 6]
            src, dst = bytes(data[off + 8 : off + 24]), bytes(data[off + 24 : off + 40])
            p = off + 40
        if proto != TCP and proto != UDP:
            return
        sport = data[p] << 8 | data[p + 1]
        dport = data[p + 2] << 8 | data[p + 3]
        if (src, sport) <= (dst, dport):  # the flow table's canonical key
            key = (proto, src, sport, dst, dport)
        else:
            key = (proto, dst, dport, src, sport)
        expired = self._expired
        if len(expired) >= MAX_PENDING:
            expired.clear()
        expired.add(key)

    def _timed_out(self, ctx: Context, flow: Flow) -> None:
        """Judge a connection attempt from what its flow saw within the timeout."""
        if flow.proto == TCP:
            s, c = flow.tcp_flags_s, flow.tcp_flags_c
            if s & SYN:
                if c & ACK:
                    return  # a completed handshake: a real connection
                bits = P_HALF_OPEN  # accepted, then reset or abandoned by the prober
            elif s & RST:
                return  # refused: counted when the RST came
            else:
                bits = P_SYN  # no answer
        elif flow.pkts_s:
            return  # answered
        else:
            bits = P_UDP
        if self._expired and flow.key in self._expired:
            self._expired.discard(flow.key)
            return
        self._failed(ctx, flow, bits, flow.first)

    # -- counting --------------------------------------------------------------------------------

    def _failed(self, ctx: Context, flow: Flow, bits: int, ts: float) -> None:
        """One failed probe from flow.client to flow.server:server_port at time `ts`."""
        src, dst = flow.client, flow.server
        if self.ignore and self.ignore.contains(src):
            return
        if not_unicast(dst):
            return
        pport = flow.server_port | UDP_BIT if flow.proto == UDP else flow.server_port
        sources = self._sources
        s = sources.get(src)
        if s is None:
            if len(sources) >= self.max_sources:
                _old, gone = sources.popitem(last=False)
                self._end(ctx, gone, "ended")
            s = sources[src] = _Source(ts)
        else:
            sources.move_to_end(src)
            if ts > s.last:
                s.last = ts
        ep = s.episode
        if ep is not None:
            ep.add(dst, pport, bits, ts)
            return
        recent = s.recent
        cutoff = ts - self.window
        while recent:
            oldest = next(iter(recent))
            if recent[oldest] >= cutoff:
                break
            del recent[oldest]
            s.forget(oldest)
        key = (dst, pport)
        s.types |= bits
        if key in recent:
            recent[key] = max(ts, recent[key])
            recent.move_to_end(key)
            return
        recent[key] = ts
        per_dst, per_port = s.per_dst, s.per_port
        nd = per_dst[dst] = per_dst.get(dst, 0) + 1
        np = per_port[pport] = per_port.get(pport, 0) + 1
        if nd >= self.ports:
            self._start(ctx, s, "vertical", flow, dst, pport)
        elif np >= self.hosts:
            self._start(ctx, s, "horizontal", flow, dst, pport)
        elif len(recent) > MAX_RECENT:
            s.forget(recent.popitem(last=False)[0])

    def _start(
        self, ctx: Context, s: _Source, kind: str, flow: Flow, dst: bytes, pport: int
    ) -> None:
        episodes = self._episodes
        if len(episodes) >= MAX_EPISODES:
            src = next(iter(episodes))
            old = self._sources.get(src)
            if old is not None:
                self._end(ctx, old, "ended")
            else:
                episodes.pop(src)
        first = min(s.recent.values())
        ep = _Episode(kind, flow, dst, pport, first)
        for (d, pp), ts in s.recent.items():
            ep.add(d, pp, 0, ts)
        ep.types = s.types
        s.recent = OrderedDict()
        s.per_dst = {}
        s.per_port = {}
        s.episode = ep
        episodes[flow.client] = ep
        self._report(ctx, ep, "started")

    def _report(self, ctx: Context, ep: _Episode, status: str) -> None:
        count = ep.count() - ep.reported
        if count <= 0:
            return
        ep.reported += count
        ep.reported_at = ep.last
        ctx.alert(
            ep.sig,
            at=ep.last,
            flow=ep.flow,
            src=ep.src,
            dst=ep.dst,
            dest_port=ep.port,
            details=ep.details(status),
            count=count,
            first_seen=ep.first,
        )

    def _end(self, ctx: Context, s: _Source, status: str) -> None:
        ep = s.episode
        if ep is None:
            return
        s.episode = None
        self._episodes.pop(ep.flow.client, None)
        self._report(ctx, ep, status)

    # -- housekeeping ----------------------------------------------------------------------------

    def tick(self, ctx: Context, now: float) -> None:
        pending = self._pending
        limit = now - self.probe_timeout
        while pending and pending[0].first <= limit:
            self._timed_out(ctx, pending.popleft())
        sources = self._sources
        quiet = now - self.window
        while sources:
            s = sources[next(iter(sources))]
            if s.last >= quiet:
                break
            sources.popitem(last=False)
            self._end(ctx, s, "ended")
        for ep in list(self._episodes.values()):
            if now - ep.reported_at >= PROGRESS_EVERY:
                self._report(ctx, ep, "ongoing")
                ep.reported_at = max(ep.reported_at, now)

    def stats(self) -> dict[str, int]:
        """Sizes of the bounded state (for tests and telemetry)."""
        return {
            "pending": len(self._pending),
            "sources": len(self._sources),
            "episodes": len(self._episodes),
        }
