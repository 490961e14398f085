"""The hub store, the same tests against SQLite and a real PostgreSQL cluster (own, temp dir)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store import (
    AlertRow,
    BadRow,
    Batch,
    FoldResult,
    PostgresStore,
    StatusRow,
    Store,
    StoreError,
    SummaryRow,
    TelemetryRow,
    open_store,
)
from hub.store.schema import LATEST, MIGRATIONS

NOW = 1_800_000_000.0  # 2027-01-15


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'hub.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url, gap_final_after=600)
    yield s
    s.close()


def alert(device: str, seq: int, ts: float = NOW, site: str = "s1", **kw: object) -> AlertRow:
    ident = kw.pop("id", f"{device}-{seq}")
    eve = {"timestamp": "x", "alert": {"signature_id": 8102001}, "watchpost": {"id": ident}}
    return AlertRow(
        id=str(ident), ts=ts, device=device, site=site, seq=seq, received_at=NOW,
        eve=json.dumps(eve), signature_id=8102001, signature="Port scan", severity=2,
        src_ip="203.0.113.9", dest_ip="198.18.0.5", dest_port=22, proto="TCP", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_migrations_are_versioned_and_idempotent(store: Store) -> None:
    assert store.schema_version() == LATEST
    assert store.migrate() == LATEST  # again: nothing re-applied, no error
    assert store.alert_count() == 0


def test_an_older_store_with_an_ad_hoc_indicators_table_migrates(store: Store) -> None:
    """Older hubs made ``indicators`` ad hoc (hub/correlate); migration 3 keeps its rows."""
    assert {m.version for m in MIGRATIONS} == {1, 2, 3, 4}
    p = store.p
    with store.lock, store._tx() as cur:
        cur.execute(f"INSERT INTO indicators (id, kind, value, state, offices, evidence, "
                    f"first_seen, last_seen, created_at) VALUES ({p}, 'ip', '203.0.113.9', "
                    f"'suggested', 3, '{{}}', 1, 2, 3)", ("ip:203.0.113.9",))  # fmt: skip
        cur.execute("DROP TABLE seq_pending")
        cur.execute("DELETE FROM schema_migrations WHERE version > 2")
    assert store.schema_version() == 2
    assert store.migrate() == LATEST == 4
    assert store._query("SELECT id FROM indicators") == [{"id": "ip:203.0.113.9"}]
    store.ingest(Batch(alerts=[alert("d1", 1)]), NOW)
    assert store.fold(NOW).alerts == 1


def test_dedup_by_alert_id_and_contiguous_seqs(store: Store) -> None:
    r = store.ingest(Batch(alerts=[alert("d1", 1), alert("d1", 2), alert("d1", 2)]), NOW)
    assert (r.new_alerts, r.duplicates) == (2, 1)
    r = store.ingest(Batch(alerts=[alert("d1", 2), alert("d1", 3)]), NOW)  # redelivered 2
    assert (r.new_alerts, r.duplicates) == (1, 1)
    assert store.seqs("d1") == [1, 2, 3]
    assert store.devices() == []  # alerts touch no device row on ingest: `fold` does that
    f = store.fold(NOW)
    assert (f.alerts, f.devices, f.more, f.skipped) == (3, 1, False, False)
    assert store.fold(NOW).alerts == 0  # each new alert folded once
    assert store.gaps() == []
    (dev,) = store.devices()
    assert (dev["device"], dev["site"], dev["seq_high"], dev["alerts"]) == ("d1", "s1", 3, 3)


def test_gaps_open_split_fill_and_become_permanent(store: Store) -> None:
    store.ingest(Batch(alerts=[alert("d1", 1), alert("d1", 6)]), NOW)
    assert store.fold(NOW).gaps_opened == 1
    assert [(g["lo"], g["hi"]) for g in store.gaps("d1")] == [(2, 5)]
    store.ingest(Batch(alerts=[alert("d1", 3)]), NOW + 10)  # late: splits the gap
    assert store.fold(NOW + 10).gaps_filled == 1
    assert [(g["lo"], g["hi"]) for g in store.gaps("d1")] == [(2, 2), (4, 5)]
    store.ingest(Batch(alerts=[alert("d1", 2)]), NOW + 20)
    store.fold(NOW + 20)
    assert [(g["lo"], g["hi"]) for g in store.gaps("d1")] == [(4, 5)]
    assert store.finalize_gaps(NOW + 599) == 0
    assert store.finalize_gaps(NOW + 600) == 1
    assert store.gaps("d1")[0]["permanent"] is True
    # A device first heard at seq 11 is missing 1-10 (the demo's old problem shows as a gap).
    store.ingest(Batch(alerts=[alert("d2", 11)]), NOW)
    store.fold(NOW)
    assert [(g["lo"], g["hi"]) for g in store.gaps("d2")] == [(1, 10)]
    # Out of order across batches (two collectors) but within one fold: no gap at all; a
    # backlog larger than one fold is drained by fold_all, across folds.
    store.ingest(Batch(alerts=[alert("d3", 3), alert("d3", 5)]), NOW)
    store.ingest(Batch(alerts=[alert("d3", 4), alert("d3", 1), alert("d3", 2)]), NOW)
    assert store.fold(NOW).gaps_opened == 0
    store.fold_limit = 2
    store.ingest(Batch(alerts=[alert("d3", k) for k in (9, 8, 6, 7, 10)]), NOW)
    f = store.fold_all(NOW)
    assert (f.alerts, f.more) == (5, False)
    assert store.gaps("d3") == []
    d3 = next(d for d in store.devices() if d["device"] == "d3")
    assert (d3["seq_high"], d3["alerts"]) == (10, 10)


def test_status_bd_seq_rules(store: Store) -> None:
    def status(state: str, bd: int) -> Batch:
        st = {"state": state, "bd_seq": bd, "version": "1.2", "mode": "monitor",
              "intel_version": "i7", "leds": {"green": "on"}}  # fmt: skip
        return Batch(statuses=[StatusRow("d1", "s1", st, NOW)])

    assert store.ingest(status("ready", 5), NOW).statuses_applied == 1
    assert store.ingest(status("lost", 4), NOW).statuses_ignored == 1  # late will of session 4
    assert store.devices()[0]["state"] == "ready"
    assert store.ingest(status("lost", 5), NOW).statuses_applied == 1  # this session died
    assert store.ingest(status("ready", 5), NOW).statuses_ignored == 1  # reordered: lost wins
    assert store.ingest(status("init", 6), NOW).statuses_applied == 1  # a new session
    d = store.devices()[0]
    assert (d["state"], d["bd_seq"], d["version"], d["mode"], d["intel_version"]) == (
        "init", 6, "1.2", "monitor", "i7")  # fmt: skip
    assert d["leds"] == {"green": "on"}


def test_telemetry_summaries_quarantine(store: Store) -> None:
    tel = {"ts": NOW, "counters": {"fail_open_events": 3, "outbox_depth": 17}}
    store.ingest(
        Batch(
            telemetry=[TelemetryRow("d1", "s1", NOW, NOW, tel)],
            summaries=[SummaryRow("d1", "s1", "2027-01-14", NOW, {"alerts": 4})],
            bad=[BadRow("watchpost/v1/s1/d1/alerts", "not JSON", b"\xff", NOW)],
        ),
        NOW,
    )
    store.ingest(Batch(summaries=[SummaryRow("d1", "s1", "2027-01-14", NOW, {"alerts": 5})]))
    d = store.devices()[0]
    assert (d["fail_open_events"], d["outbox_depth"]) == (3, 17)
    assert store.telemetry("d1")[0]["data"]["counters"]["outbox_depth"] == 17
    assert [s["data"] for s in store.summaries("d1")] == [{"alerts": 5}]  # one per day
    (q,) = store.quarantined()
    assert (q["reason"], bytes(q["payload"])) == ("not JSON", b"\xff")


def test_console_queries(store: Store) -> None:
    store.ingest(Batch(alerts=[alert("d1", 1, NOW - 100), alert("d2", 1, NOW, site="s2")]))
    assert [a["device"] for a in store.alerts()] == ["d2", "d1"]  # newest first
    assert [a["device"] for a in store.alerts(site="s1")] == ["d1"]
    assert [a["device"] for a in store.alerts(since=NOW - 50)] == ["d2"]
    assert store.alerts(signature_id=8102001, src_ip="203.0.113.9", max_severity=2)[0]["eve"]
    assert store.alerts(max_severity=1) == []


def test_silent_device_raises_one_hub_alert_and_clears(store: Store) -> None:
    store.ingest(Batch(alerts=[alert("d1", 1)]), NOW)
    store.fold(NOW)
    assert store.check_silent(300, NOW + 100) == []
    (raised,) = store.check_silent(300, NOW + 400)
    assert raised["device"] == "d1" and "silent" in raised["text"]
    assert store.check_silent(300, NOW + 500) == []  # once per silence
    store.ingest(Batch(alerts=[alert("d1", 2, ts=NOW + 600)]), NOW + 600)
    store.fold(NOW + 600)
    b = Batch(statuses=[StatusRow("d1", "s1", {"state": "ready", "bd_seq": 1}, NOW + 600)])
    store.ingest(b, NOW + 600)
    store.check_silent(300, NOW + 601)
    assert store.hub_alerts(open_only=True) == []
    assert len(store.hub_alerts()) == 1


def test_retention(store: Store) -> None:
    old = NOW - 90 * 86400
    store.ingest(Batch(alerts=[alert("d1", 1, old), alert("d1", 2, NOW)]), NOW)
    store.prune(retention_days=30, now=NOW)
    assert store.seqs("d1") == [2]


def test_two_writers_at_once_store_each_alert_once(store: Store, tmp_path: Path) -> None:
    """Two connections (two collectors) ingest overlapping batches concurrently."""
    if isinstance(store, PostgresStore):
        other = open_store(store.url)
    else:
        other = open_store(str(store.path))  # type: ignore[attr-defined]
    batches = [
        [alert(f"d{k % 7}", k // 7 + 1) for k in range(i, i + 60)] for i in range(0, 600, 30)
    ]  # each alert in two batches

    def run(s: Store, mine: list[list[AlertRow]]) -> None:
        for b in mine:
            s.ingest(Batch(alerts=b))

    t = threading.Thread(target=run, args=(other, batches[1::2]))
    t.start()
    run(store, batches[0::2])
    t.join()
    assert store.alert_count() == 630
    for d in range(7):
        assert store.seqs(f"d{d}") == list(range(1, 91))
    # Folds of both at once: one folds, the other skips (PostgreSQL) or waits (SQLite).
    results: list[FoldResult] = []
    t = threading.Thread(target=lambda: results.append(other.fold_all()))
    t.start()
    results.append(store.fold_all())
    t.join()
    other.close()
    assert sum(r.alerts for r in results) == 630
    assert store.gaps() == []
    assert sorted((d["device"], d["seq_high"], d["alerts"]) for d in store.devices()) == [
        (f"d{d}", 90, 90) for d in range(7)
    ]


def test_postgres_alerts_are_partitioned_by_month(pg_url: str) -> None:
    s = open_store(pg_url)
    assert isinstance(s, PostgresStore)
    jan = dt.datetime(2027, 1, 15, tzinfo=dt.UTC).timestamp()
    mar = dt.datetime(2027, 3, 2, tzinfo=dt.UTC).timestamp()
    s.ingest(Batch(alerts=[alert("d1", 1, jan), alert("d1", 2, mar)]))
    assert s.partitions() == ["alerts_y2027m01", "alerts_y2027m03"]
    rows = s._query("SELECT relkind FROM pg_class WHERE relname = 'alerts'")
    assert rows[0]["relkind"] == "p"  # declaratively partitioned
    assert s.prune(retention_days=20, now=mar) == 1  # January dropped as a whole partition
    assert s.partitions() == ["alerts_y2027m03"] and s.seqs("d1") == [2]
    s.close()


def test_bad_store_urls(tmp_path: Path) -> None:
    for url, msg in (("", "no store URL"), ("mysql://x", "unknown scheme"),
                     ("sqlite://relative.db", "absolute")):  # fmt: skip
        with pytest.raises(StoreError, match=msg):
            open_store(url)
    with pytest.raises(StoreError, match="PostgreSQL store"):
        open_store(f"postgresql:///nope?host={tmp_path}&user=postgres")
