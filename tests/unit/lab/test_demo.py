"""Demo pieces that need no kernel: the alert line, the EVE follower, the step list."""

from __future__ import annotations

import json
from pathlib import Path

from lab.demo import STEPS, EveTail, format_alert

EVE = {
    "timestamp": "2026-11-26T23:59:59.123456+0000",
    "event_type": "alert",
    "src_ip": "198.18.0.11",
    "src_port": 40000,
    "dest_ip": "203.0.113.66",
    "dest_port": 80,
    "proto": "TCP",
    "alert": {"signature": "Threat intel: listed address", "severity": 1, "signature_id": 1},
    "watchpost": {"detector": "intel", "count": 3},
    "dns": {"rrname": "c2.example.net"},
}


def test_format_alert_is_one_readable_line() -> None:
    line = format_alert(EVE)
    assert "\n" not in line
    for part in ("23:59:59", "sev1", "intel", "Threat intel: listed address",
                 "198.18.0.11:40000 -> 203.0.113.66:80", "dns c2.example.net", "x3"):  # fmt: skip
        assert part in line
    # Missing fields never raise.
    assert "ALERT" in format_alert({"event_type": "alert"})


def test_eve_tail_reads_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    seen: list[dict] = []
    tail = EveTail(path, seen.append)
    tail.poll()  # no file yet
    text = json.dumps(EVE) + "\n" + json.dumps({"event_type": "stats"}) + "\n"
    half = json.dumps({**EVE, "src_port": 1})
    path.write_text(text + half[:20])
    tail.poll()
    assert [e["src_port"] for e in seen] == [40000]
    with open(path, "a") as f:
        f.write(half[20:] + "\nnot json\n")
    tail.poll()
    assert [e["src_port"] for e in seen] == [40000, 1]


def test_steps_have_unique_names_and_intel_comes_early() -> None:
    names = [s.name for s in STEPS]
    assert len(names) == len(set(names))
    # A short demo must still reach the intel contact (the test runs it with --duration).
    traffic = [s.name for s in STEPS if s.phase == "traffic"]
    # after the hub tail, the device names announced and ordinary office traffic
    assert traffic.index("intel") <= 3
    assert {s.phase for s in STEPS} == {"setup", "traffic"}
