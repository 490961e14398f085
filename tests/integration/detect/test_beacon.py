"""beacon in the lab: an office host fetching a page on a timer (curl in a loop, names resolved
by the lab resolver) against the same host visited irregularly; replay of the capture agrees.

The daemon runs with a test-sized rhythm (calls under a second apart, 8 calls); the defaults
judge minutes-long rhythms over 20 calls, which the unit tests cover with crafted timings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.detect.detectors import beacon
from lab.netns import Lab

from .behaviour_lab import Watch, start_watch, totals

pytestmark = pytest.mark.root

PC1, WEB = "198.18.0.11", "203.0.113.10"


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("beacon"))
    yield w
    w.daemon.stop()


def fetch_loop(watch: Watch, url: str, sleeps: list[float]) -> None:
    """curl `url` from pc1, sleeping the given seconds between calls (one shell loop)."""
    script = (
        "; ".join(f"curl -s -o /dev/null -m 2 {url}; sleep {s}" for s in sleeps)
        + f"; curl -s -o /dev/null -m 2 {url}"
    )
    watch.lab.exec("pc1", "sh", "-c", script, timeout=60)


def test_page_fetched_on_a_timer_is_beaconing(watch: Watch, serve) -> None:
    serve.http("web", 80)
    mark = watch.mark()
    with watch.capture("beacon") as pcap:
        fetch_loop(watch, "http://www.example.com/", [0.7] * 9)
    alerts = watch.wait(mark, bool, "beacon", timeout=10.0)
    (a,) = alerts
    assert a["alert"]["signature_id"] == beacon.OUTBOUND.sid
    assert a["src_ip"] == PC1 and a["dest_ip"] == WEB and a["dest_port"] == 80
    d = a["watchpost"]["details"]
    assert d["name"] == "www.example.com" and d["direction"] == "outbound"
    assert 0.6 <= d["period_s"] <= 1.2 and d["jitter"] <= 0.2
    replayed = [x for x in watch.replay(pcap) if x["watchpost"]["detector"] == "beacon"]
    assert totals(replayed, "beacon") == totals(alerts, "beacon")
    assert replayed[0]["watchpost"]["details"]["name"] == "www.example.com"


def test_irregular_visits_are_no_beacon(watch: Watch, serve) -> None:
    serve.http("web", 8080)
    mark = watch.mark()
    with watch.capture("irregular") as pcap:
        sleeps = [0.2, 1.2, 0.25, 1.6, 0.2, 1.0, 0.3, 1.4, 0.3, 1.1]
        fetch_loop(watch, "http://www.example.com:8080/", sleeps)
    assert watch.settle(mark, "beacon", quiet=3.0) == []
    assert totals(watch.replay(pcap), "beacon") == {}
