"""The page's own stores stay bounded; every signature explains itself; guard rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.config import Config, InlineConfig, StatusConfig
from appliance.status import charts, guard, series
from appliance.status.explain import GENERIC, explain, texts
from appliance.status.series import SeriesStore


def test_every_signature_has_what_happened_and_what_to_do() -> None:
    from appliance.detect.registry import all_signatures

    sids = {sig.sid for _detector, sig in all_signatures()}
    assert len(sids) >= 40
    missing = sorted(sids - set(texts()))
    assert missing == [], f"signatures without explanation in explain.toml: {missing}"
    for sid in sids:
        t = explain(sid)
        assert len(t["happened"]) > 40 and len(t["todo"]) > 40, sid
        assert t != GENERIC
    assert set(texts()) <= sids, "explanations for signatures that do not exist"


def test_a_month_of_samples_stays_bounded(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path)
    start = time.time() - 31 * 86400
    packets = judged = 0.0
    step = 600  # a sample every 10 minutes (the daemon takes one a minute; same bounds)
    n = 31 * 86400 // step
    for i in range(n):
        packets += 10.0 * step
        judged += 0.1 * step
        talkers = {f"198.18.{i % 4}.{j}": 1 for j in range(60)} if i % 6 == 0 else None
        store.record({"packets": packets, "judged": judged}, now=start + step * i, talkers=talkers)
    rows = store.rows()
    assert rows["fine"] <= 2 * (series.FINE_KEEP // series.FINE + 2)
    assert rows["coarse"] <= 2 * (series.COARSE_KEEP // series.COARSE + 2)
    assert rows["talkers"] <= series.TALKERS_PER_HOUR * (series.TALKERS_KEEP // 3600 + 2)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.db.execute("VACUUM")
    size = (tmp_path / series.SERIES_FILE).stat().st_size
    assert size < 1_500_000, size
    end = start + step * (n - 1)
    day = store.rates("packets", 86400, 600, now=end)
    assert len(day) >= 144 and all(r == pytest.approx(10.0) for _, r in day[1:-1])
    week = store.rates("packets", 7 * 86400, 3600, now=end)
    assert all(r == pytest.approx(10.0) for _, r in week[1:-1])
    store.close()
    again = SeriesStore(tmp_path)  # survives a restart; a reset counter counts from zero
    again.record({"packets": 60.0, "judged": 0.0}, now=end + 60)
    assert again.rates("packets", 600, 60, now=end + 60)[-1][1] == pytest.approx(1.0)


def test_charts_escape_labels_and_say_what_they_show() -> None:
    svg = str(charts.bars([("<b>pc</b>", 3)], "Top", "connections"))
    assert "<b>" not in svg and "&lt;b&gt;pc&lt;/b&gt; 3 connections" in svg
    line = str(charts.line([(0.0, 1.0), (60.0, 3.0)], "Packets", "p/s"))
    assert 'aria-label="Packets: peak 3 p/s, average 2 p/s"' in line
    assert "no data yet" in str(charts.line([], "Packets", "p/s"))


def test_guard_rules_keep_the_page_on_the_office_side() -> None:
    cfg = Config(
        inline=InlineConfig(bridge="br0", uplink="eth0", office="eth1"),
        status=StatusConfig(allow_from=("192.0.2.0/24",)),
    )
    text = guard.rules(cfg, 8443)
    bridge = text.split("table inet")[0]
    assert 'iifname "eth1" accept' in bridge
    assert bridge.index('iifname "eth1" accept') < bridge.index("tcp dport 8443 counter drop")
    assert "elements = { 192.0.2.0/24 }" in bridge
    inet = text.split("table inet watchpost_page {")[1]
    assert 'tcp dport 8443 iifname { "lo", "br0" } accept' in inet
    assert "eth0" not in text  # the uplink is never let in by name
    with pytest.raises(guard.GuardError):
        guard.rules(cfg, 0)
