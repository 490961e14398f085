from appliance.alerts.aggregate import Aggregator
from appliance.alerts.model import Alert, Signature

SIG = Signature(9_100_001, "test", "Test", 2)


def alert(ts: float, src: str) -> Alert:
    return Alert("t", SIG, ts, src, "203.0.113.10", "TCP", first_seen=ts, last_seen=ts)


def test_windows_close_in_end_order_and_only_when_ended() -> None:
    out: list[Alert] = []
    agg = Aggregator(out.append, window=10.0)
    for i in range(100):  # 100 keys, each opened at t = i and repeated once
        agg.submit(alert(float(i), f"198.51.100.{i}"))
        agg.submit(alert(float(i) + 0.5, f"198.51.100.{i}"))
    assert len(out) == 100 and all(a.count == 1 for a in out)
    agg.flush(50.0)  # windows opened at 0..40 ended
    closed = out[100:]
    assert [a.src_ip for a in closed] == [f"198.51.100.{i}" for i in range(41)]
    assert all(a.count == 1 and a.first_seen == a.timestamp for a in closed)
    agg.flush(50.0)
    assert len(out) == 141  # nothing twice
    # A key whose window closed opens a new one; the stale heap entry of the old one is skipped.
    agg.submit(alert(51.0, "198.51.100.0"))
    agg.submit(alert(52.0, "198.51.100.0"))
    agg.flush(60.0)
    assert [a.src_ip for a in out[141:]] == ["198.51.100.0"] + [
        f"198.51.100.{i}" for i in range(41, 51)
    ]
    agg.flush(0.0, everything=True)
    assert len(out) == 142 + 10 + 49 + 1
