"""The page's alert index counts the same "ports targeted" as the hub's daily summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from appliance.alerts.model import eve_time
from appliance.hublink.report import DailyReport
from appliance.status.index import AlertIndex, Filters

NOW = time.time()


def dns_answer_alert() -> dict[str, Any]:
    """8100003 as the engine writes it: addresses follow the answer, resolver → client."""
    return {
        "timestamp": eve_time(NOW - 60),
        "event_type": "alert",
        "src_ip": "198.51.100.53",
        "src_port": 53,
        "dest_ip": "198.18.0.11",
        "dest_port": 51234,
        "proto": "UDP",
        "alert": {
            "action": "allowed",
            "signature_id": 8100003,
            "signature": "Threat intel: DNS answer points to a listed address",
            "category": "threat-intel",
            "severity": 1,
        },
        "dns": {"rrname": "bad.example"},
        "watchpost": {"detector": "intel", "count": 1, "id": "a1"},
    }


def test_a_dns_answer_alert_names_the_resolvers_port_not_the_clients(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    eve.write_text(json.dumps(dns_answer_alert()) + "\n")
    index = AlertIndex(tmp_path, home_nets=["198.18.0.0/24"])
    assert index.ingest(eve, now=NOW) == 1
    [group], total = index.search(Filters(), now=NOW)
    assert total == 1
    assert (group["office"], group["remote"], group["remote_port"]) == (
        "198.18.0.11",
        "198.51.100.53",
        53,
    )
    page = index.summary(NOW - 3600, NOW)
    report = DailyReport(tmp_path / "daily.json", clock=lambda: NOW)
    report.add(dns_answer_alert())
    assert page["top_ports"] == report.report()["top_ports"] == [{"port": "UDP/53", "alerts": 1}]
    index.close()
