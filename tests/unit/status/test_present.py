"""The headline, the API shape and the Prometheus text, from stats dicts."""

from __future__ import annotations

import math
import re
from typing import Any

from appliance.status.present import metrics, overview
from tests.unit.status.conftest import base_numbers

NOW = 1_800_000_000.0


def stats(**over: Any) -> dict[str, Any]:
    s = base_numbers()
    s["hub"] = dict(s["hub"], connected=True, problem="", since=NOW - 60)
    s["leds"] = {"green": "on", "amber": "on", "red": "off"}
    s.update(over)
    return s


def test_headlines() -> None:
    assert overview(stats(), 0.5, NOW)["headline"] == "All quiet: watching your network."
    assert overview(stats(), 0.5, NOW)["health"] == "ok"
    down = stats(hub={"enabled": True, "connected": False, "problem": "no answer", "since": NOW})
    o = overview(down, 0.5, NOW)
    assert o["health"] == "warn" and "not connected to the hub" in o["headline"]
    assert any("no answer" in n for n in o["notes"])
    o = overview(stats(unacked_alerts=1), 0.5, NOW)
    assert o["headline"] == "1 alert needs your attention." and o["health"] == "warn"
    assert overview(stats(unacked_alerts=3), 0.5, NOW)["headline"].startswith("3 alerts need")
    o = overview(stats(fault="a component failed"), 0.5, NOW)
    assert o["health"] == "bad" and o["headline"] == "Attention: a component failed."
    o = overview(stats(state="stopped"), 0.5, NOW)
    assert o["headline"] == "Inspection is stopped."
    o = overview(stats(), 42.0, NOW)
    assert o["health"] == "bad" and "has not reported for 42 s" in o["headline"]
    o = overview(None, None, NOW)
    assert o["state"] == "unknown" and o["health"] == "bad"


def test_odd_numbers_do_not_break_the_page() -> None:
    o = overview(stats(packets="many", flows=math.nan, uptime=-5, hub="up", leds=None), 0, NOW)
    assert o["counters"]["packets"] == 0 and o["counters"]["flows"] == 0
    assert o["uptime_text"] == "0 min"
    assert o["hub"]["enabled"] is False and o["leds"]["red"] == "off"


def test_identify_shows_in_words() -> None:
    o = overview(stats(leds={"green": "fast", "amber": "fast", "red": "fast"}), 0, NOW)
    assert "identify" in o["leds_text"]["red"]


LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="([^"\\\n]|\\.)*",?)*\})? \S+$')


def test_metrics_text_is_well_formed() -> None:
    s = stats(intel_version='v"1"\\\nx', hub_connected=True, weird_nan=math.inf, ok_flag=True)
    s["bad key-name"] = 3
    text = metrics(s, 0.25)
    names = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.append(line.split()[2])
            continue
        assert LINE.match(line), line
    assert len(names) == len(set(names))  # one family per name
    assert "watchpost_packets_total 123456" in text
    assert "watchpost_queue_depth 3" in text
    assert "watchpost_ok_flag 1" in text
    assert "watchpost_bad_key_name 3" in text
    assert "weird_nan" not in text
    assert r'intel_version="v\"1\"\\\nx"' in text
    assert 'watchpost_led{led="red",state="off"} 1' in text
    assert metrics(None, None) == "# TYPE watchpost_up gauge\nwatchpost_up 0\n"


def test_the_update_job_in_words() -> None:
    now = 1_800_000_000.0
    job = {"id": "u1", "state": "rolled-back", "version": "0.2.0", "from": "0.1.0",
           "reason": "the daemon never reached the hub", "at": int(now) - 120}  # fmt: skip
    s = overview({**base_numbers(), "update": job}, 1.0, now)
    assert s["update"]["state"] == "rolled-back"
    assert s["update"]["text"] == (
        "Update to 0.2.0 undone (2 min ago): 0.1.0 kept (the daemon never reached the hub)."
    )
    ok = overview({**base_numbers(), "update": {**job, "state": "succeeded"}}, 1.0, now)
    assert ok["update"]["text"] == "Updated to 0.2.0 from 0.1.0 (2 min ago)."
    busy = overview({**base_numbers(), "update": {**job, "state": "installing"}}, 1.0, now)
    assert busy["update"]["text"] == "Updating to 0.2.0: installing."
    assert overview(base_numbers(), 1.0, now)["update"] == {"state": "", "text": ""}
    assert overview({**base_numbers(), "update": "junk"}, 1.0, now)["update"]["text"] == ""
