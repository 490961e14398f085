"""`watchpost replay`: the inline engine over a capture file, alerts as EVE lines.

Reads pcap and pcapng with scapy's raw readers (bytes + link type, no dissection) and decodes
with the same hot-path code the bridge uses, so a capture replays as it was judged inline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.error import Scapy_Exception
from scapy.utils import RawPcapNgReader, RawPcapReader

from appliance.alerts.pipeline import AlertPipeline, Sink
from appliance.config import Config
from appliance.detect import intel as intel_mod
from appliance.detect.engine import Engine
from appliance.packet.decode import LINKTYPES, DecodeStats, Packet, decode_frame


class ReplayError(Exception):
    """A capture that cannot be read; the message says which file and why."""


@dataclass
class ReplayResult:
    packets: int
    decoded: int
    malformed: int
    alerts: int


def read_capture(path: str | Path, stats: DecodeStats) -> Iterator[Packet]:
    """Decoded packets of a pcap/pcapng file; undecodable frames are counted in `stats`."""
    p = Path(path)
    if not p.is_file():
        raise ReplayError(f"{p}: no such file")
    try:
        reader = RawPcapReader(str(p))
    except Scapy_Exception as e:
        raise ReplayError(f"{p}: not a pcap or pcapng file ({e})") from None
    except (OSError, EOFError) as e:
        raise ReplayError(f"{p}: cannot read: {e}") from None
    with reader:
        if isinstance(reader, RawPcapNgReader):
            meta: Any  # scapy's pcapng metadata (its stubs lack these fields)
            for data, meta in reader:
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                if meta.linktype not in LINKTYPES:
                    stats.bad("unsupported_linktype")
                    continue
                pkt = decode_frame(data, meta.linktype, ts, stats)
                if pkt is not None:
                    yield pkt
        else:
            linktype = reader.linktype
            if linktype not in LINKTYPES:
                raise ReplayError(f"{p}: unsupported link type {linktype}")
            div = 1e9 if getattr(reader, "nano", False) else 1e6
            for data, meta in reader:
                pkt = decode_frame(data, linktype, meta.sec + meta.usec / div, stats)
                if pkt is not None:
                    yield pkt


def replay(path: str | Path, config: Config, sinks: list[Sink]) -> ReplayResult:
    """Run the engine over a capture; alerts go to `sinks`."""
    store = intel_mod.load_files(config.intel.paths)
    pipeline = AlertPipeline(config, sinks)
    engine = Engine(config, store, pipeline)
    engine.tickers.append(pipeline.tick)
    stats = DecodeStats()
    for pkt in read_capture(path, stats):
        engine.process(pkt)
    if engine.stats.packets:
        engine.tick(engine.ctx.now + 1e9)  # end of capture: close every window
    pipeline.close()
    return ReplayResult(
        packets=stats.ok + stats.malformed,
        decoded=stats.ok,
        malformed=stats.malformed,
        alerts=pipeline.emitted,
    )
