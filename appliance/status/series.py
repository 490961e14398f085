"""A small bounded time-series store for the page's charts (SQLite in the state directory).

The page component samples the daemon's cumulative counters every few seconds (`record`); the
store keeps what they grew by per bucket: one-minute buckets for `FINE_KEEP` (two days) and
fifteen-minute buckets for `COARSE_KEEP` (35 days), plus per-hour counts of connections office
devices opened to the internet (top talkers, at most `TALKERS_PER_HOUR` devices an hour, 8 days).
Old rows are deleted as new ones come, so the file stays a few hundred kilobytes however long the
device runs, and it survives restarts (a counter that went down was reset by a restart: its new
value is what it grew by).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.inventory.store import open_db

SERIES_FILE = "status-series.sqlite"
FINE, FINE_KEEP = 60, 2 * 86400
COARSE, COARSE_KEEP = 900, 35 * 86400
TALKER_BUCKET, TALKERS_KEEP, TALKERS_PER_HOUR = 3600, 8 * 86400, 50
# Chart series: name -> how it is computed from the daemon's stats.


def counters_of(stats: Mapping[str, Any]) -> dict[str, float]:
    def num(key: str) -> float:
        v = stats.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0

    return {
        "packets": num("packets"),
        "judged": num("verdicts_pass") + num("verdicts_block"),
    }


class SeriesStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / SERIES_FILE
        self._lock = threading.Lock()
        self.db = open_db(self.path)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS fine (ts INTEGER, name TEXT, value REAL,
                PRIMARY KEY (ts, name)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS coarse (ts INTEGER, name TEXT, value REAL,
                PRIMARY KEY (ts, name)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS talkers (ts INTEGER, ip TEXT, conns INTEGER,
                PRIMARY KEY (ts, ip)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS last (name TEXT PRIMARY KEY, value REAL);
            """
        )
        self._pruned = 0.0
        self._trimmed = 0

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def record(
        self,
        counters: Mapping[str, float],
        now: float | None = None,
        talkers: Mapping[str, int] | None = None,
    ) -> None:
        """Add what each cumulative counter grew by since the previous call."""
        now = time.time() if now is None else now
        with self._lock:
            last = dict(self.db.execute("SELECT name, value FROM last").fetchall())
            self.db.execute("BEGIN")
            try:
                for name, value in counters.items():
                    prev = last.get(name)
                    # First sample, or a counter that went down (the daemon restarted): the
                    # daemon's counters count from its start, so the value is what it grew by.
                    grew = value if prev is None or value < prev else value - prev
                    self.db.execute("INSERT OR REPLACE INTO last VALUES (?, ?)", (name, value))
                    if grew:
                        self._add("fine", int(now // FINE * FINE), name, grew)
                        self._add("coarse", int(now // COARSE * COARSE), name, grew)
                hour = int(now // TALKER_BUCKET * TALKER_BUCKET)
                for ip, n in (talkers or {}).items():
                    self.db.execute(
                        "INSERT INTO talkers VALUES (?, ?, ?) ON CONFLICT(ts, ip) DO UPDATE "
                        "SET conns = conns + excluded.conns",
                        (hour, ip[:64], int(n)),
                    )
                if now - self._pruned >= 300 or now < self._pruned:
                    self._prune(now)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def add(self, name: str, amount: float, now: float | None = None) -> None:
        """Count events directly (e.g. alerts by severity) rather than from a counter."""
        now = time.time() if now is None else now
        with self._lock:
            self._add("fine", int(now // FINE * FINE), name, amount)
            self._add("coarse", int(now // COARSE * COARSE), name, amount)

    def _add(self, table: str, ts: int, name: str, amount: float) -> None:
        self.db.execute(
            f"INSERT INTO {table} VALUES (?, ?, ?) ON CONFLICT(ts, name) DO UPDATE "
            "SET value = value + excluded.value",
            (ts, name, amount),
        )

    def _prune(self, now: float) -> None:
        self._pruned = now
        self.db.execute("DELETE FROM fine WHERE ts < ?", (now - FINE_KEEP,))
        self.db.execute("DELETE FROM coarse WHERE ts < ?", (now - COARSE_KEEP,))
        self.db.execute("DELETE FROM talkers WHERE ts < ?", (now - TALKERS_KEEP,))
        # Per finished hour, only the busiest devices are kept.
        hour = int(now // TALKER_BUCKET * TALKER_BUCKET) - TALKER_BUCKET
        if hour != self._trimmed:
            self._trimmed = hour
            self.db.execute(
                "DELETE FROM talkers WHERE ts = ? AND ip NOT IN (SELECT ip FROM talkers "
                "WHERE ts = ? ORDER BY conns DESC LIMIT ?)",
                (hour, hour, TALKERS_PER_HOUR),
            )

    def rates(
        self, name: str, span: float, step: float, now: float | None = None
    ) -> list[tuple[float, float]]:
        """(bucket start, per-second rate) over the last `span` seconds in `step`-second
        buckets (missing buckets are 0: nothing was counted)."""
        now = time.time() if now is None else now
        table = "fine" if span <= FINE_KEEP and step < COARSE else "coarse"
        start = (now - span) // step * step
        with self._lock:
            rows = self.db.execute(
                f"SELECT CAST(ts / ? AS INTEGER) * ? AS b, sum(value) FROM {table} "
                "WHERE name = ? AND ts >= ? GROUP BY b",
                (step, step, name, start),
            ).fetchall()
        got = {int(b): float(v) for b, v in rows}
        out = []
        t = start
        while t <= now:
            out.append((t, got.get(int(t), 0.0) / step))
            t += step
        return out

    def totals(self, names: tuple[str, ...], span: float, step: float, now: float | None = None):
        """{name: [(bucket start, total)]} like `rates` but sums, not rates."""
        return {n: [(t, r * step) for t, r in self.rates(n, span, step, now)] for n in names}

    def top_talkers(
        self, span: float, n: int = 8, now: float | None = None
    ) -> list[tuple[str, int]]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self.db.execute(
                "SELECT ip, sum(conns) AS c FROM talkers WHERE ts >= ? GROUP BY ip "
                "ORDER BY c DESC LIMIT ?",
                (now - span, n),
            ).fetchall()
        return [(str(ip), int(c)) for ip, c in rows]

    def rows(self) -> dict[str, int]:
        with self._lock:
            return {
                t: int(self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("fine", "coarse", "talkers")
            }
