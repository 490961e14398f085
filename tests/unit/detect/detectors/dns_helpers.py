"""Helpers shared by the DNS detector tests (dga, dns-tunnel): the popular-name list and an
engine whose dns hook can be called directly with records (far faster than scapy packets)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP

from appliance.detect.base import Detector
from appliance.detect.engine import AlertSink, Engine
from appliance.detect.intel import IntelStore
from appliance.packet.decode import DecodeStats, Packet, decode_ip
from appliance.packet.flows import Flow
from tests.helpers import make_config


def popular_domains() -> list[str]:
    """The Cisco Umbrella top-1M sample (37,997 names) shipped by the `domain-stats` package (a
    dev dependency)."""
    spec = importlib.util.find_spec("domain_stats")
    assert spec is not None and spec.submodule_search_locations, (
        "the dev dependency domain-stats is missing: pip install -e '.[dev]'"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "top1m.import"
    return [rec["domain"] for rec in json.loads(path.read_text())]


def dns_hook(
    det: Detector, sink: AlertSink, client: str, resolver: str, ts: float
) -> tuple[Engine, Packet, Flow]:
    """An engine running only `det` (alerts to `sink`) and the packet and flow of one DNS query
    from `client` to `resolver`, to pass to ``det.dns(engine.contexts[det.name], pkt, flow,
    record)``."""
    engine = Engine(make_config(), IntelStore(), sink, detectors=[det])
    raw = bytes(IP(src=client, dst=resolver) / UDP(sport=40000, dport=53) / DNS(qd=DNSQR()))
    pkt = decode_ip(raw, ts, DecodeStats())
    flow, _ = engine.flows.lookup(pkt)
    return engine, pkt, flow
