"""The alert outbox: every alert is stored before it is published, and deleted only when the
broker has acknowledged it.

It is the pipeline's `Journal`: `record(eve)` takes the next per-device sequence number and
stores the record in ONE SQLite transaction, so a number the hub sees was stored, and a number it
never sees (a gap) was either evicted (counted, reported in telemetry) or is still on its way.
The hub link takes batches from it (`next_batch`), reports PUBACKs (`delivered`) and broker
refusals (`refused`), and hands everything not yet acknowledged back (`requeue`) when it builds
a new MQTT client. Delivery is at least once: after a restart every stored alert is sent again,
and the hub deduplicates by ``watchpost.id``.

Durability. WAL journal. `record` commits with ``synchronous=FULL``: in WAL mode that is one
fsync of the (sequential, append-only) WAL per alert, so a power cut right after `record`
returns loses neither the alert nor its number, and numbers are never reused. Alerts are rare
(aggregated and rate limited upstream), so the fsync is affordable. Deletes (acknowledged
alerts) commit with ``synchronous=NORMAL``: WAL stays consistent, and a delete lost to a power
cut only means a duplicate the hub drops. ``kill -9`` loses nothing in either mode.

Bounded size. At most `max_rows` alerts are kept. Beyond that the outbox evicts the least
important alert that is not in flight: lowest severity first (Suricata's scale, 3 = low), then
the oldest (lowest seq). Evictions are counted (persisted) and go to the hub in telemetry, so a
gap in the sequence numbers is always explained.

Threads: `record` runs in the daemon's main loop; the link calls the rest from its own threads.
One connection, one lock; no call into paho is made while the lock is held.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
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
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be at least 1, got {max_rows}")
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
        self._db = self._open()
        self._seq = self._meta("seq")

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

    def record(self, eve: dict[str, Any]) -> None:
        """Number `eve` (sets eve["watchpost"]["seq"]) and store it, in one transaction.

        A storage failure is logged and counted, never raised: losing one alert must not stop
        inspection. The number is used up either way, so it is never given to another alert.
        """
        wp = eve["watchpost"]
        severity = int(eve.get("alert", {}).get("severity", 3))
        with self._lock:
            seq = self._seq + 1
            self._seq = seq
            wp["seq"] = seq
            body = json.dumps(eve, separators=(",", ":"))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("UPDATE meta SET value=? WHERE key='seq'", (seq,))
                    self._db.execute(
                        "INSERT INTO alerts (seq, severity, created, id, body) VALUES (?,?,?,?,?)",
                        (seq, severity, self.clock(), str(wp.get("id", "")), body),
                    )
                    self._db.execute("UPDATE meta SET value=value+1 WHERE key='depth'")
                    self._evict_locked()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                self.write_errors += 1
                log.error("outbox: alert seq %d not stored: %s", seq, e)
                return
        callback = self.on_record
        if callback is not None:
            try:
                callback(eve)
            except Exception:
                log.exception("outbox on_record callback failed")

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
                "outbox_oldest_age_s": round(self.clock() - oldest, 1) if oldest else 0.0,
            }

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("outbox checkpoint at close failed: %s", e)
            self._db.close()
