"""`watchpost replay`: the inline engine over a capture file, alerts as EVE lines.

Reads pcap and pcapng with our own reader (appliance/replay/reader.py: mmap + struct, no
per-packet objects beyond the frame's bytes) and decodes with the same hot-path code the bridge
uses (appliance/replay/fast.py: the IP header found in place, then `decode_ip`), so a capture
replays as it was judged inline.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from appliance.alerts.pipeline import AlertPipeline, Sink
from appliance.config import Config
from appliance.detect import engine as engine_mod
from appliance.detect import intel as intel_mod
from appliance.detect.engine import Engine
from appliance.packet.decode import LINKTYPES, DecodeStats, Packet, decode_frame
from appliance.replay import fast
from appliance.replay.reader import CaptureError, Reader


class ReplayError(Exception):
    """A capture that cannot be read; the message says which file and why."""


@dataclass
class ReplayResult:
    packets: int
    decoded: int
    malformed: int
    alerts: int
    truncated_at: int | None = None  # byte offset of a last record cut short
    # What loading the intel files said (files, bad lines as file:line: why, refused files).
    intel: list[str] = field(default_factory=list)
    workers: int = 1


Progress = Callable[[Reader, int], None]


def read_capture(
    path: str | Path,
    stats: DecodeStats,
    progress: Progress | None = None,
    reader: list | None = None,
) -> Iterator[Packet]:
    """Decoded packets of a pcap/pcapng file; undecodable frames are counted in `stats`.
    `progress(reader, frames)` is called every 65 536 frames and at the end."""
    try:
        r = Reader(path)
    except CaptureError as e:
        raise ReplayError(str(e)) from None
    if reader is not None:
        reader.append(r)
    with r:
        if r.kind == "pcap":
            frames = iter(r)
            first = next(frames, None)  # reads the file header: the link type is known
            if r.linktype is not None and r.linktype not in LINKTYPES:
                raise ReplayError(f"{r.path}: unsupported link type {r.linktype}")
            if first is None:
                return
            it: Iterator[tuple[float, int, bytes]] = itertools.chain((first,), frames)
        else:
            it = iter(r)
        n = 0
        try:
            for ts, linktype, data in it:
                n += 1
                if not n & 0xFFFF and progress is not None:
                    progress(r, n)
                if linktype not in LINKTYPES:
                    stats.bad("unsupported_linktype")
                    continue
                pkt = decode_frame(data, linktype, ts, stats)
                if pkt is not None:
                    yield pkt
        except CaptureError as e:
            raise ReplayError(str(e)) from None
        if progress is not None:
            progress(r, n)


class ProgressBar:
    """`replay --progress`: a bar with packets/s on stderr, redrawn at most 10 times a second;
    silent when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, reader: Reader, frames: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        done = reader.offset >= reader.size or reader.truncated_at is not None
        if now - self._last < 0.1 and not done:
            return
        self._last = now
        frac = min(1.0, reader.offset / reader.size) if reader.size else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        pps = frames / max(1e-6, now - self.t0)
        self.stream.write(f"\rreplay [{bar}] {frac * 100:5.1f}%  {frames} packets  "
                          f"{pps / 1000:.0f} k packets/s")  # fmt: skip
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def replay(
    path: str | Path,
    config: Config,
    sinks: list[Sink],
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReplayResult:
    """Run the engine over a capture; alerts go to `sinks`. `workers` > 1 spreads flows over
    that many processes (appliance/replay/parallel.py) with the same output; None picks by the
    file's size and the cores. Alerts raised in one tick come in a canonical order."""
    from appliance.replay import parallel

    store = intel_mod.load_files(config.intel.paths)
    pipeline = AlertPipeline(config, sinks)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0  # the reader names the problem
    if size:
        pipeline.new_id = parallel.replay_ids(str(path), size)
    notes: list[str] = []
    n = parallel.default_workers(size) if workers is None else workers
    engine = Engine(config, store, pipeline)
    if n > 1:
        problems = parallel.split_problems(engine.detectors, config)
        if problems:
            notes.append(f"replay: one process ({'; '.join(problems)})")
            n = 1
    if n > 1:
        done = _replay_parallel(path, config, store, pipeline, progress, n, notes)
        if done is not None:
            return done
        notes.append(
            f"replay: one process (with {n} workers more than {engine_mod.HOLDING_FLOWS} flows "
            "would have held a partial hello at once, where one process gives the oldest up: "
            "replayed again in one process for its output)"
        )
    parallel.TickOrder(engine, pipeline).install(engine, pipeline.tick)
    stats = DecodeStats()
    readers: list[Reader] = []
    try:
        r = Reader(path)
        readers.append(r)
        with r:
            fast.run(r, stats, engine.process, progress)
    except (CaptureError, fast.UnsupportedLinktype) as e:
        raise ReplayError(str(e)) from None
    if engine.stats.packets:
        engine.tick(engine.ctx.now + 1e9)  # end of capture: close every window
    pipeline.close()
    return ReplayResult(
        packets=stats.ok + stats.malformed,
        decoded=stats.ok,
        malformed=stats.malformed,
        alerts=pipeline.emitted,
        truncated_at=readers[0].truncated_at if readers else None,
        intel=intel_mod.describe(store) + notes,
        workers=1,
    )


def _replay_parallel(
    path: str | Path,
    config: Config,
    store: intel_mod.IntelStore,
    pipeline: AlertPipeline,
    progress: Progress | None,
    n: int,
    notes: list[str],
) -> ReplayResult | None:
    """The run spread over `n` workers; None (and nothing sent to the sinks) when one process
    would have given up a partial hello that the workers kept (run it in one process then)."""
    from appliance.replay import parallel

    try:
        results = parallel.run_workers(str(path), config, store, n, progress)
    except (CaptureError, fast.UnsupportedLinktype) as e:
        raise ReplayError(str(e)) from None
    if parallel.holding_bound_reached(results):
        return None  # nothing was sent to the sinks yet
    for _index, _phase, _key, item in parallel.merged(results):
        if isinstance(item, float):  # worker 0's mark: the pipeline's tick, after the detectors'
            pipeline.tick(item)
        else:
            pipeline(item)
    pipeline.close()
    first = results[0]
    return ReplayResult(
        packets=first["packets"],
        decoded=first["decoded"],
        malformed=first["malformed"],
        alerts=pipeline.emitted,
        truncated_at=first["truncated_at"],
        intel=intel_mod.describe(store) + notes,
        workers=n,
    )
