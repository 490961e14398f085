"""Reading the end of the EVE file and putting alerts in plain words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.alerts.model import eve_time
from appliance.status.alerts import _nets, ago, describe, recent_alerts, tail_lines

NETS = _nets(["198.18.0.0/24"])


def test_tail_of_a_small_file(tmp_path: Path) -> None:
    p = tmp_path / "eve.json"
    p.write_bytes(b"a\nb\n\nc\nd")  # d is being written
    assert tail_lines(p, 2) == [b"b", b"c"]
    assert tail_lines(p, 10) == [b"a", b"b", b"c"]
    assert tail_lines(p, 0) == []
    assert tail_lines(tmp_path / "missing", 5) == []
    p.write_bytes(b"")
    assert tail_lines(p, 5) == []
    p.write_bytes(b"no newline at all")
    assert tail_lines(p, 5) == []


def test_tail_reads_across_blocks_and_stops_at_its_byte_cap(tmp_path: Path) -> None:
    p = tmp_path / "eve.json"
    lines = [f"line {i:06d} ".encode() + b"x" * (i % 300) for i in range(50_000)]
    p.write_bytes(b"\n".join(lines) + b"\n")
    assert tail_lines(p, 1000) == lines[-1000:]
    # A huge last record: only the cap is read, and a cut line is never returned.
    big = tmp_path / "big.json"
    big.write_bytes(b"short\n" + b"y" * 3_000_000 + b"\n")
    assert tail_lines(big, 5, max_bytes=1 << 20) == []
    assert tail_lines(big, 5, max_bytes=4 << 20) == [b"short", b"y" * 3_000_000]


def alert(**over: Any) -> dict[str, Any]:
    eve: dict[str, Any] = {
        "timestamp": eve_time(1_800_000_000.0),
        "event_type": "alert",
        "src_ip": "203.0.113.66",
        "src_port": 443,
        "dest_ip": "198.18.0.12",
        "dest_port": 51000,
        "proto": "TCP",
        "alert": {"action": "blocked", "signature": "Inbound scan", "severity": 2},
        "watchpost": {"id": "x1", "count": 4, "direction": "inbound"},
    }
    eve.update(over)
    return eve


def test_describe_inbound() -> None:
    d = describe(alert(), NETS, now=1_800_000_000.0 + 300)
    assert d["office_host"] == "198.18.0.12" and d["remote"] == "203.0.113.66"
    assert d["remote_port"] == 443
    assert d["direction_text"] == "from the internet into the office"
    assert d["severity"] == "medium" and d["action"] == "blocked" and d["count"] == 4
    assert d["ago"] == "5 min ago"


def test_describe_pseudonymised_and_odd_records() -> None:
    d = describe(alert(src_ip="tok-3f9a", dest_ip="203.0.113.9", dest_port=53), NETS)
    assert d["office_host"] == "tok-3f9a" and d["remote"] == "203.0.113.9"
    d = describe(
        {
            "event_type": "alert",
            "alert": "nonsense",
            "watchpost": [],
            "timestamp": "yesterday",
            "dns": {"rrname": "a.example"},
        },
        NETS,
    )
    assert d["signature"] == "unnamed alert" and d["when"] == "unknown time"
    assert d["severity"] == "unknown" and d["name"] == "a.example" and d["count"] == 1
    internal = describe(alert(src_ip="198.18.0.11", dest_ip="198.18.0.12"), NETS)
    assert internal["office_host"] == "198.18.0.12"  # inbound by direction
    out = describe(
        alert(
            src_ip="198.18.0.11",
            dest_ip="198.51.100.7",
            watchpost={"direction": "outbound"},
            http={"hostname": "h.example", "url": "/x"},
        ),
        NETS,
    )
    assert out["office_host"] == "198.18.0.11" and out["name"] == "h.example"


def test_recent_alerts_skips_other_lines(tmp_path: Path) -> None:
    p = tmp_path / "eve.json"
    rows = [
        json.dumps(alert(alert={"signature": "one", "severity": 1})),
        "not json",
        json.dumps({"event_type": "stats"}),
        json.dumps([1, 2]),
        json.dumps(alert(alert={"signature": "two", "severity": 3})),
    ]
    p.write_text("\n".join(rows) + "\n")
    got = recent_alerts(p, 10, ["198.18.0.0/24"])
    assert [a["signature"] for a in got] == ["two", "one"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "just now"), (125, "2 min ago"), (7300, "2 h ago"), (3 * 86400, "3 days ago")],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text
    assert "future" in ago(-3600)
