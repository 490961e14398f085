"""`bruteforce`: one host making many login attempts on one service of another.

Password-guessing tools (hydra, ncrack, crowbar, botnets hitting RDP and SSH) open a new
connection for every attempt or every few attempts, so the attempts show as a stream of
connection heads from one source to one login port of one target. An attempt counts when the
service accepts the connection (its SYN-ACK): a refused port is a scan, not a login, and a
session that stays open is one connection however long it lasts. `attempts` accepted
connections within `window` seconds start an episode, reported at once; later attempts join it,
and when the pair has been quiet for `window` seconds a closing alert carries the rest of the
count. Someone logging in a few times, or a client holding one long session, stays well below.

State is bounded: at most `max_pairs` source/target/port triples (least recently active
forgotten first), each holding at most `attempts` timestamps.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from appliance.alerts.model import Signature
from appliance.detect.base import Detector, Loader, Options
from appliance.detect.detectors._behaviour import (
    SERVICE_NAMES,
    direction_name,
)
from appliance.packet.decode import ACK, SYN, TCP, ip_to_str
from appliance.packet.flows import DIR_INBOUND, DIR_INTERNAL, DIR_OUTBOUND

if TYPE_CHECKING:
    from appliance.detect.engine import Context
    from appliance.packet.decode import Packet
    from appliance.packet.flows import Flow

CATEGORY = "Brute force"
INBOUND = Signature(
    8103001,
    "Brute force: many login attempts from the internet on an office computer",
    CATEGORY,
    1,
)
OUTBOUND = Signature(
    8103002,
    "Brute force: an office computer made many login attempts on an internet service"
    " (it may be infected or misused)",
    CATEGORY,
    1,
)
INTERNAL = Signature(
    8103003,
    "Brute force: an office computer made many login attempts on another office computer"
    " (it may be infected or misused)",
    CATEGORY,
    1,
)
UNKNOWN = Signature(
    8103004, "Brute force: one host made many login attempts on another", CATEGORY, 2
)
BY_DIRECTION = {DIR_INBOUND: INBOUND, DIR_OUTBOUND: OUTBOUND, DIR_INTERNAL: INTERNAL}

# Login services: SSH, Telnet, FTP, RDP, SMB, VNC, WinRM and databases.
DEFAULT_PORTS = (21, 22, 23, 445, 1433, 1521, 3306, 3389, 5432, 5900, 5901, 5985, 5986)
PROGRESS_EVERY = 900.0


class _Pair:
    """Attempts of one source on one service of one target."""

    __slots__ = (
        "first",
        "flow",
        "last",
        "reported",
        "reported_at",
        "sig",
        "times",
        "total",
    )

    def __init__(self, attempts: int) -> None:
        self.times: deque[float] = deque(maxlen=attempts)
        self.first = self.last = 0.0
        self.total = 0  # attempts in the episode; 0 while there is none
        self.reported = 0
        self.reported_at = 0.0
        self.flow: Flow | None = None
        self.sig = UNKNOWN


class BruteForceDetector(Detector):
    name = "bruteforce"
    # replay --workers (Detector.partition): state per (client, server, port).
    partition = "client"
    packet_first_only = True  # an attempt is the server's first packet (its SYN-ACK)
    signatures = (INBOUND, OUTBOUND, INTERNAL, UNKNOWN)

    def __init__(self) -> None:
        self.ports = frozenset(DEFAULT_PORTS)
        self.packet_ports = self.ports  # the engine calls the packet hook for these only
        self.attempts = 10
        self.window = 120.0
        self.max_pairs = 4096
        self._pairs: OrderedDict[tuple[bytes, bytes, int], _Pair] = OrderedDict()
        self._episodes: dict[tuple[bytes, bytes, int], _Pair] = {}
        self._next_progress = float("inf")  # earliest progress report due (skips idle ticks)

    @classmethod
    def load(cls, loader: Loader) -> None:
        loader.add_option(
            "ports",
            tuple[int, ...],
            DEFAULT_PORTS,
            "TCP ports of login services watched (SSH, Telnet, FTP, RDP, SMB, VNC, WinRM,"
            " SQL databases).",
            range=(1, 65535),
            remote=True,
        )
        loader.add_option(
            "attempts",
            int,
            10,
            "Accepted connections from one host to one login service of another, within the"
            " window, that make a brute-force attempt.",
            range=(2, 100_000),
            remote=True,
        )
        loader.add_option(
            "window",
            float,
            120.0,
            "Sliding window in seconds; also the quiet time ending a run.",
            range=(1, 86400),
            remote=True,
        )
        loader.add_option(
            "max_pairs",
            int,
            4096,
            "Most source/target/service triples remembered at once (oldest forgotten).",
            range=(16, 10_000_000),
            remote=True,
            remote_range=(16, 100_000),
        )

    def configure(self, opts: Options) -> None:
        if opts.attempts != self.attempts:
            self._pairs.clear()  # their timestamp rings have the old length
            self._episodes.clear()
        self.ports, self.attempts = frozenset(opts.ports), opts.attempts
        self.packet_ports = self.ports
        self.window, self.max_pairs = opts.window, opts.max_pairs

    def packet(self, ctx: Context, pkt: Packet, flow: Flow, from_client: bool) -> None:
        # An attempt is the service's SYN-ACK: the first packet from the server side.
        if (
            from_client
            or flow.pkts_s != 1
            or pkt.proto != TCP
            or pkt.flags & (SYN | ACK) != SYN | ACK
            or flow.server_port not in self.ports
        ):
            return
        key = (flow.client, flow.server, flow.server_port)
        pairs = self._pairs
        p = pairs.get(key)
        if p is None:
            if len(pairs) >= self.max_pairs:
                old_key, old = pairs.popitem(last=False)
                self._end(ctx, old_key, old)
            p = pairs[key] = _Pair(self.attempts)
        else:
            pairs.move_to_end(key)
        ts = pkt.ts
        p.last = ts
        if p.total:
            p.total += 1
            p.flow = flow
            return
        times = p.times
        times.append(ts)
        if len(times) == self.attempts and ts - times[0] <= self.window:
            p.first = times[0]
            p.total = len(times)
            p.flow = flow
            p.sig = BY_DIRECTION.get(flow.direction, UNKNOWN)
            times.clear()
            self._episodes[key] = p
            self._report(ctx, p, "started")

    def _report(self, ctx: Context, p: _Pair, status: str) -> None:
        count = p.total - p.reported
        flow = p.flow
        if count <= 0 or flow is None:
            return
        p.reported = p.total
        p.reported_at = p.last
        self._next_progress = min(self._next_progress, p.last + PROGRESS_EVERY)
        port = flow.server_port
        duration = p.last - p.first
        details: dict[str, Any] = {
            "status": status,
            "direction": direction_name(flow.direction),
            "service": SERVICE_NAMES.get(port, f"TCP port {port}"),
            "attempts": p.total,
            "duration_s": round(duration, 3),
            "per_minute": round(p.total * 60.0 / duration, 1) if duration > 0 else None,
        }
        ctx.alert(
            p.sig,
            at=p.last,
            flow=flow,
            src=ip_to_str(flow.client),
            dst=ip_to_str(flow.server),
            details=details,
            count=count,
            first_seen=p.first,
        )

    def _end(self, ctx: Context, key: tuple[bytes, bytes, int], p: _Pair) -> None:
        if self._episodes.pop(key, None) is not None:
            self._report(ctx, p, "ended")

    def tick(self, ctx: Context, now: float) -> None:
        pairs = self._pairs
        quiet = now - self.window
        while pairs:
            key = next(iter(pairs))
            p = pairs[key]
            if p.last >= quiet:
                break
            pairs.popitem(last=False)
            self._end(ctx, key, p)
        if now < self._next_progress:
            return  # no episode is due: no walk over them on every tick
        due = float("inf")
        for p in list(self._episodes.values()):
            if now - p.reported_at >= PROGRESS_EVERY:
                self._report(ctx, p, "ongoing")
                p.reported_at = max(p.reported_at, now)
            due = min(due, p.reported_at + PROGRESS_EVERY)
        self._next_progress = due

    def stats(self) -> dict[str, int]:
        """Sizes of the bounded state (for tests and telemetry)."""
        return {"pairs": len(self._pairs), "episodes": len(self._episodes)}
