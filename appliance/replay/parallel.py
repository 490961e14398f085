"""`watchpost replay --workers N`: flows spread over worker processes, output as one process.

Partition: a flow belongs to worker ``crc32(client) % N`` when its client is an office host
(direction outbound or internal), and to worker 0 otherwise (inbound and unknown-direction flows,
whose clients are outside). Every detector declares how its state is keyed
(`Detector.partition`): per flow, per flow client, or per server of flows opened from outside
(exposure); all three keep whole under this partition. A detector that declares "global" (or
none) cannot be split, and replay then runs in one process and says why.

Every worker reads the whole capture and keeps the whole flow table (so ticks, flow ageing and
the flow bound are those of one process), but decodes, dissects and runs detector hooks only for
its own flows: another worker's packet of a flow already in the table is passed over from its
headers read in place (`feed`), updating only its flow's entry. Engine state that spans flows
is kept whole in every worker: DNS answers are dissected and believed everywhere (the name
cache, the resolvers the block guard protects); detectors name the IP protocols whose packets
their hook needs in every worker (`Detector.replicated`: portscan's ICMP time-exceeded notes).

Order: alerts a packet's hooks raise come from the one worker owning the packet, in hook order;
alerts raised in a tick are put in a canonical order (detector, then the alert's fields) in
one process and in N alike, so the merged stream fed to the one alert pipeline (aggregation,
rate limit, ids) is the same alert for alert.

Bounds: the flow table's is the same in every worker and in one process. The engine's
partial-hello holders are per worker (only a flow's owner holds its hello); each worker logs
when a flow starts and stops holding, and when the merged log shows more than HOLDING_FLOWS at
once (one process would have given the oldest up) the parent replays in one process instead.
A detector's own table cap bounds each worker's share of that table, so with N workers it is
reached later; the output differs only once a cap is reached, which the run does not detect.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from appliance.alerts.model import Alert
from appliance.config import Config
from appliance.detect.base import HOOKS, Detector
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelStore
from appliance.packet.decode import LINKTYPES, DecodeStats, Packet
from appliance.packet.flows import DIR_INTERNAL, DIR_OUTBOUND, Flow, FlowTable
from appliance.replay.reader import Reader

# Partition keys a detector may declare (Detector.partition).
COMPATIBLE = frozenset({"flow", "client", "inbound-server"})
# One worker per this many bytes of capture (up to the number of cores).
BYTES_PER_WORKER = 32 << 20

TICK, PACKET = 0, 1
_LAST = (float("inf"),)  # sorts after every alert of its tick


def split_problems(detectors: list[Detector], config: Config) -> list[str]:
    """Why this engine's detectors cannot be spread over workers (empty: they can)."""
    out = []
    if config.inline.mode == "block":
        out.append("block mode (the block guard's cap counts blocks over all flows)")
    for d in detectors:
        if not config.detect.get(d.name, {}).get("enabled", True):
            continue
        key = getattr(d, "partition", "global")
        if key not in COMPATIBLE:
            out.append(f"detector {d.name}: state keyed {key!r}")
    return out


def default_workers(size: int) -> int:
    """Workers for a capture of `size` bytes: one per BYTES_PER_WORKER, at most one per core."""
    return max(1, min(os.cpu_count() or 1, size // BYTES_PER_WORKER))


def canonical(alert: Alert) -> tuple[Any, ...]:
    """An order for alerts raised in one tick that does not depend on which process raised them."""
    return (
        alert.timestamp,
        alert.signature.sid,
        alert.src_ip,
        alert.dest_ip,
        -1 if alert.src_port is None else alert.src_port,
        -1 if alert.dest_port is None else alert.dest_port,
        alert.proto,
        alert.first_seen,
        alert.count,
        json.dumps([alert.details, alert.app], sort_keys=True, default=str),
    )


class TickOrder:
    """Single-process replay: the engine's sink, putting the alerts of each tick in canonical
    order before the pipeline's own tick (install with `install`)."""

    def __init__(self, engine: Engine, sink: Callable[[Alert], None]) -> None:
        self.sink = sink
        self.order = {d.name: i for i, d in enumerate(engine.detectors)}
        self.held: list[Alert] | None = None
        self._tick = engine.tick

    def install(self, engine: Engine, pipeline_tick: Callable[[float], None]) -> None:
        engine.sink = self
        engine.tick = self.tick  # type: ignore[method-assign]
        engine.tickers[:] = [self.flush, pipeline_tick]

    def __call__(self, alert: Alert) -> None:
        if self.held is None:
            self.sink(alert)
        else:
            self.held.append(alert)

    def tick(self, now: float) -> None:
        self.held = []
        try:
            self._tick(now)
        finally:
            self.flush(now)

    def flush(self, now: float) -> None:
        held, self.held = self.held, None
        if held:
            order = self.order
            for alert in sorted(held, key=lambda a: (order.get(a.detector, -1), canonical(a))):
                self.sink(alert)


class _Holding(OrderedDict[int, Flow]):
    """The engine's table of flows holding a partial hello, logging when a flow starts and
    stops holding (`events`: packet index, +1 or -1), so the parent can tell whether one
    process, holding the flows of every worker, would have reached HOLDING_FLOWS."""

    def __init__(self, engine: PartitionEngine) -> None:
        super().__init__()
        self.engine = engine
        self.events: list[tuple[int, int]] = []

    def __setitem__(self, key: int, flow: Flow) -> None:
        if key not in self:
            self.events.append((self.engine.index, 1))
        super().__setitem__(key, flow)

    def pop(self, key: int, *default: Any) -> Any:
        if key in self:
            self.events.append((self.engine.index, -1))
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[int, Flow]:
        item = super().popitem(last)
        self.events.append((self.engine.index, -1))
        return item


def holding_bound_reached(results: list[dict[str, Any]]) -> bool:
    """Whether one process would have had more than HOLDING_FLOWS flows holding a partial hello
    at once (and given the oldest up), from the workers' holding events: a packet's hello is
    held and let go in the one worker owning the packet, so the events of all workers in packet
    order are one process's."""
    from appliance.detect import engine as engine_mod

    bound = engine_mod.HOLDING_FLOWS
    events = sorted((e for r in results for e in r["holding"]), key=lambda e: e[0])
    held = 0
    for _index, delta in events:
        held += delta
        if held > bound:
            return True
    return False


class PartitionEngine(Engine):
    """One worker's engine: the whole flow table, hooks only for its own flows."""

    def __init__(
        self, config: Config, store: IntelStore, part: int, parts: int, record: list[Any]
    ) -> None:
        self.part, self.parts = part, parts
        self.record = record  # (packet index, phase, order..., alert) and tick marks
        self.index = 0  # the current packet's index (1-based; ticks happen before it)
        self.phase = PACKET
        self.seq = 0
        self.skipped = 0  # packets of other workers passed over undecoded (`feed`)
        super().__init__(config, store, self._sink)
        self.order = {d.name: i for i, d in enumerate(self.detectors)}
        self._holding = self.holding = _Holding(self)
        self._own = self._hooks
        self._none: dict[str, list[Any]] = {name: [] for name in HOOKS}
        self._replicated: dict[int, dict[str, list[Any]]] = {}
        for d in self.detectors:
            for proto in getattr(d, "replicated", ()):
                hooks = self._replicated.setdefault(proto, {name: [] for name in HOOKS})
                hooks["packet"] += [h for h in self._own["packet"] if h[0] == d.name]
        self._mine = True
        # A lookup `feed` already made for the packet of this worker's it hands to `process`.
        self.pending: tuple[Flow, bool] | None = None
        inner = self.flows.lookup

        def lookup(pkt: Packet) -> tuple[Flow, bool]:
            pending = self.pending
            if pending is not None:  # `feed` found the flow and that it is this worker's
                self.pending = None
                self._mine = True
                self._hooks = self._own
                return pending
            flow, from_client = inner(pkt)
            self._mine = mine = self.owner(flow) == part
            self._hooks = self._own if mine else self._replicated.get(pkt.proto, self._none)
            return flow, from_client

        self.flows.lookup = lookup  # type: ignore[method-assign]

    def owner(self, flow: Flow) -> int:
        if flow.direction == DIR_OUTBOUND or flow.direction == DIR_INTERNAL:
            return zlib.crc32(flow.client) % self.parts
        return 0

    def _sink(self, alert: Alert) -> None:
        self.seq += 1
        if self.phase == TICK:
            key: tuple[Any, ...] = (self.order.get(alert.detector, -1), canonical(alert))
        else:
            key = (self.seq,)
        self.record.append((self.index, self.phase, key, alert))

    def _dissect(self, pkt: Packet, flow: Flow, from_client: bool) -> None:
        if self._mine or pkt.sport == 53 or pkt.dport == 53:  # DNS: the names every worker knows
            super()._dissect(pkt, flow, from_client)

    def tick(self, now: float) -> None:
        self._hooks = self._own
        self.phase = TICK
        try:
            super().tick(now)
        finally:
            self.phase = PACKET
        if self.part == 0:
            self.record.append((self.index, TICK, _LAST, now))


# The job a forked worker runs (set in the parent just before the workers start).
_JOB: dict[str, Any] = {}


def _worker(part: int) -> dict[str, Any]:
    job = _JOB
    record: list[Any] = []
    engine = PartitionEngine(job["config"], job["store"], part, job["parts"], record)
    stats = DecodeStats()
    r = Reader(job["path"])
    with r:
        n = feed(engine, r, stats, job["progress"] if part == 0 else None)
    if stats.ok:
        engine.index = n + 1
        engine.tick(engine.now + 1e9)
    return {
        "record": record,
        "packets": stats.ok + stats.malformed,
        "decoded": stats.ok,
        "malformed": stats.malformed,
        "truncated_at": r.truncated_at,
        "holds_given_up": engine.stats.holds_given_up,
        "holding": engine.holding.events,
        "hook_errors": dict(engine.stats.hook_errors),
        "skipped": engine.skipped,
    }


def feed(
    engine: PartitionEngine,
    r: Reader,
    stats: DecodeStats,
    progress: Callable[[Reader, int], None] | None = None,
) -> int:
    """One worker's pass over the capture; the number of frames.

    A frame whose IPv4 TCP/UDP headers are read in place (`fast.V4_HEAD`, on the conditions
    under which `decode_ip`'s fast path decodes it), that belongs to a flow already in the table
    and owned by another worker, and that is not DNS, is passed over: no copy, no decoding, no
    packet record; only what `Engine.process` does for such a packet is done (the tick that
    falls before it, and `FlowTable.lookup`'s update of the flow: activity order, counts, flags,
    last time). For the worker's own packet that update is handed to `process` (no second
    lookup). Every other frame (a flow's first packet, this worker's, DNS, ICMP, IPv6, IPv4
    with options or fragments, odd link layers, malformed ones) is decoded and processed as in
    one process. So every worker keeps the whole flow table, ticks at the same times as one
    process and decodes what it needs only."""
    from appliance.replay import fast

    mm = r.mm
    size = r.size
    part, parts = engine.part, engine.parts
    flows_of = engine.flows._table_of  # per protocol number: that class's ordered dict
    table_lookup = FlowTable.lookup.__get__(engine.flows)  # the table's own, not the wrapper
    skip_protos = frozenset(p for p in (6, 17) if p not in engine._replicated)
    eth_head = fast.ETH_V4_HEAD.unpack_from
    head = fast.V4_HEAD.unpack_from
    ip_start = fast.ip_start
    raw_links = fast.RAW_LINKS
    crc32 = zlib.crc32
    by_client = frozenset({DIR_OUTBOUND, DIR_INTERNAL})  # flows owned by their client's hash
    process = engine.process
    decode_ip = fast.decode_ip
    decode = fast.decode
    skipped = created = 0  # other workers' packets: of flows in the table, first of a flow
    last_skipped = 0
    last_ts = 0.0
    n = 0
    # pcap records are read here (the commonest case, without a generator between); pcapng
    # frames come from `Reader.spans`.
    spans: Iterator[tuple[float, int, int, int]] | None = None
    pos = 24
    if r.kind == "pcap":
        order, unit, linktype, limit = r.pcap_header()
        if linktype not in LINKTYPES:
            raise fast.UnsupportedLinktype(f"{r.path}: unsupported link type {linktype}")
        record = struct.Struct(order + "IIII").unpack_from
    else:
        spans = fast.spans(r)
        record, unit, linktype, limit = None, 0.0, 0, 0
    while True:
        if spans is None:
            if pos + 16 > size:
                break
            sec, frac, incl, _orig = record(mm, pos)  # type: ignore[misc]
            if incl > limit:
                raise r.bad_record(pos, incl, limit)
            start = pos + 16
            end = start + incl
            if end > size:
                break
            pos = end
            ts = sec + frac * unit
            link = linktype
        else:
            frame = next(spans, None)
            if frame is None:
                break
            ts, link, start, end = frame
        n += 1
        if not n & 0xFFFF and progress is not None:
            r.offset = end
            progress(r, n)
        fields: tuple[Any, ...] | None = None
        if link == 1:
            if end - start >= 48:
                fields = eth_head(mm, start)
                if fields[0] == 0x0800 and fields[1] == 0x45:
                    off = 14
                else:
                    fields = None
                    off = ip_start(mm, start, end, link)
            else:
                off = ip_start(mm, start, end, link)
        elif link in raw_links:
            off = 0
        else:
            off = -1
        if off < 0:
            pkt = decode(mm, ts, link, start, end, stats)
            if pkt is not None:
                engine.index = n
                process(pkt)
            continue
        cap = end - start - off
        if fields is None and cap >= 34 and mm[start + off] == 0x45:
            fields = (0x0800, *head(mm, start + off))
        if fields is not None:
            _etype, _vihl, total, frag, proto, src, dst, sport, dport, doff, flags = fields
            if (
                proto in skip_protos
                and not frag & 0x3FFF
                and sport != 53
                and dport != 53
                and (
                    (proto == 17 and total >= 28)
                    or (
                        cap >= 40
                        and total >= 40
                        and 20 <= (doff >> 4) * 4 <= (total if total < cap else cap) - 20
                    )
                )
            ):
                if proto == 17:
                    flags = 0
                if ts >= engine._next_tick:  # process() ticks before its lookup
                    engine.index = n
                    engine.now = ts
                    engine.tick(ts)
                if src < dst or (src == dst and sport <= dport):
                    key = (proto, src, sport, dst, dport)
                else:
                    key = (proto, dst, dport, src, sport)
                flows = flows_of[proto]
                flow = flows.get(key)
                if flow is None:  # a flow's first packet: its owner follows from the new flow
                    pkt = decode_ip(mm[start:end], ts, stats, off)
                    assert pkt is not None  # (the conditions above are decode_ip's fast path)
                    engine.stats.packets += 1
                    flow, from_client = table_lookup(pkt)
                    if flow.direction in by_client:
                        mine = crc32(flow.client) % parts == part
                    else:
                        mine = part == 0
                    if mine:
                        engine.stats.packets -= 1  # process() counts it
                        engine.pending = (flow, from_client)
                        engine.index = n
                        process(pkt)
                    else:
                        created += 1
                        last_skipped = n
                        last_ts = ts
                    continue
                # FlowTable.lookup's update of an existing flow, made here once for every
                # packet: handed to process() for this worker's own.
                flows.move_to_end(key)
                from_client = src == flow.client and sport == flow.client_port
                if from_client:
                    flow.pkts_c += 1
                    flow.tcp_flags_c |= flags
                else:
                    flow.pkts_s += 1
                    flow.tcp_flags_s |= flags
                flow.last = ts
                if flow.direction in by_client:
                    mine = crc32(flow.client) % parts == part
                else:
                    mine = part == 0
                if not mine:  # another worker's: the stats and the clock below
                    skipped += 1
                    last_skipped = n
                    last_ts = ts
                    continue
                pkt = decode_ip(mm[start:end], ts, stats, off)
                assert pkt is not None
                engine.pending = (flow, from_client)
                engine.index = n
                process(pkt)
                continue
        pkt = decode_ip(mm[start:end], ts, stats, off)
        if pkt is not None:
            engine.index = n
            process(pkt)
    if spans is None:
        r.offset = pos
        r.frames = n
        if pos < size:
            r.truncated_at = pos
    if progress is not None:
        progress(r, n)
    # The passed-over packets: decoded (they met decode_ip's fast path), counted by the engine;
    # the clock at the last packet when that was one of them (a flow's first packet included).
    stats.ok += skipped
    engine.stats.packets += skipped
    if last_skipped > engine.index:
        engine.now = last_ts
    engine.skipped = skipped + created
    return n


def run_workers(
    path: str, config: Config, store: IntelStore, parts: int, progress: Any
) -> list[dict[str, Any]]:
    """Run `parts` forked workers over the capture; their results, worker 0 first."""
    _JOB.update(path=path, config=config, store=store, parts=parts, progress=progress)
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(parts) as pool:
            return pool.map(_worker, range(parts), chunksize=1)
    finally:
        _JOB.clear()


def merged(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every worker's alerts and worker 0's tick marks in one-process order."""
    rows = [row for r in results for row in r["record"]]
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    return rows


def replay_ids(path: str, size: int) -> Callable[[], str]:
    """Alert ids for a replay: derived from the capture (its size and first 64 KiB) and the
    alert's number, so a replay gives the same output each time, with any number of workers."""
    with open(path, "rb") as f:
        head = f.read(65536)
    ns = uuid.UUID(bytes=hashlib.sha256(head + str(size).encode()).digest()[:16])
    n = 0

    def new_id() -> str:
        nonlocal n
        n += 1
        return str(uuid.uuid5(ns, str(n)))

    return new_id
