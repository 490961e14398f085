"""Shared test helpers: run scapy-built packets through the real engine and collect alerts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from appliance.alerts.pipeline import AlertPipeline
from appliance.config import Config, from_dict
from appliance.detect import intel as intel_mod
from appliance.detect.engine import Engine
from appliance.packet.decode import DecodeStats, decode_ip
from appliance.replay import replay

HOME = "198.18.0.0/24"


def make_config(**sections: Any) -> Config:
    """A Config from TOML-shaped keyword sections, with lab defaults for device and home_nets."""
    data: dict[str, Any] = {"device": {"id": "test-dev", "site": "test-site"}}
    data["inline"] = {"home_nets": [HOME]}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return from_dict(data)


class Harness:
    """An engine + pipeline whose alerts land in `self.alerts` (EVE dicts)."""

    def __init__(
        self, config: Config | None = None, intel_paths: Iterable[str | Path] = ()
    ) -> None:
        self.config = config or make_config()
        self.alerts: list[dict[str, Any]] = []
        paths = [str(p) for p in intel_paths] or list(self.config.intel.paths)
        self.pipeline = AlertPipeline(self.config, [self.alerts.append])
        self.engine = Engine(self.config, intel_mod.load_files(paths), self.pipeline)
        self.engine.tickers.append(self.pipeline.tick)
        self.stats = DecodeStats()
        self.verdicts: list[int] = []

    def feed(self, packets: Iterable[Any], start: float = 1_800_000_000.0, step: float = 0.001):
        """Feed scapy IP packets (or raw IP bytes); timestamps from `start`, `step` apart unless
        the scapy packet has its own `.time` set explicitly via `time` attribute > 1e9."""
        ts = start
        verdicts = []
        for p in packets:
            raw = bytes(p)
            t = float(getattr(p, "time", 0) or 0)
            when = t if t > 1e9 and getattr(p, "_wp_time", False) else ts
            pkt = decode_ip(raw, when, self.stats)
            if pkt is not None:
                verdicts.append(self.engine.process(pkt))
            ts += step
        return verdicts

    def finish(self) -> list[dict[str, Any]]:
        """Close every window (as replay does at the end) and return all alerts."""
        self.engine.tick(self.engine.ctx.now + 1e9)
        self.pipeline.close()
        return self.alerts

    def by_detector(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["watchpost"]["detector"] == name]

    def sids(self, detector: str) -> list[int]:
        """The signature ids of `detector`'s alerts, in order."""
        return [a["alert"]["signature_id"] for a in self.by_detector(detector)]


def run_packets(packets: Iterable[Any], config: Config | None = None) -> Harness:
    """Feed `packets` through a fresh Harness, close every window, and insist that no detector
    hook raised (a hook error would otherwise pass silently as "no alert")."""
    h = Harness(config)
    h.verdicts = h.feed(packets)
    h.finish()
    assert not h.engine.stats.hook_errors, h.engine.stats.hook_errors
    return h


def at(pkt: Any, ts: float) -> Any:
    """Give a scapy packet an explicit timestamp for `Harness.feed`."""
    pkt.time = ts
    pkt._wp_time = True
    return pkt


def write_pcap(packets: Iterable[Any], path: str | Path) -> Path:
    """Write scapy IP packets as Ethernet frames keeping each `.time`, so a replay of the file
    sees the same clock as `Harness.feed`."""
    frames = []
    for p in packets:
        f = Ether() / p
        f.time = p.time
        frames.append(f)
    wrpcap(str(path), frames)
    return Path(path)


def replay_alerts(
    pcap: str | Path, detector: str | None, config: Config | None = None
) -> list[dict[str, Any]]:
    """The alerts (EVE dicts) `watchpost replay` raises over `pcap`; only `detector`'s unless
    None. Default config: `make_config()`."""
    alerts: list[dict[str, Any]] = []
    replay(pcap, config if config is not None else make_config(), [alerts.append])
    return [a for a in alerts if detector is None or a["watchpost"]["detector"] == detector]


def alert_key(a: dict[str, Any], *fields: str) -> tuple:
    """What must match between an inline and a replayed alert: signature id, addresses, count,
    then the `watchpost` fields named in `fields` (e.g. "first_seen")."""
    w = a["watchpost"]
    return (
        a["alert"]["signature_id"],
        a["src_ip"],
        a["dest_ip"],
        w["count"],
        *(w[f] for f in fields),
    )
