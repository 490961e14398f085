"""Verdict latency: what one packet costs the packet thread, packet by packet, over a long run.

The honest office mix (bench/mix.py) with its own timestamps, so the engine ticks once a second
of capture time and ages flows and detector state as inline; each packet's decode + engine
(all detectors) + alert pipeline is timed alone (perf_counter_ns). Figures:

- ``verdict_p50_us`` / ``verdict_p99_us`` / ``verdict_p999_us`` / ``verdict_max_us``: the plain
  run (pipeline journal in memory);
- ``verdict_tick_max_us`` (the packets that ran a tick) next to ``verdict_tick_max_us_full_scan``,
  the same run with the old ageing (a scan of the whole flow table every tick) patched in;
- ``verdict_p99_us_quiet``: the SQLite outbox as journal with a slow-fsync hook (10 ms per
  commit, as an SD card), no alerts; ``verdict_p99_us_alert_storm``: the same with one session
  in 5 going to a listed address (an alert each, rate limits opened up); and
  ``verdict_p99_us_alert_storm_sync``: the storm with the journal waited on in the packet thread
  (the old design: one fsync per alert), for contrast. ``alert_storm_alerts`` and
  ``alert_storm_overflow`` say how many alerts were raised and how many the queue refused.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from appliance.alerts.outbox import Outbox
from appliance.alerts.pipeline import AlertPipeline
from appliance.config import from_dict
from appliance.detect.engine import Engine
from appliance.packet import flows as flows_mod
from appliance.packet.decode import DecodeStats, decode_ip
from bench.engine import _intel
from bench.mix import office_mix_timed

FSYNC_DELAY = 0.010


def _config(storm: bool) -> Any:
    alerts = {"rate_per_minute": 100_000, "burst": 100_000} if storm else {}
    return from_dict({"device": {"id": "bench", "site": "bench"}, "alerts": alerts,
                      "inline": {"home_nets": ["198.18.0.0/24"]}})  # fmt: skip


def storm_mix(packets: list[tuple[float, bytes]], every: int = 5) -> list[tuple[float, bytes]]:
    """The mix with the server of one session in `every` replaced by a listed address (the bench
    intel lists 198.51.0-77.even): each such session raises an intel alert of its own."""
    rng = random.Random(3)
    out = []
    moved: dict[bytes, bytes] = {}  # client port + server -> listed server
    for ts, raw in packets:
        b = bytearray(raw)
        ihl = (b[0] & 0x0F) * 4
        office_src = b[12:15] == b"\xc6\x12\x00"
        port = bytes(b[ihl : ihl + 2] if office_src else b[ihl + 2 : ihl + 4])
        server = bytes(b[16:20] if office_src else b[12:16])
        key = port + server
        if key not in moved:
            listed = rng.randrange(every) == 0 and server != b"\xcb\x00\x71\x35"
            moved[key] = (
                bytes([198, 51, rng.randrange(78), rng.randrange(128) * 2]) if listed else b""
            )
        new = moved[key]
        if new:
            if office_src:
                b[16:20] = new
            else:
                b[12:16] = new
        out.append((ts, bytes(b)))
    return out


def _full_scan_expire(self: Any, now: float) -> int:
    """The old ageing: every flow looked at on every tick."""
    gone = 0
    for flows, idle in self._classes:
        dead = [k for k, f in flows.items() if now - f.last > idle]
        for k in dead:
            del flows[k]
        gone += len(dead)
    self._count -= gone
    return gone


def _run(packets: list[tuple[float, bytes]], store: Any, journal: Any, storm: bool) -> dict:
    config = _config(storm)
    pipeline = AlertPipeline(config, [], journal=journal)
    engine = Engine(config, store, pipeline)
    engine.tickers.append(pipeline.tick)
    stats = DecodeStats()
    lat = []
    tick_lat = []
    process = engine.process
    for ts, raw in packets:
        ticks = ts >= engine._next_tick
        t0 = perf_counter_ns()
        pkt = decode_ip(raw, ts, stats)
        if pkt is not None:
            process(pkt)
        dt = perf_counter_ns() - t0
        lat.append(dt)
        if ticks:
            tick_lat.append(dt)
    lat.sort()
    n = len(lat)
    return {
        "p50": lat[n // 2] / 1000,
        "p99": lat[int(n * 0.99)] / 1000,
        "p999": lat[int(n * 0.999)] / 1000,
        "max": lat[-1] / 1000,
        "tick_max": max(tick_lat, default=0) / 1000,
        "alerts": pipeline.emitted,
    }


class _SyncJournal:
    """The old hand-over: the packet thread waits until the alert is on disk."""

    def __init__(self, box: Outbox) -> None:
        self.record = box.record


def run(quick: bool) -> dict[str, Any]:
    n = 150_000 if quick else 600_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = _intel(tmp)
        quiet = office_mix_timed(n)
        storm = storm_mix(quiet)
        print(f"bench.latency: {n} packets, {quiet[-1][0] - quiet[0][0]:.0f} s of capture time",
              file=sys.stderr)  # fmt: skip
        runs: dict[str, list[dict]] = {}
        for r in range(rounds):
            runs.setdefault("plain", []).append(_run(quiet, store, None, False))
            original = flows_mod.FlowTable.expire
            flows_mod.FlowTable.expire = _full_scan_expire  # type: ignore[method-assign]
            try:
                runs.setdefault("full_scan", []).append(_run(quiet, store, None, False))
            finally:
                flows_mod.FlowTable.expire = original  # type: ignore[method-assign]
            for name, mix, sync in (("quiet", quiet, False), ("storm", storm, False),
                                    ("storm_sync", storm, True)):  # fmt: skip
                if sync and r:
                    continue  # slow by design: once is enough
                box = Outbox(tmp / f"{name}-{r}.sqlite", max_rows=1_000_000,
                             fsync_delay=FSYNC_DELAY)  # fmt: skip
                journal = _SyncJournal(box) if sync else box
                got = _run(mix[: n // 4] if sync else mix, store, journal, name != "quiet")
                got["overflow"] = box.overflow
                box.close()
                runs.setdefault(name, []).append(got)
            done = ", ".join(f"{k} p99 {v[-1]['p99']:.0f} us" for k, v in runs.items())
            print(f"bench.latency: round {r + 1}: {done}", file=sys.stderr)

    def med(name: str, key: str) -> float:
        return round(statistics.median(x[key] for x in runs[name]), 1)

    return {
        "verdict_p50_us": med("plain", "p50"),
        "verdict_p99_us": med("plain", "p99"),
        "verdict_p999_us": med("plain", "p999"),
        "verdict_max_us": med("plain", "max"),
        "verdict_tick_max_us": med("plain", "tick_max"),
        "verdict_tick_max_us_full_scan": med("full_scan", "tick_max"),
        "verdict_p999_us_full_scan": med("full_scan", "p999"),
        "verdict_p99_us_quiet": med("quiet", "p99"),
        "verdict_p99_us_alert_storm": med("storm", "p99"),
        "verdict_p999_us_alert_storm": med("storm", "p999"),
        "verdict_p99_us_alert_storm_sync": med("storm_sync", "p99"),
        "verdict_p999_us_alert_storm_sync": med("storm_sync", "p999"),
        "verdict_p999_us_quiet": med("quiet", "p999"),
        "verdict_storm_vs_quiet": round(med("storm", "p99") / med("quiet", "p99"), 2),
        "alert_storm_alerts": int(med("storm", "alerts")),
        "alert_storm_overflow": int(med("storm", "overflow")),
        "alert_storm_fsync_ms": FSYNC_DELAY * 1000,
    }
