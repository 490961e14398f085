"""Per-packet cost of the behaviour detectors (portscan, bruteforce, exposure, beacon).

Each detector runs alone in a fresh engine over the same decoded packets, with its hooks wrapped
in a nanosecond timer; a no-op detector wrapped the same way gives the timer's own overhead
(subtracted) and the baseline: the whole engine's time per packet (flow table, dissectors).
Figures are the best of several rounds, since the build machine is shared. Two mixes: the
office mix of `bench.engine` (ordinary flows) and a scan mix (a 1 000-port SYN scan with RST
answers, UDP probes with ICMP unreachables, SSH handshakes: work for every detector).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror

from appliance.alerts.pipeline import AlertPipeline
from appliance.detect.base import Detector
from appliance.detect.engine import Engine
from appliance.detect.registry import create_detectors
from appliance.packet.decode import DecodeStats, decode_ip
from bench.engine import _config, _intel, office_mix

DETECTORS = ("portscan", "bruteforce", "exposure", "beacon")


def scan_mix() -> list[bytes]:
    """Attack traffic: SYN scan + RSTs, UDP probes + ICMP unreachable, SSH handshakes."""
    atk, pc = "198.51.100.23", "198.18.0.12"
    out: list[bytes] = []
    for port in range(1, 1001):
        out.append(bytes(IP(src=atk, dst=pc) / TCP(sport=54321, dport=port, flags="S")))
        out.append(bytes(IP(src=pc, dst=atk) / TCP(sport=port, dport=54321, flags="RA")))
    for port in range(1, 201):
        probe = IP(src=atk, dst=pc) / UDP(sport=45000, dport=port)
        out.append(bytes(probe))
        out.append(bytes(IP(src=pc, dst=atk) / ICMP(type=3, code=3) / IPerror(bytes(probe)[:28])))
    for i in range(300):
        c, s = IP(src=atk, dst=pc), IP(src=pc, dst=atk)
        sport = 30000 + i
        out.append(bytes(c / TCP(sport=sport, dport=22, flags="S")))
        out.append(bytes(s / TCP(sport=22, dport=sport, flags="SA")))
        out.append(bytes(c / TCP(sport=sport, dport=22, flags="A")))
    return out


class _Timed:
    """Wraps a detector's hooks, summing the nanoseconds spent in them."""

    def __init__(self, det: Any) -> None:
        self.packet_ns = 0
        self.calls = 0
        self.tick_ns = 0
        inner_packet = det.packet
        inner_tick = getattr(det, "tick", None)
        clock = time.perf_counter_ns

        def packet(ctx: Any, pkt: Any, flow: Any, from_client: bool) -> None:
            t = clock()
            inner_packet(ctx, pkt, flow, from_client)
            self.packet_ns += clock() - t
            self.calls += 1

        def tick(ctx: Any, now: float) -> None:
            t = clock()
            inner_tick(ctx, now)  # type: ignore[misc]
            self.tick_ns += clock() - t

        det.packet = packet
        if inner_tick is not None:
            det.tick = tick


class _Noop(Detector):
    """The same wrapper around a hook that does nothing: the timing overhead to subtract."""

    name = "noop"

    def packet(self, ctx: Any, pkt: Any, flow: Any, from_client: bool) -> None:
        pass


def _hook_ns(name: str, store: Any, packets: list[Any]) -> tuple[float, float, float]:
    """(packet-hook ns, tick ns, whole engine ns) per packet with detector `name` alone."""
    config = _config()
    sink = AlertPipeline(config, [])
    if name == "noop":
        det: Any = _Noop()
    else:
        det = next(d for d in create_detectors() if d.name == name)
    timed = _Timed(det)
    engine = Engine(config, store, sink, detectors=[det])
    engine.tickers.append(sink.tick)
    process = engine.process
    start = time.perf_counter_ns()
    for pkt in packets:
        process(pkt)
    total = time.perf_counter_ns() - start
    n = max(1, len(packets))
    return timed.packet_ns / max(1, timed.calls), timed.tick_ns / n, total / n


def _decoded(packets: list[bytes]) -> list[Any]:
    stats = DecodeStats()
    out = []
    ts = 1_800_000_000.0
    for raw in packets:
        ts += 0.0002  # 5 000 packets a second: ticks every 5 000 packets
        pkt = decode_ip(raw, ts, stats)
        if pkt is not None:
            out.append(pkt)
    return out


def measure(packets: list[bytes], store: Any, rounds: int) -> dict[str, float]:
    """Best-of-`rounds` ns per packet: the engine with a no-op detector (`engine`), and what
    each detector's hooks add (hook time minus the no-op hook's, plus its tick time)."""
    decoded = _decoded(packets)
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name in ("noop", *DETECTORS):
            got = _hook_ns(name, store, decoded)
            old = best.get(name)
            best[name] = (
                list(got) if old is None else [min(o, g) for o, g in zip(old, got, strict=True)]
            )
    noop_hook, _, engine = best.pop("noop")
    out = {"engine": engine}
    for name, (hook, tick, _total) in best.items():
        out[name] = max(0.0, hook - noop_hook) + tick
    return out


def run(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 7
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        store = _intel(Path(d))
        mixes = {"office": office_mix(20_000 if quick else 60_000), "scan": scan_mix()}
        for mix, packets in mixes.items():
            print(f"bench.detectors: {mix} mix, {len(packets)} packets", file=sys.stderr)
            ns = measure(packets, store, rounds)
            engine = ns.pop("engine")
            out[f"detectors_{mix}_engine_ns_per_pkt"] = round(engine)
            for det, cost in ns.items():
                out[f"detector_{det}_{mix}_ns_per_pkt"] = round(cost)
            out[f"detectors_{mix}_four_vs_engine"] = round(sum(ns.values()) / engine, 3)
    return out
