"""The hub's store: alerts, device statuses, telemetry, daily summaries, seq gaps, quarantine.

``open_store(url)``: ``sqlite:///path/hub.sqlite`` (or a bare path; the embedded default for the
demo and a small hub) or ``postgresql://...`` (a real centre; psycopg 3). Both run the same
versioned migrations (hub/store/schema.py) and the same ingest logic; only SQL details differ.

One ``ingest(batch)`` is one transaction: the collector acknowledges the batch's MQTT messages to
the broker only after it returns, so delivery into the database is at-least-once and the store
makes it exactly-once by alert id (``ON CONFLICT DO NOTHING``). An alert's ingest touches no device
row: it appends (device, site, seq, received_at) of each NEW alert to ``seq_pending`` in the same
transaction, and ``fold`` (the collector runs it about twice a second, one collector at a time)
applies those rows set-based to the device rows: count, last seen, highest seq and gaps. So two
collectors never wait on each other's device rows (on PostgreSQL one batch is a COPY and one
INSERT statement), and what the device rows say lags the alerts by at most one fold. Statuses,
telemetry and summaries (few) still update their device row in the ingest transaction, rows
touched in sorted order (alerts inserted in id order), so two collectors never deadlock; a
serialization failure is retried with the whole batch.

Rules kept here, not in the consumers:

- **seq gaps**: each device numbers its alerts 1, 2, 3 ...; the store keeps the highest seq seen
  and every missing range (found by ``fold``, so seqs that arrive out of order within one fold,
  as they do from two collectors, open no gap at all). A late alert fills (or splits) its range.
  A range still open ``gap_final_after`` seconds after it was found is marked permanent (the
  broker no longer holds anything that could fill it: set it to the broker's message expiry /
  the collectors' session expiry).
- **statuses** (bd_seq, the device's connection counter): a status with a lower bd_seq than the
  stored one is ignored (a late will never overrides a newer session), and within one bd_seq a
  terminal state (``lost``, ``disconnected``) is never followed by ``ready``/``init``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.store.schema import LATEST, MIGRATIONS

TERMINAL = ("lost", "disconnected")


class StoreError(Exception):
    """A store that cannot be opened or migrated; the message says which and why."""


@dataclass
class AlertRow:
    id: str
    ts: float
    device: str
    site: str
    seq: int | None
    received_at: float
    eve: str  # the EVE-JSON record as received (canonical text)
    signature_id: int | None = None
    signature: str | None = None
    category: str | None = None
    severity: int | None = None
    src_ip: str | None = None
    src_port: int | None = None
    dest_ip: str | None = None
    dest_port: int | None = None
    proto: str | None = None
    count: int | None = None


@dataclass
class StatusRow:
    device: str
    site: str
    status: dict[str, Any]
    seen_at: float  # when the device said it (receipt time; a retained status: its own ts)


@dataclass
class TelemetryRow:
    device: str
    site: str
    ts: float
    received_at: float
    data: dict[str, Any]


@dataclass
class SummaryRow:
    device: str
    site: str
    day: str
    received_at: float
    data: dict[str, Any]


@dataclass
class BadRow:
    topic: str
    reason: str
    payload: bytes
    received_at: float


@dataclass
class Batch:
    alerts: list[AlertRow] = field(default_factory=list)
    statuses: list[StatusRow] = field(default_factory=list)
    telemetry: list[TelemetryRow] = field(default_factory=list)
    summaries: list[SummaryRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.alerts)
            + len(self.statuses)
            + len(self.telemetry)
            + len(self.summaries)
            + len(self.bad)
        )


@dataclass
class IngestResult:
    new_alerts: int = 0
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_ignored: int = 0
    retries: int = 0


@dataclass
class FoldResult:
    alerts: int = 0  # pending alerts folded into their device rows
    devices: int = 0
    gaps_opened: int = 0
    gaps_filled: int = 0
    more: bool = False  # the fold took its limit: more may be pending
    skipped: bool = False  # another collector was folding


@dataclass
class _Pending:
    site: str
    last_seen: float
    count: int = 0
    seqs: set[int] = field(default_factory=set)


def _fill(gaps: list[list[Any]], seq: int) -> int:
    """Take `seq` out of the gap holding it (splitting it); 1 when it filled one."""
    for i, (lo, hi, opened, permanent) in enumerate(gaps):
        if lo <= seq <= hi:
            parts = [[a, z, opened, permanent] for a, z in ((lo, seq - 1), (seq + 1, hi)) if a <= z]
            gaps[i : i + 1] = parts
            return 1
    return 0


def _month_start(t: dt.datetime) -> dt.datetime:
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(t: dt.datetime) -> dt.datetime:
    return (t.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


class Store:
    """Shared logic; `SQLiteStore` and `PostgresStore` supply the connection and SQL details."""

    dialect = ""
    p = "?"  # placeholder

    fold_limit = 50_000  # pending alerts one fold takes

    def __init__(self, gap_final_after: float = 3600.0) -> None:
        self.gap_final_after = gap_final_after
        self.lock = threading.Lock()  # one connection, used by one thread at a time

    # -- backend hooks --------------------------------------------------------------------------

    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _retryable(self, e: Exception) -> bool:
        return False

    def data_error(self, e: Exception) -> bool:
        """True when the database refused the data itself (retrying cannot help), not when it
        is unreachable."""
        return False

    def _ts(self, seconds: float) -> Any:
        return seconds

    def _from_ts(self, value: Any) -> float:
        return float(value)

    def _insert_alerts(self, cur: Any, rows: list[AlertRow]) -> int:
        """Insert the alerts not stored yet, each new one also into seq_pending (for `fold`);
        how many were new."""
        raise NotImplementedError

    def _fold_lock(self, cur: Any, wait: bool) -> bool:
        """One folder at a time (SQLite: BEGIN IMMEDIATE is that already)."""
        return True

    def _take_pending(self, cur: Any, limit: int) -> list[tuple[str, str, int | None, float]]:
        raise NotImplementedError

    def _in(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return "(" + ",".join(self.p for _ in values) + ")", list(values)

    def _greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def close(self) -> None:
        raise NotImplementedError

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self.lock, self._tx() as cur:
            return self._version(cur)

    def _version(self, cur: Any) -> int:
        try:
            cur.execute("SELECT max(version) FROM schema_migrations")
        except Exception:
            return 0
        row = cur.fetchone()
        return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply every migration not yet applied (each in its own transaction); the version."""
        with self.lock:
            for m in MIGRATIONS:
                with self._tx() as cur:
                    self._migration_lock(cur)
                    cur.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY "
                        "KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                    )
                    if self._version(cur) >= m.version:
                        continue
                    for stmt in m.sql(self.dialect):
                        cur.execute(stmt)
                    cur.execute(
                        f"INSERT INTO schema_migrations VALUES ({self.p}, {self.p}, {self.p})",
                        (m.version, m.name, time.time()),
                    )
        return LATEST

    def _migration_lock(self, cur: Any) -> None:
        pass

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(self, batch: Batch, now: float | None = None) -> IngestResult:
        now = time.time() if now is None else now
        attempt = 0
        while True:
            try:
                with self.lock:
                    self._prepare(batch)
                    with self._tx() as cur:
                        res = self._ingest(cur, batch, now)
                res.retries = attempt
                return res
            except Exception as e:
                if not self._retryable(e) or attempt >= 8:
                    raise
                attempt += 1
                time.sleep(0.01 * attempt)

    def _prepare(self, batch: Batch) -> None:
        """Work outside the ingest transaction (PostgreSQL: the months' partitions)."""

    def _ingest(self, cur: Any, b: Batch, now: float) -> IngestResult:
        p = self.p
        res = IngestResult()
        if b.bad:
            cur.executemany(
                f"INSERT INTO quarantine (received_at, topic, reason, payload) "
                f"VALUES ({p}, {p}, {p}, {p})",
                [(r.received_at, r.topic, r.reason, r.payload) for r in b.bad],
            )
        # Phase 1: alerts, in id order (no lock-order cycles between two collectors).
        unique: dict[str, AlertRow] = {}
        for a in b.alerts:
            unique.setdefault(a.id, a)
        res.new_alerts = self._insert_alerts(cur, sorted(unique.values(), key=lambda a: a.id))
        res.duplicates = len(b.alerts) - res.new_alerts
        if b.telemetry:  # rows first: the device-row locks come last and stay short
            cur.executemany(
                f"INSERT INTO telemetry (device, site, ts, received_at, data) "
                f"VALUES ({p}, {p}, {p}, {p}, {p})",
                [(t.device, t.site, t.ts, t.received_at, json.dumps(t.data)) for t in b.telemetry],
            )
        if b.summaries:
            cur.executemany(
                f"INSERT INTO summaries (device, site, day, received_at, data) "
                f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (device, day) DO UPDATE SET "
                f"received_at = excluded.received_at, data = excluded.data",
                [(m.device, m.site, m.day, m.received_at, json.dumps(m.data)) for m in b.summaries],
            )
        # Device rows only for the few statuses, telemetry and summaries: an alert touches no
        # device row here (seq_high, gaps, counts and last_seen are folded in later, set-based,
        # from seq_pending by `fold`), so two collectors never wait on each other's rows.
        seen: dict[str, tuple[str, float]] = {}
        for s in b.statuses:
            _seen(seen, s.device, s.site, s.seen_at)
        for t in b.telemetry:
            _seen(seen, t.device, t.site, t.received_at)
        for m in b.summaries:
            _seen(seen, m.device, m.site, m.received_at)
        if not seen:
            return res
        names = sorted(seen)
        self._upsert_devices(cur, [(d, seen[d][0], seen[d][1], seen[d][1]) for d in names])
        rows: dict[str, list[Any]] = {}
        if b.statuses:
            for chunk in _chunks(sorted({s.device for s in b.statuses}), 500):
                clause, args = self._in(chunk)
                cur.execute(
                    f"SELECT device, bd_seq, state FROM devices WHERE device IN {clause}", args
                )
                for r in cur.fetchall():
                    rows[r[0]] = list(r[1:])
        # Statuses, with the bd_seq rules, in arrival order per device.
        for s in sorted(b.statuses, key=lambda s: s.device):
            st = s.status
            bd = st.get("bd_seq")
            bd = bd if isinstance(bd, int) and not isinstance(bd, bool) else None
            state = st.get("state") if isinstance(st.get("state"), str) else None
            old_bd, old_state = rows[s.device]
            if not _status_wins(bd, state, old_bd, old_state):
                res.statuses_ignored += 1
                continue
            rows[s.device] = [bd, state]
            res.statuses_applied += 1
            leds = st.get("leds")
            cur.execute(
                f"UPDATE devices SET state = {p}, bd_seq = {p}, state_since = {p}, "
                f"version = coalesce({p}, version), intel_version = coalesce({p}, intel_version), "
                f"mode = coalesce({p}, mode), leds = coalesce({p}, leds), status = {p} "
                f"WHERE device = {p}",
                (
                    state,
                    bd,
                    s.seen_at,
                    _str(st.get("version")),
                    _str(st.get("intel_version")),
                    _str(st.get("mode")),
                    json.dumps(leds, sort_keys=True) if leds is not None else None,
                    json.dumps(st, sort_keys=True),
                    s.device,
                ),
            )
        if b.telemetry:
            for t in sorted(b.telemetry, key=lambda t: (t.device, t.received_at)):
                c: dict[str, Any] = (
                    t.data["counters"] if isinstance(t.data.get("counters"), dict) else {}
                )
                cur.execute(
                    f"UPDATE devices SET telemetry_at = {p}, "
                    f"fail_open_events = coalesce({p}, fail_open_events), "
                    f"outbox_depth = coalesce({p}, outbox_depth) WHERE device = {p}",
                    (t.received_at, _int(c.get("fail_open_events")), _int(c.get("outbox_depth")),
                     t.device),
                )  # fmt: skip
        return res

    def _upsert_devices(self, cur: Any, rows: list[tuple[str, str, float, float]]) -> None:
        """(device, site, first_seen, last_seen), sorted by device."""
        p = self.p
        cur.executemany(
            f"INSERT INTO devices (device, site, first_seen, last_seen) "
            f"VALUES ({p}, {p}, {p}, {p}) "
            f"ON CONFLICT (device) DO UPDATE SET last_seen = "
            f"{self._greatest('devices.last_seen', 'excluded.last_seen')}",
            rows,
        )

    def _update_seqs(self, cur: Any, updates: list[tuple[int, int, str]]) -> None:
        """(seq_high, new alerts, device)."""
        p = self.p
        cur.executemany(
            f"UPDATE devices SET seq_high = {p}, alerts = alerts + {p} WHERE device = {p}", updates
        )

    def fold(self, now: float | None = None, *, wait: bool = False) -> FoldResult:
        """Fold the alerts ingested since the last fold into the device rows, set-based: per
        device the alert count, last seen, highest seq and the seq gaps (opened, split, filled).

        Ingest only appends each new alert's (device, site, seq, received_at) to seq_pending in
        its own transaction; this takes up to `fold_limit` of those rows and applies them in one
        transaction, so the per-message ingest path never touches (or waits on) a device row.
        One folder at a time: with `wait` False a fold that finds another collector folding
        returns at once (``skipped``); call it until ``more`` is False to drain a backlog."""
        now = time.time() if now is None else now
        res = FoldResult()
        with self.lock, self._tx() as cur:
            if not self._fold_lock(cur, wait):
                res.skipped = True
                return res
            pending = self._take_pending(cur, self.fold_limit)
            if not pending:
                return res
            res.alerts = len(pending)
            res.more = len(pending) >= self.fold_limit
            per: dict[str, _Pending] = {}
            for device, site, seq, at in pending:
                e = per.get(device)
                if e is None:
                    e = per[device] = _Pending(site, at)
                elif at > e.last_seen:
                    e.site, e.last_seen = site, at
                e.count += 1
                if seq is not None:
                    e.seqs.add(int(seq))
            names = sorted(per)
            res.devices = len(names)
            self._upsert_devices(cur, [(d, per[d].site, per[d].last_seen, per[d].last_seen)
                                       for d in names])  # fmt: skip
            highs: dict[str, int] = {}
            for chunk in _chunks(names, 500):
                clause, args = self._in(chunk)
                cur.execute(f"SELECT device, seq_high FROM devices WHERE device IN {clause}", args)
                highs.update((d, int(h or 0)) for d, h in cur.fetchall())
            # Devices with a late seq (at or below their high): their gaps are rewritten whole.
            late = [d for d in names if per[d].seqs and min(per[d].seqs) <= highs[d]]
            gaps: dict[str, list[list[Any]]] = {d: [] for d in late}
            for chunk in _chunks(late, 500):
                clause, args = self._in(chunk)
                cur.execute(
                    f"SELECT device, lo, hi, opened_at, permanent FROM seq_gaps "
                    f"WHERE device IN {clause} ORDER BY device, lo",
                    args,
                )
                for d, lo, hi, opened, permanent in cur.fetchall():
                    gaps[d].append([int(lo), int(hi), opened, permanent])
            inserts: list[tuple[Any, ...]] = []
            updates = []
            for d in names:
                high = highs[d]
                mine = gaps.get(d)
                for seq in sorted(per[d].seqs):
                    if seq > high:
                        if seq > high + 1:
                            res.gaps_opened += 1
                            if mine is None:
                                inserts.append((d, high + 1, seq - 1, now, 0))
                            else:
                                mine.append([high + 1, seq - 1, now, 0])
                        high = seq
                    elif mine is not None:
                        res.gaps_filled += _fill(mine, seq)
                updates.append((high, per[d].count, d))
            if late:
                for chunk in _chunks(late, 500):
                    clause, args = self._in(chunk)
                    cur.execute(f"DELETE FROM seq_gaps WHERE device IN {clause}", args)
                inserts += [(d, lo, hi, opened, perm) for d in late
                            for lo, hi, opened, perm in gaps[d]]  # fmt: skip
            if inserts:
                p = self.p
                cur.executemany(
                    f"INSERT INTO seq_gaps (device, lo, hi, opened_at, permanent) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p})",
                    inserts,
                )
            self._update_seqs(cur, updates)
        return res

    def fold_all(self, now: float | None = None) -> FoldResult:
        """Fold until nothing is pending (waiting for another folder); the summed result."""
        total = FoldResult()
        while True:
            r = self.fold(now, wait=True)
            total.alerts += r.alerts
            total.devices += r.devices
            total.gaps_opened += r.gaps_opened
            total.gaps_filled += r.gaps_filled
            if not r.more:
                return total

    # -- upkeep ---------------------------------------------------------------------------------

    def finalize_gaps(self, now: float | None = None) -> int:
        """Mark gaps open longer than `gap_final_after` permanent; how many were marked."""
        now = time.time() if now is None else now
        with self.lock, self._tx() as cur:
            cur.execute(
                f"UPDATE seq_gaps SET permanent = 1 WHERE permanent = 0 AND opened_at <= {self.p}",
                (now - self.gap_final_after,),
            )
            return int(cur.rowcount or 0)

    def check_silent(self, silent_after: float, now: float | None = None) -> list[dict[str, Any]]:
        """Raise a hub alert for each device silent longer than `silent_after` s (once per
        silence); clear it when the device is heard again. Returns the alerts raised now."""
        now = time.time() if now is None else now
        p = self.p
        raised = []
        with self.lock, self._tx() as cur:
            cur.execute(
                f"SELECT device, site, last_seen FROM devices WHERE silent_since IS NULL "
                f"AND last_seen < {p} ORDER BY device",
                (now - silent_after,),
            )
            for device, site, last in cur.fetchall():
                text = (
                    f"device {device} at {site} silent for {int(now - last)} s "
                    "(the office may be without protection)"
                )
                cur.execute(
                    f"UPDATE devices SET silent_since = {p} WHERE device = {p} "
                    "AND silent_since IS NULL",
                    (now, device),
                )
                if cur.rowcount != 1:
                    continue  # another collector raised it first
                cur.execute(
                    f"INSERT INTO hub_alerts (device, site, kind, text, raised_at) "
                    f"VALUES ({p}, {p}, 'silent', {p}, {p})",
                    (device, site, text, now),
                )
                raised.append({"device": device, "site": site, "kind": "silent", "text": text})
            cur.execute(
                "SELECT device FROM devices WHERE silent_since IS NOT NULL "
                "AND last_seen > silent_since ORDER BY device"
            )
            for (device,) in cur.fetchall():
                cur.execute(f"UPDATE devices SET silent_since = NULL WHERE device = {p}", (device,))
                cur.execute(
                    f"UPDATE hub_alerts SET cleared_at = {p} WHERE device = {p} "
                    f"AND kind = 'silent' AND cleared_at IS NULL",
                    (now, device),
                )
        return raised

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete alerts (PostgreSQL: drop whole monthly partitions), telemetry and quarantine
        older than the retention; returns the number of alert rows or partitions removed."""
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        with self.lock, self._tx() as cur:
            n = self._prune_alerts(cur, cutoff)
            cur.execute(f"DELETE FROM telemetry WHERE ts < {self.p}", (cutoff,))
            cur.execute(f"DELETE FROM quarantine WHERE received_at < {self.p}", (cutoff,))
        return n

    def _prune_alerts(self, cur: Any, cutoff: float) -> int:
        cur.execute(f"DELETE FROM alerts WHERE ts < {self.p}", (self._ts(cutoff),))
        return int(cur.rowcount or 0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction on this store's connection (a cursor; placeholders are `p`), for
        the hub's own tables kept by other modules (hub/rollout/)."""
        with self.lock, self._tx() as cur:
            yield cur

    # -- queries (console, tests, `watchpost-hub` commands) -------------------------------------

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.lock, self._tx() as cur:
            cur.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def alerts(
        self,
        *,
        site: str | None = None,
        device: str | None = None,
        signature_id: int | None = None,
        src_ip: str | None = None,
        max_severity: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; each row with its EVE record under ``eve``."""
        where, args = [], []
        for col, op, v in (
            ("site", "=", site),
            ("device", "=", device),
            ("signature_id", "=", signature_id),
            ("src_ip", "=", src_ip),
            ("severity", "<=", max_severity),
        ):
            if v is not None:
                where.append(f"{col} {op} {self.p}")
                args.append(v)
        if since is not None:
            where.append(f"ts >= {self.p}")
            args.append(self._ts(since))
        if until is not None:
            where.append(f"ts < {self.p}")
            args.append(self._ts(until))
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY ts DESC LIMIT {int(limit)}"
        rows = self._query(sql, args)
        for r in rows:
            r["ts"] = self._from_ts(r["ts"])
            if isinstance(r["eve"], str):
                r["eve"] = json.loads(r["eve"])
        return rows

    def alert_count(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM alerts")[0]["n"])

    def seqs(self, device: str) -> list[int]:
        """Every stored alert seq of `device`, ascending (duplicates would show twice)."""
        rows = self._query(
            f"SELECT seq FROM alerts WHERE device = {self.p} ORDER BY seq", (device,)
        )
        return [int(r["seq"]) for r in rows]

    def devices(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM devices ORDER BY site, device")
        for r in rows:
            for k in ("status", "leds"):
                if isinstance(r.get(k), str):
                    r[k] = json.loads(r[k])
        return rows

    def gaps(self, device: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT device, lo, hi, opened_at, permanent FROM seq_gaps"
        args: list[Any] = []
        if device is not None:
            sql += f" WHERE device = {self.p}"
            args.append(device)
        rows = self._query(sql + " ORDER BY device, lo", args)
        for r in rows:
            r["permanent"] = bool(r["permanent"])
        return rows

    def quarantined(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM quarantine ORDER BY id")

    def hub_alerts(self, open_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM hub_alerts"
        if open_only:
            sql += " WHERE cleared_at IS NULL"
        return self._query(sql + " ORDER BY id")

    def telemetry(self, device: str) -> list[dict[str, Any]]:
        rows = self._query(
            f"SELECT * FROM telemetry WHERE device = {self.p} ORDER BY ts", (device,)
        )
        for r in rows:
            if isinstance(r["data"], str):
                r["data"] = json.loads(r["data"])
        return rows

    def summaries(self, device: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM summaries", []
        if device is not None:
            sql, args = sql + f" WHERE device = {self.p}", [device]
        rows = self._query(sql + " ORDER BY device, day", args)
        for r in rows:
            if isinstance(r["data"], str):
                r["data"] = json.loads(r["data"])
        return rows


def _seen(seen: dict[str, tuple[str, float]], device: str, site: str, at: float) -> None:
    old = seen.get(device)
    if old is None or at > old[1]:
        seen[device] = (site, at)


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _str(v: Any) -> str | None:
    return None if v is None or isinstance(v, dict | list) else str(v)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _status_wins(bd: int | None, state: str | None, old_bd: int | None, old_state: Any) -> bool:
    """The bd_seq rules: a newer session wins; an older one never does; within one session a
    terminal state (lost/disconnected) is final."""
    if old_bd is None:
        return True
    if bd is None:
        return False
    if bd != old_bd:
        return bd > old_bd
    return not (old_state in TERMINAL and state not in TERMINAL)


# -- SQLite ----------------------------------------------------------------------------------------


class SQLiteStore(Store):
    dialect = "sqlite"
    p = "?"

    def __init__(self, path: str | Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            # A batch is acknowledged to the broker after COMMIT: it must be on disk by then.
            self.db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise StoreError(f"sqlite store {self.path}: {e}") from None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self.db.rollback()
            raise
        else:
            cur.execute("COMMIT")

    def _version(self, cur: Any) -> int:
        cur.execute("SELECT name FROM sqlite_master WHERE name = 'schema_migrations'")
        if cur.fetchone() is None:
            return 0
        return super()._version(cur)

    def _retryable(self, e: Exception) -> bool:
        return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)

    def data_error(self, e: Exception) -> bool:
        return isinstance(e, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError)

    def _insert_alerts(self, cur: Any, rows: list[AlertRow]) -> int:
        new = []
        for a in rows:
            cur.execute(
                "INSERT OR IGNORE INTO alerts (id, ts, device, site, seq, received_at, "
                "signature_id, signature, category, severity, src_ip, src_port, dest_ip, "
                "dest_port, proto, count, eve) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _alert_values(a, a.ts),
            )
            if cur.rowcount == 1:
                new.append((a.device, a.site, a.seq, a.received_at))
        cur.executemany(
            "INSERT INTO seq_pending (device, site, seq, received_at) VALUES (?, ?, ?, ?)", new
        )
        return len(new)

    def _take_pending(self, cur: Any, limit: int) -> list[tuple[str, str, int | None, float]]:
        cur.execute(
            "DELETE FROM seq_pending WHERE rowid IN (SELECT rowid FROM seq_pending "
            "ORDER BY rowid LIMIT ?) RETURNING device, site, seq, received_at",
            (limit,),
        )
        return cur.fetchall()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


def _alert_values(a: AlertRow, ts: Any) -> tuple[Any, ...]:
    return (a.id, ts, a.device, a.site, a.seq, a.received_at, a.signature_id, a.signature,
            a.category, a.severity, a.src_ip, a.src_port, a.dest_ip, a.dest_port, a.proto,
            a.count, a.eve)  # fmt: skip


# -- PostgreSQL ------------------------------------------------------------------------------------


class PostgresStore(Store):
    """psycopg 3; ``alerts`` is range-partitioned by month on ``ts`` (partitions made on demand,
    dropped whole by `prune`)."""

    dialect = "postgresql"
    p = "%s"

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL store: psycopg is not installed") from None
        self._psycopg = psycopg
        self.url = url
        try:
            self.db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL store {_redact(url)}: {e}".strip()) from None
        self._months: set[str] = set()
        self._month_spans: list[tuple[float, float]] = []  # [start, end) of known partitions
        self._staging = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self.db.transaction(), self.db.cursor() as cur:
            yield cur

    def _migration_lock(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(7419001)")

    def _version(self, cur: Any) -> int:
        cur.execute("SELECT to_regclass('schema_migrations')")
        if cur.fetchone()[0] is None:
            return 0
        return super()._version(cur)

    def _retryable(self, e: Exception) -> bool:
        errors = self._psycopg.errors
        return isinstance(e, errors.DeadlockDetected | errors.SerializationFailure)

    def data_error(self, e: Exception) -> bool:
        pg = self._psycopg
        return isinstance(e, pg.DataError | pg.IntegrityError | pg.ProgrammingError)

    def _ts(self, seconds: float) -> Any:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)

    def _from_ts(self, value: Any) -> float:
        return value.timestamp() if isinstance(value, dt.datetime) else float(value)

    def _in(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return "(SELECT unnest(%s::text[]))", [list(values)]

    def _greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def partition_name(self, when: dt.datetime) -> str:
        return f"alerts_y{when.year:04d}m{when.month:02d}"

    def _prepare(self, batch: Batch) -> None:
        if batch.alerts and not self._staging:
            # The COPY target, once per connection (it survives commits; rows do not). Times
            # arrive as Unix seconds and the record as text: PostgreSQL converts them in the
            # INSERT (cheaper than a datetime object and a jsonb dump per row in Python).
            with self._tx() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS alerts_in (id text, ts float8, device text, "
                    "site text, seq int8, received_at float8, signature_id int8, signature text, "
                    "category text, severity int4, src_ip text, src_port int4, dest_ip text, "
                    "dest_port int4, proto text, count int4, eve text) ON COMMIT DELETE ROWS"
                )
            self._staging = True
        for a in batch.alerts:
            if any(lo <= a.ts < hi for lo, hi in self._month_spans):
                continue
            start = _month_start(dt.datetime.fromtimestamp(a.ts, dt.UTC))
            name = self.partition_name(start)
            end = _next_month(start)
            if name not in self._months:
                with self._tx() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(7419002)")
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF alerts "
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
                self._months.add(name)
            self._month_spans.append((start.timestamp(), end.timestamp()))

    _ALERT_COLS = (
        "id, ts, device, site, seq, received_at, signature_id, signature, category, severity, "
        "src_ip, src_port, dest_ip, dest_port, proto, count, eve"
    )
    _STAGED_COLS = (
        "id, to_timestamp(ts), device, site, seq, received_at, signature_id, signature, "
        "category, severity, src_ip, src_port, dest_ip, dest_port, proto, count, eve::jsonb"
    )

    def _insert_alerts(self, cur: Any, rows: list[AlertRow]) -> int:
        """COPY into a per-session temporary table, then ONE statement: INSERT ... ON CONFLICT
        DO NOTHING in id order, the new rows' seqs into seq_pending, and their count."""
        if not rows:
            return 0
        with cur.copy(f"COPY alerts_in ({self._ALERT_COLS}) FROM STDIN") as copy:
            for a in rows:
                copy.write_row(_alert_values(a, a.ts))
        cur.execute(
            f"WITH ins AS (INSERT INTO alerts ({self._ALERT_COLS}) SELECT {self._STAGED_COLS} "
            "FROM alerts_in ORDER BY id ON CONFLICT DO NOTHING "
            "RETURNING device, site, seq, received_at), "
            "pend AS (INSERT INTO seq_pending (device, site, seq, received_at) "
            "SELECT device, site, seq, received_at FROM ins) "
            "SELECT count(*) FROM ins"
        )
        return int(cur.fetchone()[0])

    def _fold_lock(self, cur: Any, wait: bool) -> bool:
        if wait:
            cur.execute("SELECT pg_advisory_xact_lock(7419003)")
            return True
        cur.execute("SELECT pg_try_advisory_xact_lock(7419003)")
        return bool(cur.fetchone()[0])

    def _take_pending(self, cur: Any, limit: int) -> list[tuple[str, str, int | None, float]]:
        cur.execute(
            "DELETE FROM seq_pending WHERE ctid IN (SELECT ctid FROM seq_pending LIMIT %s) "
            "RETURNING device, site, seq, received_at",
            (limit,),
        )
        return cur.fetchall()

    def _upsert_devices(self, cur: Any, rows: list[tuple[str, str, float, float]]) -> None:
        cols = list(zip(*rows, strict=True))
        cur.execute(
            "INSERT INTO devices (device, site, first_seen, last_seen) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[]) "
            "ORDER BY 1 ON CONFLICT (device) DO UPDATE SET "
            "last_seen = GREATEST(devices.last_seen, excluded.last_seen)",
            [list(c) for c in cols],
        )

    def _update_seqs(self, cur: Any, updates: list[tuple[int, int, str]]) -> None:
        highs, counts, devices = (list(c) for c in zip(*updates, strict=True))
        cur.execute(
            "UPDATE devices d SET seq_high = u.h, alerts = d.alerts + u.n "
            "FROM unnest(%s::text[], %s::int8[], %s::int8[]) AS u(dev, h, n) "
            "WHERE d.device = u.dev",
            [devices, highs, counts],
        )

    def partitions(self) -> list[str]:
        rows = self._query(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'alerts'::regclass ORDER BY 1"
        )
        return [r["name"] for r in rows]

    def _prune_alerts(self, cur: Any, cutoff: float) -> int:
        """Drop every monthly partition that ends at or before the cutoff."""
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'alerts'::regclass"
        )
        limit = dt.datetime.fromtimestamp(cutoff, dt.UTC)
        dropped = 0
        for (name,) in cur.fetchall():
            try:
                start = dt.datetime(int(name[8:12]), int(name[13:15]), 1, tzinfo=dt.UTC)
            except ValueError:
                continue
            if _next_month(start) <= limit:
                cur.execute(f"DROP TABLE {name}")
                self._months.discard(name)
                self._month_spans = [(lo, hi) for lo, hi in self._month_spans
                                     if lo != start.timestamp()]  # fmt: skip
                dropped += 1
        return dropped

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def open_store(url: str, *, migrate: bool = True, **kw: Any) -> Store:
    """A store for `url` (``sqlite:///path``, a path, or ``postgresql://``), migrated."""
    if not url:
        raise StoreError("no store URL (sqlite:///path/hub.sqlite or postgresql://...)")
    store: Store
    if url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url, **kw)
    elif url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise StoreError(f"store URL {url!r}: expected sqlite:///absolute/path")
        store = SQLiteStore(path, **kw)
    elif "://" in url:
        raise StoreError(f"store URL {url!r}: unknown scheme (sqlite:// or postgresql://)")
    else:
        store = SQLiteStore(url, **kw)
    if migrate:
        try:
            store.migrate()
        except Exception as e:
            store.close()
            raise StoreError(f"store {_redact(url)}: migration failed: {e}") from None
    return store


__all__ = [
    "AlertRow",
    "BadRow",
    "Batch",
    "FoldResult",
    "IngestResult",
    "PostgresStore",
    "SQLiteStore",
    "StatusRow",
    "Store",
    "StoreError",
    "SummaryRow",
    "TelemetryRow",
    "open_store",
]
