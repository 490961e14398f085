import json

from appliance.alerts.aggregate import Aggregator, RateLimiter
from appliance.alerts.model import Alert, Signature, parse_eve_time
from appliance.alerts.pipeline import AlertPipeline
from tests.helpers import make_config

SIG = Signature(8199999, "Test: something happened", "Test", 2)


def alert(ts: float, src: str = "198.18.0.11", dst: str = "203.0.113.10", **kw) -> Alert:
    return Alert("test", SIG, ts, src, dst, "TCP", src_port=4000, dest_port=80, **kw)


def test_eve_shape() -> None:
    eve = alert(1_795_000_000.123456).to_eve()
    assert eve["timestamp"] == "2026-11-18T11:06:40.123456+0000"
    assert eve["event_type"] == "alert"
    assert eve["alert"]["signature_id"] == SIG.sid and eve["alert"]["severity"] == 2
    assert set(eve["watchpost"]) >= {
        "id",
        "device",
        "site",
        "detector",
        "count",
        "first_seen",
        "last_seen",
        "seq",
    }
    assert abs(parse_eve_time(eve["timestamp"]) - 1_795_000_000.123456) < 1e-6


def test_aggregation_counts_sum_exactly() -> None:
    out: list[Alert] = []
    agg = Aggregator(out.append, window=60)
    for i in range(1000):
        agg.submit(alert(1000.0 + i * 0.01))
    assert len(out) == 1 and out[0].count == 1
    agg.flush(1061.0)
    assert len(out) == 2 and out[1].count == 999
    assert sum(a.count for a in out) == 1000
    assert out[1].first_seen == 1000.01 and out[1].last_seen == 1000.0 + 999 * 0.01
    # a different destination is a different alert
    agg.submit(alert(2000.0, dst="203.0.113.11"))
    assert len(out) == 3


def test_rate_limit_counts_what_it_drops() -> None:
    rl = RateLimiter(per_minute=60, burst=5)
    allowed = sum(rl.allow("d", 0.0) for _ in range(10))
    assert allowed == 5 and rl.dropped["d"] == 5
    assert rl.allow("d", 1.0)  # one token per second refills


def test_pipeline_numbers_and_pseudonymizes() -> None:
    cfg = make_config(privacy={"pseudonymize": True, "key": "k" * 32})
    got: list[dict] = []
    p = AlertPipeline(cfg, [got.append])
    a = alert(1.0, details={"targets": ["198.18.0.12", "203.0.113.9"]})
    a.app = {"dns": {"answers": [{"rdata": "198.18.0.13"}]}}
    p(a)
    p(alert(2.0, src="198.18.0.12"))
    assert [e["watchpost"]["seq"] for e in got] == [1, 2]
    text = json.dumps(got)
    for office in ("198.18.0.11", "198.18.0.12", "198.18.0.13"):
        assert office not in text
    assert "203.0.113.10" in text and "203.0.113.9" in text
    assert got[0]["src_ip"].startswith("office-")
    assert got[0]["watchpost"]["device"] == "test-dev"
    # Same address → same token (the hub can still correlate)
    assert got[0]["watchpost"]["details"]["targets"][0] == got[1]["src_ip"]
