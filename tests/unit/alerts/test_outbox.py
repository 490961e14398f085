"""The SQLite outbox: numbering, eviction order, delivery bookkeeping and crash safety."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from appliance.alerts.model import Alert, Signature
from appliance.alerts.outbox import Outbox
from appliance.alerts.pipeline import AlertPipeline
from tests.helpers import make_config


def eve(severity: int = 2, tag: str = "") -> dict[str, Any]:
    return {
        "event_type": "alert",
        "alert": {"severity": severity, "signature": tag},
        "watchpost": {"id": str(uuid.uuid4())},
    }


def stored(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    try:
        return [json.loads(r[0]) for r in db.execute("SELECT body FROM alerts ORDER BY seq")]
    finally:
        db.close()


def test_numbers_from_one_without_gaps_and_stores_the_numbered_record(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    records = [eve() for _ in range(5)]
    for r in records:
        box.record(r)
    assert [r["watchpost"]["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 2, 3, 4, 5]
    assert [r["watchpost"]["id"] for r in stored(box.path)] == [
        r["watchpost"]["id"] for r in records
    ]
    assert box.depth() == 5
    box.close()


def test_sequence_continues_after_reopen_even_when_everything_was_delivered(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(3):
        box.record(eve())
    box.delivered(seq for seq, _ in box.next_batch(10))
    assert box.depth() == 0
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    r = eve()
    box.record(r)
    assert r["watchpost"]["seq"] == 4
    box.close()


def test_is_the_pipeline_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    seen: list[dict[str, Any]] = []
    pipe = AlertPipeline(make_config(), [seen.append], journal=box)
    sig = Signature(9_000_001, "test finding", "Test", 1)
    for i in range(3):
        pipe(Alert("test", sig, 1_800_000_000.0 + i, f"198.18.0.{10 + i}", "203.0.113.9", "TCP"))
    assert [e["watchpost"]["seq"] for e in seen] == [1, 2, 3]
    # The pipeline hands records over without waiting; the journal thread makes them durable.
    assert box.wait_durable(3)
    assert stored(box.path) == seen
    box.close()


def test_eviction_takes_lowest_severity_first_then_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=4)
    # seq:       1  2  3  4
    for sev in (1, 3, 2, 3):
        box.record(eve(sev))
    box.record(eve(1))  # seq 5: evicts seq 2 (severity 3, the older of the two lows)
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 3, 4, 5]
    box.record(eve(2))  # seq 6: evicts seq 4 (the last low)
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 3, 5, 6]
    box.record(eve(1))  # seq 7: evicts seq 3 (oldest medium)
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 5, 6, 7]
    box.record(eve(3))  # seq 8: the newcomer itself is the least important
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 5, 6, 7]
    assert box.stats()["outbox_evicted"] == 4
    assert box.depth() == 4
    box.close()
    assert Outbox(tmp_path / "o.sqlite").stats()["outbox_evicted"] == 4  # persisted


def test_eviction_spares_alerts_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=3)
    for _ in range(3):
        box.record(eve(3))
    assert [s for s, _ in box.next_batch(2)] == [1, 2]
    box.record(eve(3))  # seq 4: 1 and 2 are in flight, so 3 goes
    assert [r["watchpost"]["seq"] for r in stored(box.path)] == [1, 2, 4]
    box.close()


def test_batches_never_hand_out_an_alert_twice_until_requeued(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(5):
        box.record(eve())
    first = box.next_batch(3)
    assert [s for s, _ in first] == [1, 2, 3]
    assert json.loads(first[0][1])["watchpost"]["seq"] == 1
    assert [s for s, _ in box.next_batch(10)] == [4, 5]
    assert box.next_batch(10) == []
    assert box.inflight == 5
    box.delivered([1, 2])
    box.requeue()  # e.g. a new MQTT client: what was in flight goes out again, oldest first
    assert [s for s, _ in box.next_batch(10)] == [3, 4, 5]
    box.record(eve())
    assert [s for s, _ in box.next_batch(10)] == [6]
    box.close()


def test_refused_alerts_stay_stored_are_counted_and_come_back_after_requeue(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(3):
        box.record(eve())
    box.next_batch(3)
    box.refused([2])
    box.delivered([1, 3])
    assert box.depth() == 1
    assert box.next_batch(10) == []  # not retried within the same back-off
    assert box.stats()["outbox_refused"] == 1
    box.requeue()
    assert [s for s, _ in box.next_batch(10)] == [2]
    box.close()


def test_restart_hands_out_everything_not_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for _ in range(4):
        box.record(eve())
    box.next_batch(4)
    box.delivered([2])
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    assert [s for s, _ in box.next_batch(10)] == [1, 3, 4]
    assert box.stats()["outbox_depth"] == 3
    box.close()


def test_a_storage_failure_is_counted_not_raised_and_the_number_is_not_reused(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.record(eve())
    big = eve()
    big["blob"] = "x" * 200_000
    box._db.execute("PRAGMA max_page_count=8")  # the "disk" is now full
    box.record(big)
    assert box.write_errors == 1
    assert big["watchpost"]["seq"] == 2
    box._db.execute("PRAGMA max_page_count=1000000")
    r = eve()
    box.record(r)
    assert r["watchpost"]["seq"] == 3
    assert [x["watchpost"]["seq"] for x in stored(box.path)] == [1, 3]
    box.close()


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    box.record(eve())
    assert box.depth() == 1
    assert list(tmp_path.glob("o.sqlite.corrupt-*"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    box.close()


WRITER = textwrap.dedent(
    """
    import sys, uuid
    from appliance.alerts.outbox import Outbox
    box = Outbox(sys.argv[1], max_rows=1_000_000)
    while True:
        e = {"alert": {"severity": 2}, "watchpost": {"id": str(uuid.uuid4())}}
        box.record(e)
        sys.stdout.write(f"{e['watchpost']['seq']}\\n")
        sys.stdout.flush()
    """
)


def test_kill_9_mid_stream_loses_no_numbered_alert_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    for _round in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert proc.stdout is not None
        acked = []
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked += [int(line) for line in proc.stdout if line.endswith("\n")]  # still in the pipe
        proc.stdout.close()
        box = Outbox(path)
        seqs = [s for s, _ in box.next_batch(1_000_000)]
        box.close()
        # Every number the writer saw returned is stored, and the stored numbers have no gap
        # (at most one more, committed just before the kill, than the writer printed).
        assert set(acked) <= set(seqs)
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) - max(acked) <= 1


def test_stats_report_depth_and_the_age_of_the_oldest_waiting_alert(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", clock=lambda: now[0])
    box.record(eve())
    now[0] = 1030.0
    box.record(eve())
    now[0] = 1050.0
    s = box.stats()
    assert s["outbox_depth"] == 2 and s["outbox_oldest_age_s"] == 50.0 and s["outbox_seq"] == 2
    box.delivered([1])
    assert box.stats()["outbox_oldest_age_s"] == 20.0
    box.close()


def test_submit_never_waits_on_the_disk_and_counts_what_cannot_be_queued(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", queue_max=5, max_delay=0.0)
    box.record(eve())  # seq 1, durable
    # A stuck disk: the journal thread cannot get at the database while we hold its lock.
    with box._lock:
        records = [eve() for _ in range(20)]
        accepted = [box.submit(r) for r in records]  # returns although nothing can be written
        refused = [r for r, ok in zip(records, accepted, strict=True) if not ok]
    taken = [r for r, ok in zip(records, accepted, strict=True) if ok]
    assert len(taken) >= 5 and box.overflow == len(refused) == 20 - len(taken)
    assert all("seq" not in r["watchpost"] for r in refused)  # refused: no number used up
    assert [r["watchpost"]["seq"] for r in taken] == list(range(2, 2 + len(taken)))
    assert box.wait_durable()
    assert [x["watchpost"]["seq"] for x in stored(box.path)] == list(range(1, 2 + len(taken)))
    assert box.stats()["outbox_overflow"] == len(refused)
    box.close()


def test_group_commit_writes_what_queued_up_in_one_transaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", batch=512, max_delay=0.0)
    box.record(eve())
    before = box.commits
    with box._lock:  # the disk is busy (an fsync): 300 alerts queue up meanwhile
        for _ in range(300):
            assert box.submit(eve())
    assert box.wait_durable()
    # At most one record was taken before the rest queued up: two commits for 300 alerts.
    assert box.commits - before <= 2
    assert box.depth() == 301 and [s for s, _ in box.next_batch(1000)] == list(range(1, 302))
    box.close()


def test_nothing_is_visible_to_the_link_before_it_is_durable(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_delay=0.0)
    published: list[int] = []
    box.on_record = lambda e: published.append(e["watchpost"]["seq"])
    with box._lock:  # the journal thread cannot commit
        assert box.submit(eve()) and box.submit(eve())
        assert stored(box.path) == [] and published == []  # not on disk: not handed on
    assert box.wait_durable(2)
    assert published == [1, 2] and [s for s, _ in box.next_batch(10)] == [1, 2]
    box.close()


ASYNC_WRITER = textwrap.dedent(
    """
    import sys, uuid
    from appliance.alerts.outbox import Outbox
    box = Outbox(sys.argv[1], max_rows=1_000_000, fsync_delay=0.002)
    def durable(e):  # called by the journal thread once the record is on disk
        sys.stdout.write(f"{e['watchpost']['seq']}\\n")
        sys.stdout.flush()
    box.on_record = durable
    while True:
        box.submit({"alert": {"severity": 2}, "watchpost": {"id": str(uuid.uuid4())}})
    """
)


def test_kill_9_loses_nothing_that_was_reported_durable(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    top = 0
    for _round in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", ASYNC_WRITER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert proc.stdout is not None
        durable = []
        for line in proc.stdout:
            durable.append(int(line))
            if len(durable) >= 2000:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        durable += [int(line) for line in proc.stdout if line.endswith("\n")]
        proc.stdout.close()
        box = Outbox(path)
        seqs = [s for s, _ in box.next_batch(10_000_000)]
        box.close()
        # Everything reported durable is stored; stored numbers have no gap (what was still
        # queued at the kill was never durable, and its numbers are given again).
        assert set(durable) <= set(seqs) and min(durable) == top + 1
        assert seqs == list(range(1, len(seqs) + 1))
        top = len(seqs)
