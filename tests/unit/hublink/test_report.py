"""The daily summary tallies and the system metrics sent in telemetry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.hublink.report import MAX_KEYS, DailyReport, SystemMetrics, traffic_counters

NOON = time.mktime((2026, 11, 26, 12, 0, 0, 0, 0, -1))
NEXT_DAY = time.mktime((2026, 11, 27, 0, 0, 5, 0, 0, -1))


def eve(
    src: str,
    port: int,
    detector: str = "portscan",
    action: str = "allowed",
    count: int = 1,
    severity: int = 2,
) -> dict[str, Any]:
    return {
        "src_ip": src,
        "dest_ip": "198.18.0.11",
        "dest_port": port,
        "proto": "TCP",
        "alert": {
            "action": action,
            "signature_id": 1000,
            "signature": "scan",
            "severity": severity,
        },
        "watchpost": {"detector": detector, "count": count},
    }


def test_the_report_names_top_sources_ports_blocked_vs_allowed_and_detectors(
    tmp_path: Path,
) -> None:
    rep = DailyReport(tmp_path / "r.json", clock=lambda: NOON)
    rep.add(eve("203.0.113.66", 22, count=40))
    rep.add(eve("198.51.100.23", 3389, count=5, action="blocked"))
    rep.add(eve("198.51.100.23", 22, detector="intel", count=3, severity=1))
    r = rep.report()
    assert r["alerts"] == 48
    assert r["top_sources"][0] == {"ip": "203.0.113.66", "alerts": 40}
    assert r["top_sources"][1] == {"ip": "198.51.100.23", "alerts": 8}
    assert r["top_ports"][0] == {"port": "TCP/22", "alerts": 43}
    assert (r["blocked"], r["allowed"]) == (5, 43)
    assert r["by_detector"] == {"portscan": 45, "intel": 3}
    assert r["by_severity"] == {"1": 3, "2": 45}
    assert r["day"] == "2026-11-26"


def test_traffic_counters_are_daily_deltas_and_survive_a_restart(tmp_path: Path) -> None:
    now = [NOON]
    rep = DailyReport(tmp_path / "r.json", clock=lambda: now[0])
    rep.observe({"packets": 1000, "verdicts_block": 2, "queue_depth": 9, "mode": "block"})
    rep.observe({"packets": 1500, "verdicts_block": 5, "queue_depth": 1})
    rep.add(eve("203.0.113.66", 22))
    rep.save()
    # The daemon restarts: its counters start from zero again.
    rep2 = DailyReport(tmp_path / "r.json", clock=lambda: now[0])
    assert rep2.report()["alerts"] == 1
    rep2.observe({"packets": 100, "verdicts_block": 1})
    assert rep2.report()["traffic"] == {"packets": 600, "verdicts_block": 4}
    now[0] = NEXT_DAY
    done = rep2.roll()
    assert done is not None and done["day"] == "2026-11-26"
    assert done["traffic"] == {"packets": 600, "verdicts_block": 4} and done["alerts"] == 1
    assert rep2.pending == [done]
    today = rep2.report()
    assert today["day"] == "2026-11-27" and today["alerts"] == 0
    rep2.observe({"packets": 130, "verdicts_block": 1})
    assert rep2.report()["traffic"] == {"packets": 30, "verdicts_block": 0}
    assert rep2.roll() is None  # same day
    # Pending reports survive until the broker acknowledges them.
    assert DailyReport(tmp_path / "r.json", clock=lambda: now[0]).pending[0]["day"] == "2026-11-26"
    rep2.sent("2026-11-26")
    assert DailyReport(tmp_path / "r.json", clock=lambda: now[0]).pending == []


def test_only_cumulative_traffic_counters_are_followed() -> None:
    got = traffic_counters(
        {
            "packets": 5,
            "flows": 2,
            "verdicts_block": 9,
            "queue_depth": 3,
            "outbox_inflight": 1,
            "fail_open_events": 1,
            "cpu_percent": 50.0,
            "mode": "monitor",
            "hub_up": True,
        }
    )
    assert got == {"packets": 5, "verdicts_block": 9, "fail_open_events": 1}


def test_tallies_stay_bounded_under_a_scan_from_many_sources(tmp_path: Path) -> None:
    rep = DailyReport(tmp_path / "r.json", clock=lambda: NOON)
    rep.add(eve("203.0.113.66", 22, count=1000))
    for i in range(MAX_KEYS + 10):
        rep.add(eve(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1 + i % 60000))
    assert len(rep.tallies["source"]) <= MAX_KEYS
    assert rep.report()["top_sources"][0] == {"ip": "203.0.113.66", "alerts": 1000}


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("{not json")
    rep = DailyReport(tmp_path / "r.json", clock=lambda: NOON)
    assert rep.report()["alerts"] == 0


def test_system_metrics_read_proc_and_thermal_zones(tmp_path: Path) -> None:
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 250000 kB\n")
    (proc / "self/statm").write_text("1000 256 0 0 0 0 0\n")
    m = SystemMetrics(str(proc), str(sys_root))
    first = m.sample()
    assert first["cpu_percent"] is None and first["temperature_c"] is None
    assert first["mem_used_percent"] == 75.0
    (proc / "stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")
    for zone, milli in (("thermal_zone0", "48312"), ("thermal_zone1", "51000")):
        (sys_root / "class/thermal" / zone).mkdir(parents=True)
        (sys_root / "class/thermal" / zone / "temp").write_text(milli + "\n")
    second = m.sample()
    assert second["cpu_percent"] == 50.0
    assert second["temperature_c"] == 51.0
    assert second["rss_mb"] is not None
