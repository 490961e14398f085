"""A regional indicator end to end over mosquitto (mutual TLS): the same scanner seen by two
offices' devices becomes a suggestion in the hub's store, an operator approves it, `indicators
publish` sends the signed bundle to every device of the region (also the one that never saw the
scanner), and each device's alerts about that address then cite the regional source."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hubkit import PKI, Broker, wait_for
from scapy.layers.inet import IP, TCP
from test_hub_commands import (  # the broker-backed appliance and operator CLI of that module
    Appliance,
    command_key,
    hub_cli,
    operator_env,
)

from hub import correlate
from hub.collector.parse import Registry, parse
from hub.store import AlertRow, Batch, StatusRow, open_store
from protocol import bundle
from protocol.topics import topic
from tests.helpers import Harness, at, make_config

__all__ = ["command_key", "operator_env"]  # fixtures

SCANNER = "203.0.113.77"
DEVICES = (("dev1", "siteA"), ("dev2", "siteB"), ("dev3", "siteA"))  # (hubkit's PKI)
OFFICE_HOST = "198.18.0.11"


def scan(t0: float) -> list[Any]:
    return [
        at(IP(src=SCANNER, dst=OFFICE_HOST) / TCP(sport=54321, dport=port, flags="S"), t0 + i / 100)
        for i, port in enumerate(range(1, 120))
    ]


def device_alerts(device: str, site: str, packets: list[Any], intel: list[Path]) -> list[Any]:
    h = Harness(make_config(device={"id": device, "site": site}), intel_paths=intel)
    for p in packets:
        h.feed([p])
    h.finish()
    return h.alerts


def test_an_approved_indicator_reaches_every_device_and_its_alerts_cite_the_region(
    pki: PKI,
    broker: Broker,
    tmp_path: Path,
    command_key: tuple[Path, Path],
    operator_env: dict[str, str],
) -> None:
    now = time.time()
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    store = open_store(url)
    # What the collector stored: dev1 (siteA) and dev2 (siteB) saw the scanner; dev3 only
    # reported its status.
    batch = Batch()
    for device, site in DEVICES:
        if device != "dev3":
            for seq, eve in enumerate(device_alerts(device, site, scan(now - 900), []), 1):
                eve["watchpost"]["seq"] = seq
                row = parse(
                    topic(site, device, "alerts"),
                    json.dumps(eve).encode(),
                    retain=False,
                    now=now,
                    registry=Registry(),
                )
                assert isinstance(row, AlertRow), row
                batch.alerts.append(row)
        batch.statuses.append(StatusRow(device, site, {"state": "ready", "bd_seq": 1}, now))
    store.ingest(batch, now=now)
    store.fold_all(now)
    correlate.run(store, correlate.Policy(min_offices=2), now)
    [suggested] = correlate.indicators(store, "suggested")
    assert suggested["value"] == SCANNER and suggested["offices"] == 2
    store.close()

    appliances = [
        Appliance(pki, broker, tmp_path / dev, command_key[1], dev, site) for dev, site in DEVICES
    ]
    try:
        for a in appliances:
            a.start()
        for a in appliances:
            wait_for(lambda a=a: a.link is not None and a.link.state == "up", what="link up")
        r = hub_cli(operator_env, "indicators", "approve", suggested["id"], "--store", url)
        assert r.exit_code == 0 and "approved" in r.output, r.output
        r = hub_cli(operator_env, "indicators", "publish", "--store", url, "--timeout", "30")
        assert r.exit_code == 0, r.output
        finals = [line for line in r.output.splitlines() if line.startswith("dev")]
        assert finals == ["dev1 succeeded", "dev2 succeeded", "dev3 succeeded"], r.output
        for a in appliances:
            ind = a.device.store.match_ip_text(SCANNER)
            assert ind is not None and ind.source == correlate.SOURCE, a.device.config.device.id
            # The device's engine with what it now has installed: the scanner is a listed
            # address, and the alert says the list is the region's.
            paths = bundle.installed_paths(a.device.intel_dir)
            dev, site = a.device.config.device.id, a.device.config.device.site
            intel = [e for e in device_alerts(dev, site, scan(now), paths)
                     if e["watchpost"]["detector"] == "intel"]  # fmt: skip
            assert intel, dev
            assert {e["watchpost"]["details"]["source"] for e in intel} == {correlate.SOURCE}
    finally:
        for a in appliances:
            a.stop()
