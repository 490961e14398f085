"""The alert outbox: every alert is stored before it is published, and deleted only when the
broker has acknowledged it.

It is the pipeline's `Journal`. `submit(eve)` (the packet thread's call) takes the next
per-device sequence number and hands the record to the journal thread over a bounded queue; it
never waits on the disk and never blocks: a record that finds the queue full is counted
(``outbox_overflow``) and not numbered. The journal thread stores what has queued up in ONE
SQLite transaction per batch (group commit: at most `batch` records, at most `max_delay` seconds
after the oldest one arrived, then one fsync), and only then makes the batch visible to the link
and calls `on_record`: nothing is published before it is on disk. `record(eve)` is the same, but
waits until the record is durable (tests, tools). A number the hub sees was stored, and a number
it never sees (a gap) was either evicted (counted, reported in telemetry) or is still on its way.
The hub link takes batches from it (`next_batch`), reports PUBACKs (`delivered`) and broker
refusals (`refused`), and hands everything not yet acknowledged back (`requeue`) when it builds
a new MQTT client. Delivery is at least once: after a restart every stored alert is sent again,
and the hub deduplicates by ``watchpost.id``.

Durability. WAL journal. Batches commit with ``synchronous=FULL``: in WAL mode that is one
fsync of the (sequential, append-only) WAL per batch, so a power cut after a record was reported
durable (`on_record`, `record` returning) loses neither the alert nor its number. A record still
queued when the process dies was never durable and never published; its number may be given
again after the restart (so the hub sees no gap for it). Deletes (acknowledged alerts) commit
with ``synchronous=NORMAL``: WAL stays consistent, and a delete lost to a power cut only means a
duplicate the hub drops. ``kill -9`` loses nothing that was reported durable.

Bounded size. At most `max_rows` alerts are kept. Beyond that the outbox evicts the least
important alert that is not in flight: lowest severity first (Suricata's scale, 3 = low), then
the oldest (lowest seq). Evictions are counted (persisted) and go to the hub in telemetry, so a
gap in the sequence numbers is always explained.

Threads: `submit` runs in the daemon's packet loop and takes only the small queue lock; the
journal thread writes; the link calls the rest from its own threads. One connection, one lock
(never taken by `submit`); no call into paho is made while it is held. `fsync_delay` is a
test-only hook: seconds slept inside every durable commit, as a slow SD card would.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY,
    severity INTEGER NOT NULL,
    created REAL NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_eviction ON alerts (severity DESC, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('seq', 0), ('evicted', 0), ('refused', 0), ('depth', 0);
"""


class Outbox:
    """SQLite (WAL) store of alerts not yet acknowledged by the hub's broker."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_rows: int = 100_000,
        clock: Callable[[], float] = time.time,
        *,
        batch: int = 512,
        max_delay: float = 0.01,
        queue_max: int = 8192,
        fsync_delay: float = 0.0,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be at least 1, got {max_rows}")
        if batch < 1 or queue_max < 1 or not 0.0 <= max_delay <= 1.0:
            raise ValueError(f"outbox batch/queue_max must be >= 1 and max_delay 0-1 s, got "
                             f"{batch}/{queue_max}/{max_delay}")  # fmt: skip
        self.path = Path(path)
        self.max_rows = max_rows
        self.clock = clock
        self._lock = threading.Lock()
        self._inflight: set[int] = set()  # handed to the link, not yet acknowledged
        self._resend: set[int] = set()  # handed out before, to be handed out again
        self._held: set[int] = set()  # refused by the broker; handed out again after requeue()
        self._cursor = 0  # highest seq handed out in this process
        self.write_errors = 0  # records that could not be stored (disk full, I/O error)
        self.delivered_total = 0  # acknowledged since start
        # Called with the record (outside the lock) after each stored alert: the link wakes its
        # sender and counts the alert for the daily summary.
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        self.batch = batch
        self.max_delay = max_delay
        self.queue_max = queue_max
        self.fsync_delay = fsync_delay  # test only: a slow disk
        self.overflow = 0  # records refused by a full queue (not numbered, not stored)
        self.commits = 0  # durable batch commits
        self._db = self._open()
        self._seq = self._meta("seq")
        # The hand-over to the journal thread: (seq, eve) in seq order, and the highest durable
        # seq (records up to it are stored, or failed and counted).
        self._queue: deque[tuple[int, dict[str, Any]]] = deque()
        self._qlock = threading.Lock()
        self._durable = threading.Condition(threading.Lock())
        self._durable_seq = self._seq
        self._wake = threading.Event()
        self._full = threading.Event()
        self._stop = False
        self._writer = threading.Thread(target=self._write_loop, name="outbox-journal", daemon=True)
        self._writer.start()

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            # A corrupt file must not stop inspection: keep it for inspection, start afresh.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s unusable (%s); moved aside to %s", self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{self.path}{suffix}")
                if p.exists():
                    p.replace(f"{aside}{suffix}")
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("cannot switch to WAL mode")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown schema version {version}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Correct the cached depth (cheap: done once per start).
            n = db.execute("SELECT count(*) FROM alerts").fetchone()[0]
            db.execute("UPDATE meta SET value=? WHERE key='depth'", (n,))
        except BaseException:
            db.close()
            raise
        os.chmod(self.path, 0o600)
        return db

    def _meta(self, key: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    # -- the Journal ---------------------------------------------------------------------------

    def submit(self, eve: dict[str, Any]) -> bool:
        """Number `eve` (sets eve["watchpost"]["seq"]) and queue it for the journal thread.

        Never blocks and never touches the disk. False (counted in ``outbox_overflow``, no
        number given) when the queue is full or the outbox is closed."""
        with self._qlock:
            if len(self._queue) >= self.queue_max or self._stop:
                self.overflow += 1
                return False
            seq = self._seq + 1
            self._seq = seq
            eve["watchpost"]["seq"] = seq
            self._queue.append((seq, eve))
            n = len(self._queue)
        if n == 1:
            self._wake.set()
        if n >= self.batch:
            self._full.set()
        return True

    def record(self, eve: dict[str, Any], timeout: float = 30.0) -> None:
        """`submit`, then wait until the record is durable (or its failure was counted).

        A storage failure is logged and counted, never raised: losing one alert must not stop
        inspection. The number is used up either way, so it is never given to another alert."""
        if self.submit(eve):
            self.wait_durable(eve["watchpost"]["seq"], timeout)

    def wait_durable(self, seq: int | None = None, timeout: float = 30.0) -> bool:
        """Wait until every record up to `seq` (default: all submitted so far) is written."""
        if seq is None:
            seq = self._seq
        deadline = time.monotonic() + timeout
        with self._durable:
            while self._durable_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0 or not self._writer.is_alive():
                    return False
                self._durable.wait(min(left, 0.5))
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the journal thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            if self.max_delay > 0 and not self._stop:
                # Group commit: wait for a full batch, at most max_delay after the first record.
                self._full.wait(self.max_delay)
            with self._qlock:
                self._wake.clear()
                self._full.clear()
                items = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                if self._queue:
                    self._wake.set()  # more than a batch waiting: go round at once
                    if len(self._queue) >= self.batch:
                        self._full.set()
                stopping = self._stop and not self._queue
            if items:
                try:
                    self._commit(items)
                except Exception:
                    log.exception("outbox journal thread: batch failed")
                    with self._lock:
                        self.write_errors += len(items)
                with self._durable:
                    self._durable_seq = items[-1][0]
                    self._durable.notify_all()
            if stopping:
                return

    def _commit(self, items: list[tuple[int, dict[str, Any]]]) -> None:
        rows = []
        for seq, eve in items:
            wp = eve["watchpost"]
            severity = int(eve.get("alert", {}).get("severity", 3))
            body = json.dumps(eve, separators=(",", ":"))
            rows.append((seq, severity, self.clock(), str(wp.get("id", "")), body))
        with self._lock:
            stored = self._store_locked(rows)
            if stored is None:  # the batch failed: store one by one, so one bad record is alone
                stored = []
                for row in rows:
                    if self._store_locked([row]) is None:
                        self.write_errors += 1
                        log.error("outbox: alert seq %d not stored", row[0])
                    else:
                        stored.append(row[0])
            else:
                stored = [r[0] for r in rows]
        callback = self.on_record
        if callback is not None:
            done = set(stored)
            for seq, eve in items:
                if seq not in done:
                    continue
                try:
                    callback(eve)
                except Exception:
                    log.exception("outbox on_record callback failed")

    def _store_locked(self, rows: list[tuple[int, int, float, str, str]]) -> list[int] | None:
        """One durable transaction for `rows`; None (rolled back, logged) on a storage error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE meta SET value=max(value, ?) WHERE key='seq'",
                                 (rows[-1][0],))  # fmt: skip
                self._db.executemany(
                    "INSERT INTO alerts (seq, severity, created, id, body) VALUES (?,?,?,?,?)",
                    rows,
                )
                self._db.execute("UPDATE meta SET value=value+? WHERE key='depth'", (len(rows),))
                self._evict_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            log.error("outbox: %d alert(s) from seq %d not stored: %s", len(rows), rows[0][0], e)
            return None
        self.commits += 1
        if self.fsync_delay:
            time.sleep(self.fsync_delay)  # test only: inside the lock, as a slow fsync is
        return [r[0] for r in rows]

    def _evict_locked(self) -> None:
        excess = self._depth_locked() - self.max_rows
        if excess <= 0:
            return
        keep = json.dumps(sorted(self._inflight))
        victims = [
            r[0]
            for r in self._db.execute(
                "SELECT seq FROM alerts WHERE seq NOT IN (SELECT value FROM json_each(?)) "
                "ORDER BY severity DESC, seq LIMIT ?",
                (keep, excess),
            )
        ]
        if not victims:
            return
        self._delete_locked(victims)
        self._db.execute("UPDATE meta SET value=value+? WHERE key='evicted'", (len(victims),))
        self._resend.difference_update(victims)
        self._held.difference_update(victims)
        log.warning(
            "outbox full (%d): evicted %d alert(s), seq %s",
            self.max_rows,
            len(victims),
            victims[:10],
        )

    def _delete_locked(self, seqs: list[int]) -> int:
        n = 0
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            n += self._db.execute(f"DELETE FROM alerts WHERE seq IN ({marks})", chunk).rowcount
        self._db.execute("UPDATE meta SET value=value-? WHERE key='depth'", (n,))
        return n

    def _depth_locked(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key='depth'").fetchone()[0])

    # -- the link's side -----------------------------------------------------------------------

    def next_batch(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` stored alerts not in flight, oldest first, as (seq, JSON bytes); they
        count as in flight until `delivered`, `refused` or `requeue`."""
        if limit <= 0:
            return []
        out: list[tuple[int, bytes]] = []
        with self._lock:
            if self._resend:
                again = sorted(self._resend)[:limit]
                self._resend.difference_update(again)
                marks = ",".join("?" * len(again))
                out += [
                    (r[0], r[1].encode())
                    for r in self._db.execute(
                        f"SELECT seq, body FROM alerts WHERE seq IN ({marks}) ORDER BY seq", again
                    )
                ]
            if len(out) < limit:
                rows = self._db.execute(
                    "SELECT seq, body FROM alerts WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._cursor, limit - len(out)),
                ).fetchall()
                out += [(r[0], r[1].encode()) for r in rows]
                if rows:
                    self._cursor = rows[-1][0]
            self._inflight.update(seq for seq, _ in out)
        return out

    def delivered(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these: delete them (one transaction for the batch)."""
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock:
            self._inflight.difference_update(seqs)
            self._resend.difference_update(seqs)
            self._held.difference_update(seqs)
            self._write_locked(lambda: self._delete_locked(seqs))
            self.delivered_total += len(seqs)

    def refused(self, seqs: Iterable[int]) -> None:
        """The broker refused these (an MQTT 5 reason code >= 0x80): they stay stored and are
        handed out again after `requeue`; the refusals are counted."""
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock:
            self._inflight.difference_update(seqs)
            self._write_locked(
                lambda: self._db.execute(
                    "UPDATE meta SET value=value+? WHERE key='refused'", (len(seqs),)
                )
            )
            self._held.update(seqs)

    def retry_refused(self) -> None:
        """The refusal back-off is over: hand the refused alerts out again."""
        with self._lock:
            self._resend.update(self._held)
            self._held.clear()

    def release(self, seqs: Iterable[int]) -> None:
        """These were handed out but could not be given to the broker client: hand them out
        again later."""
        with self._lock:
            for seq in seqs:
                if seq in self._inflight:
                    self._inflight.discard(seq)
                    self._resend.add(seq)

    def requeue(self) -> None:
        """Hand everything in flight or refused out again (a new MQTT client, or the refusal
        back-off is over)."""
        with self._lock:
            self._resend.update(self._inflight)
            self._resend.update(self._held)
            self._inflight.clear()
            self._held.clear()

    def _write_locked(self, work: Callable[[], Any]) -> None:
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self.write_errors += 1
            log.error("outbox update failed: %s", e)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    # -- reporting -----------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def depth(self) -> int:
        with self._lock:
            return self._depth_locked()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            # By seq (the primary key, no table scan): status pages ask for this every second.
            row = self._db.execute("SELECT created FROM alerts ORDER BY seq LIMIT 1").fetchone()
            oldest = row[0] if row else None
            return {
                "outbox_depth": int(meta["depth"]),
                "outbox_inflight": len(self._inflight),
                "outbox_evicted": int(meta["evicted"]),
                "outbox_refused": int(meta["refused"]),
                "outbox_seq": int(meta["seq"]),
                "outbox_delivered": self.delivered_total,
                "outbox_write_errors": self.write_errors,
                "outbox_queued": len(self._queue),
                "outbox_overflow": self.overflow,
                "outbox_commits": self.commits,
                "outbox_oldest_age_s": round(self.clock() - oldest, 1) if oldest else 0.0,
            }

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (bounded by `timeout`), stop the journal thread, checkpoint."""
        with self._qlock:
            self._stop = True
        self._wake.set()
        self._full.set()
        self._writer.join(timeout)
        if self._writer.is_alive():
            log.error("outbox: %d queued alert(s) not written at close", len(self._queue))
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("outbox checkpoint at close failed: %s", e)
            self._db.close()
