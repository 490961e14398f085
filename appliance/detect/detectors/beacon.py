"""`beacon`: an office computer calling the same destination at regular intervals.

Malware checks in with its controller on a timer (Cobalt Strike's default is every 60 s, with up
to 50 % random jitter); people and browsers come back irregularly. Every new outbound connection
is a call to its destination: the DNS name the server address was answered for when known (so a
controller behind rotating addresses is one destination), else the address, plus port and
protocol. Connections less than `burst` seconds after the previous call belong to that call (a
check-in may open several). Over the last (up to 32) intervals between calls, from `min_calls`
calls on and spanning at least `min_span` seconds, the median interval must lie between
`min_period` and `max_period` and the median absolute deviation must be at most `jitter` times
the median. That test is robust to a missed or extra call, and separates well: uniform jitter of
50 % gives MAD/median of about 0.17, random visits (exponential gaps) about 0.7. Because it is
re-run at every call, small samples would let irregular series through by chance: simulated,
10 calls and 0.25 let 7 % of 60-visit random series fire, while the defaults (20 calls, 0.2)
let none of 400 random 300-visit series fire and still catch 50 %-jitter beacons by their
20th to 23rd call.

A once-a-day update check never gathers enough calls, and state for a destination is forgotten
after two `max_period`s of silence. Time sync, DNS and discovery ports are ignored, and so are
destinations in `ignore` / `ignore_names` (connectivity checks and the like by default). Each
beaconing pair is reported when recognised and again at most every `realert` seconds, with the
calls since.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.detectors._behaviour import (
    address_entry,
    address_option,
    direction_name,
    lan_private,
    not_unicast,
)
from appliance.packet.addrset import AddrSet
from appliance.packet.decode import ACK, SYN, TCP, UDP, ip_to_str
from appliance.packet.flows import DIR_OUTBOUND, DIR_UNKNOWN

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Beaconing"


def _normal_name(raw: str) -> str:
    return raw.strip().strip(".").lower()


def _dns_name(raw: str) -> None:
    """a DNS name"""
    name = _normal_name(raw)
    if not name or any(c.isspace() for c in name) or ".." in name:
        raise ValueError(f"not a DNS name: {raw!r}")


OUTBOUND = Signature(
    8108001,
    "Beaconing: an office computer contacts the same server at regular intervals,"
    " as malware checking in with its controller does",
    CATEGORY,
    2,
)
UNKNOWN = Signature(
    8108002,
    "Beaconing: one host contacts the same server at regular intervals",
    CATEGORY,
    2,
)

# DNS, NTP, DHCP, NetBIOS, SSDP, mDNS, LLMNR, WS-Discovery: periodic by nature.
DEFAULT_IGNORE_PORTS = (53, 67, 68, 123, 137, 138, 1900, 3702, 5353, 5355)
DEFAULT_IGNORE_NAMES: tuple[str, ...] = (
    "msftconnecttest.com",
    "msftncsi.com",
    "connectivitycheck.gstatic.com",
    "connectivitycheck.android.com",
    "captive.apple.com",
    "time.windows.com",
    "time.apple.com",
    "pool.ntp.org",
)
RING = 32  # intervals kept per destination


class _Calls:
    """Calls from one office host to one destination."""

    __slots__ = (
        "alerted_at",
        "calls",
        "first",
        "flow",
        "ignored",
        "last",
        "n",
        "pos",
        "ring",
        "since",
    )

    def __init__(self, ts: float, ignored: bool) -> None:
        self.first = self.last = ts  # first call, start of the latest call
        self.ignored = ignored
        self.calls = 1
        self.since = 1  # calls not yet reported
        self.ring: array[float] | None = None  # intervals, created at the second call
        self.pos = 0
        self.n = 0
        self.alerted_at = float("-inf")
        self.flow: Flow | None = None


def _median(sorted_vals: list[float]) -> float:
    n = len(sorted_vals)
    mid = n // 2
    return sorted_vals[mid] if n % 2 else (sorted_vals[mid - 1] + sorted_vals[mid]) / 2.0


class BeaconDetector(Detector):
    name = "beacon"
    # replay --workers (Detector.partition): state per client, server name or address, port.
    partition = "client"
    packet_first_only = True  # a call is a connection's first packet
    signatures = (OUTBOUND, UNKNOWN)

    def __init__(self) -> None:
        self.min_calls = 20
        self.min_period = 10.0
        self.max_period = 3600.0
        self.jitter = 0.2
        self.min_span = 300.0
        self.burst = 2.0
        self.realert = 3600.0
        self.max_tracked = 20000
        self.ignore_ports = frozenset(DEFAULT_IGNORE_PORTS)
        self.ignore_names = DEFAULT_IGNORE_NAMES
        self.ignore = AddrSet()
        # A destination called once holds just the time of that call (most are never called
        # again); the second call makes it a `_Calls`.
        self._calls: OrderedDict[tuple[Any, ...], _Calls | float] = OrderedDict()

    @classmethod
    def load(cls, loader: Loader) -> None:
        add = loader.add_option
        add(
            "min_calls",
            int,
            20,
            f"Calls to one destination needed before judging regularity (4-{RING + 1}).",
            range=(4, RING + 1),
            remote=True,
        )
        add(
            "min_period",
            float,
            10.0,
            "Shortest median interval (seconds) called beaconing.",
            range=(0.1, 86400),
            remote=True,
        )
        add(
            "max_period",
            float,
            3600.0,
            "Longest median interval (seconds) called beaconing.",
            range=(0.1, 7 * 86400),
            remote=True,
        )
        add(
            "jitter",
            float,
            0.2,
            "Largest median absolute deviation of the intervals, as a fraction of their median.",
            range=(0.0, 1.0),
            remote=True,
        )
        add(
            "min_span",
            float,
            300.0,
            "Seconds the judged calls must span at least.",
            range=(0.0, 7 * 86400),
            remote=True,
        )
        add(
            "burst",
            float,
            2.0,
            "Connections this close (seconds) to a call belong to it.",
            range=(0.0, 3600),
            remote=True,
        )
        add(
            "realert",
            float,
            3600.0,
            "Seconds between reports about the same beaconing pair.",
            range=(1, 30 * 86400),
            remote=True,
        )
        add(
            "max_tracked",
            int,
            20000,
            "Most host/destination pairs remembered at once.",
            range=(16, 10_000_000),
            remote=True,
            remote_range=(16, 200_000),
        )
        add(
            "ignore_ports",
            tuple[int, ...],
            DEFAULT_IGNORE_PORTS,
            "Destination ports never judged (DNS, NTP, DHCP, discovery protocols).",
            range=(1, 65535),
            remote=True,
        )
        add(
            "ignore_names",
            tuple[str, ...],
            DEFAULT_IGNORE_NAMES,
            "DNS names (and their subdomains) never reported: connectivity checks, time sync.",
            check=_dns_name,
            remote=True,
        )
        add(
            "ignore",
            tuple[str, ...],
            (),
            "Destination addresses or networks never reported.",
            check=address_entry,
            remote=True,
        )

    @classmethod
    def check(cls, opts: Options) -> None:
        if opts.max_period <= opts.min_period:
            raise opts.error("max_period", f"must be above min_period ({opts.min_period:g})")
        if opts.burst >= opts.min_period:
            raise opts.error("burst", f"must be below min_period ({opts.min_period:g})")

    def configure(self, opts: Options) -> None:
        self.min_calls, self.min_period, self.max_period = (
            opts.min_calls,
            opts.min_period,
            opts.max_period,
        )
        self.jitter, self.min_span, self.burst = opts.jitter, opts.min_span, opts.burst
        self.realert, self.max_tracked = opts.realert, opts.max_tracked
        self.ignore_ports = frozenset(opts.ignore_ports)
        self.ignore = address_option(opts, "ignore")
        self.ignore_names = tuple(_normal_name(n) for n in opts.ignore_names)

    def _ignored(self, name: str, server: bytes) -> bool:
        if self.ignore and self.ignore.contains(server):
            return True
        return bool(name) and any(name == n or name.endswith("." + n) for n in self.ignore_names)

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # A call is the first packet of a new connection from the office side.
        if not from_client or flow.pkts_c != 1 or flow.pkts_s:
            return
        proto = pkt.proto
        if proto == TCP:
            if pkt.flags & (SYN | ACK) != SYN:
                return
        elif proto != UDP:
            return
        port = flow.server_port
        if port in self.ignore_ports:
            return
        direction = flow.direction
        server = flow.server
        if direction != DIR_OUTBOUND and (direction != DIR_UNKNOWN or lan_private(server)):
            return
        name = ctx.names.get(server)
        key = (flow.client, name or server, port, proto)
        calls = self._calls
        c = calls.get(key)
        ts = pkt.ts
        if c is None:
            if not_unicast(server):
                return
            if len(calls) >= self.max_tracked:
                calls.popitem(last=False)
            calls[key] = ts
            return
        calls.move_to_end(key)
        if not isinstance(c, _Calls):
            if ts - c < self.burst:
                return
            first = c
            c = calls[key] = _Calls(first, self._ignored(name, server))
        gap = ts - c.last
        if c.ignored or gap < self.burst:
            if c.ignored:
                c.last = ts
            return
        c.last = ts
        ring = c.ring
        if ring is None:
            ring = c.ring = array("d", bytes(8 * RING))
        ring[c.pos] = gap
        c.pos = (c.pos + 1) % RING
        if c.n < RING:
            c.n += 1
        c.calls += 1
        c.since += 1
        c.flow = flow
        if c.n + 1 >= self.min_calls and ts - c.alerted_at >= self.realert:
            self._judge(ctx, c, name, ts)

    def _judge(self, ctx: Context, c: _Calls, name: str, ts: float) -> None:
        assert c.ring is not None and c.flow is not None
        vals = sorted(c.ring[: c.n])
        period = _median(vals)
        if not self.min_period <= period <= self.max_period or sum(vals) < self.min_span:
            return
        mad = _median(sorted(abs(v - period) for v in vals))
        if mad > self.jitter * period:
            return
        flow = c.flow
        sig = OUTBOUND if flow.direction == DIR_OUTBOUND else UNKNOWN
        details: dict[str, Any] = {
            "direction": direction_name(flow.direction),
            "period_s": round(period, 3),
            "jitter": round(mad / period, 3),
            "calls": c.calls,
            "intervals_judged": c.n,
            "span_s": round(ts - c.first, 3),
            "port": flow.server_port,
            "proto": "TCP" if flow.proto == TCP else "UDP",
        }
        if name:
            details["name"] = name
        ctx.alert(
            sig,
            flow=flow,
            src=ip_to_str(flow.client),
            dst=ip_to_str(flow.server),
            details=details,
            count=c.since,
            first_seen=c.first if c.alerted_at == float("-inf") else c.alerted_at,
        )
        c.since = 0
        c.alerted_at = ts

    def tick(self, ctx: Context, now: float) -> None:
        calls = self._calls
        idle = now - 2 * self.max_period - self.burst
        while calls:
            c = calls[next(iter(calls))]
            if (c.last if isinstance(c, _Calls) else c) >= idle:
                break
            calls.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """Sizes of the bounded state (for tests and telemetry)."""
        return {"tracked": len(self._calls)}
