"""The page's own index of alerts: the EVE file read incrementally into SQLite in the state dir.

Why an index: the owner filters (severity, detector, device, acknowledged, time range), pages
through, acknowledges single alerts or many, and opens an alert's own page with its timeline; a
scan of the EVE file per request cannot do that. The index only follows the EVE file (the daemon's
record stays the truth) and is bounded: at most `MAX_EVENTS` occurrences and `MAX_GROUPS` alerts,
nothing older than `KEEP_DAYS`.

An *alert* on the page is a group of EVE records with the same signature, office device and
remote side; its timeline is first seen, last seen and the number of occurrences (each EVE record
may already fold repeats: ``watchpost.count``). Acknowledging marks the group up to now; a new
occurrence after that makes it unacknowledged again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.alerts import tally
from appliance.alerts.model import service_port
from appliance.inventory.store import open_db
from appliance.status.alerts import SEVERITY, _nets, describe

log = logging.getLogger(__name__)

INDEX_FILE = "status-alerts.sqlite"
MAX_EVENTS = 50_000
MAX_GROUPS = 5_000
KEEP_DAYS = 35
MAX_READ = 4 << 20  # bytes of EVE read per ingest (the first one starts this far from the end)


SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, sid INTEGER, signature TEXT,
    category TEXT, severity INTEGER, detector TEXT, office TEXT, remote TEXT,
    remote_port INTEGER, proto TEXT, direction TEXT, name TEXT, action TEXT,
    first REAL, last REAL, count INTEGER, blocked INTEGER, acked REAL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS groups_last ON groups(last);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, grp INTEGER, ts REAL, count INTEGER, src TEXT, port TEXT,
    action TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_grp ON events(grp);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

SEVERITY_NUM = {v: k for k, v in SEVERITY.items()}
PERIODS = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0, "all": None}


@dataclass(frozen=True)
class Filters:
    severity: str = ""  # high, medium, low or "" for all
    detector: str = ""
    device: str = ""  # an office address
    acked: str = ""  # "yes", "no" or ""
    period: str = "7d"


class AlertIndex:
    def __init__(self, state_dir: str | os.PathLike[str], home_nets: Iterable[str] = ()) -> None:
        self.path = Path(state_dir) / INDEX_FILE
        self.nets = _nets(home_nets)
        self._lock = threading.Lock()
        self.db = open_db(self.path)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- following the EVE file -----------------------------------------------------------------

    def _meta(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else ""

    def ingest(self, eve_path: str | os.PathLike[str], now: float | None = None) -> int:
        """Read what the EVE file gained since last time; returns the alerts added."""
        now = time.time() if now is None else now
        with self._lock:
            try:
                st = os.stat(eve_path)
            except FileNotFoundError:
                return 0
            ident = f"{st.st_dev}:{st.st_ino}"
            offset = int(self._meta("offset") or 0) if self._meta("file") == ident else -1
            if offset < 0 or offset > st.st_size:  # a new or rotated file
                offset = max(0, st.st_size - MAX_READ)
            if offset == st.st_size:
                return 0
            with open(eve_path, "rb") as f:
                f.seek(offset)
                data = f.read(MAX_READ)
            cut = data.rfind(b"\n")
            if cut < 0:
                return 0
            lines = data[: cut + 1].split(b"\n")
            if offset > 0 and self._meta("file") != ident:
                lines = lines[1:]  # started mid-line
            added = 0
            self.db.execute("BEGIN")
            try:
                for line in lines:
                    if line.strip():
                        added += self._add_line(line)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('file', ?), ('offset', ?)",
                    (ident, str(offset + cut + 1)),
                )
                self._prune(now)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return added

    def _add_line(self, line: bytes) -> int:
        try:
            eve = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return 0
        if not isinstance(eve, dict) or eve.get("event_type") != "alert":
            return 0
        d = describe(eve, self.nets)
        if d["time"] is None:
            return 0
        raw_alert, raw_wp = eve.get("alert"), eve.get("watchpost")
        alert: dict[str, Any] = raw_alert if isinstance(raw_alert, dict) else {}
        wp: dict[str, Any] = raw_wp if isinstance(raw_wp, dict) else {}
        sid = alert.get("signature_id")
        sid = sid if isinstance(sid, int) and not isinstance(sid, bool) else 0
        severity = SEVERITY_NUM.get(d["severity"], 3)
        detector = str(wp.get("detector") or "")[:40]
        event_id = d["id"] or hashlib.sha256(line).hexdigest()[:32]
        key = f"{sid}|{d['office_host']}|{d['remote']}"
        ts, n = float(d["time"]), int(d["count"])
        blocked = n if d["action"] == "blocked" else 0
        port = service_port(eve)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO events(id, grp, ts, count, src, port, action) "
            "VALUES (?, 0, ?, ?, ?, ?, ?)",
            (
                event_id,
                ts,
                n,
                str(eve.get("src_ip") or "?")[:64],
                f"{eve.get('proto', '?')}/{port}" if port is not None else "",
                d["action"],
            ),
        )
        if cur.rowcount == 0:
            return 0  # seen already
        self.db.execute(
            "INSERT INTO groups(key, sid, signature, category, severity, detector, office, "
            "remote, remote_port, proto, direction, name, action, first, last, count, blocked) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
            "first=min(first, excluded.first), last=max(last, excluded.last), "
            "count=count+excluded.count, blocked=blocked+excluded.blocked, "
            "action=excluded.action, remote_port=excluded.remote_port, "
            "name=CASE WHEN excluded.name != '' THEN excluded.name ELSE name END",
            (
                key, sid, d["signature"], d["category"], severity, detector, d["office_host"],
                d["remote"], port, d["protocol"],
                d["direction"], d["name"],
                d["action"], ts, ts, n, blocked,
            ),
        )  # fmt: skip
        grp = self.db.execute("SELECT id FROM groups WHERE key=?", (key,)).fetchone()[0]
        self.db.execute("UPDATE events SET grp=? WHERE id=?", (grp, event_id))
        return 1

    def _prune(self, now: float) -> None:
        old = now - KEEP_DAYS * 86400
        self.db.execute("DELETE FROM events WHERE ts < ?", (old,))
        self.db.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts DESC "
            "LIMIT -1 OFFSET ?)",
            (MAX_EVENTS,),
        )
        self.db.execute("DELETE FROM groups WHERE last < ?", (old,))
        self.db.execute(
            "DELETE FROM groups WHERE id IN (SELECT id FROM groups ORDER BY last DESC "
            "LIMIT -1 OFFSET ?)",
            (MAX_GROUPS,),
        )

    # -- what the page asks ---------------------------------------------------------------------

    def _where(self, f: Filters, now: float) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if f.severity:
            clauses.append("severity = ?")
            args.append(SEVERITY_NUM[f.severity])
        if f.detector:
            clauses.append("detector = ?")
            args.append(f.detector)
        if f.device:
            clauses.append("office = ?")
            args.append(f.device)
        if f.acked == "yes":
            clauses.append("acked >= last")
        elif f.acked == "no":
            clauses.append("acked < last")
        span = PERIODS[f.period]
        if span is not None:
            clauses.append("last >= ?")
            args.append(now - span)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def search(
        self, f: Filters, page: int = 1, per_page: int = 25, now: float | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """(alerts on this page, newest first; how many match in all)."""
        now = time.time() if now is None else now
        where, args = self._where(f, now)
        with self._lock:
            total = self.db.execute(f"SELECT count(*) FROM groups{where}", args).fetchone()[0]
            rows = self.db.execute(
                f"SELECT * FROM groups{where} ORDER BY last DESC, id DESC LIMIT ? OFFSET ?",
                [*args, per_page, (page - 1) * per_page],
            ).fetchall()
        return [_group(r) for r in rows], int(total)

    def get(self, group_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT * FROM groups WHERE id=?", (group_id,)).fetchone()
            if row is None:
                return None
            events = self.db.execute(
                "SELECT ts, count, action FROM events WHERE grp=? ORDER BY ts DESC LIMIT 20",
                (group_id,),
            ).fetchall()
        out = _group(row)
        out["events"] = [dict(e) for e in events]
        return out

    def ack(self, ids: Iterable[int], now: float | None = None) -> int:
        now = time.time() if now is None else now
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            marks = ",".join("?" * len(ids))
            cur = self.db.execute(
                f"UPDATE groups SET acked=? WHERE acked < last AND id IN ({marks})",
                [now, *ids],
            )
            return int(cur.rowcount)

    def ack_matching(self, f: Filters, now: float | None = None) -> int:
        now = time.time() if now is None else now
        where, args = self._where(f, now)
        cond = (where + " AND " if where else " WHERE ") + "acked < last"
        with self._lock:
            cur = self.db.execute(f"UPDATE groups SET acked=?{cond}", [now, *args])
            return int(cur.rowcount)

    def unacked(self) -> int:
        with self._lock:
            return int(
                self.db.execute("SELECT count(*) FROM groups WHERE acked < last").fetchone()[0]
            )

    def detectors(self) -> list[str]:
        with self._lock:
            rows = self.db.execute("SELECT DISTINCT detector FROM groups ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows if r[0]]

    def devices(self) -> dict[str, dict[str, Any]]:
        """Office address -> alert count and last alert time."""
        with self._lock:
            rows = self.db.execute(
                "SELECT office, sum(count) AS n, max(last) AS last, "
                "sum(CASE WHEN acked < last THEN 1 ELSE 0 END) AS open "
                "FROM groups GROUP BY office"
            ).fetchall()
        return {str(r["office"]): dict(r) for r in rows if r["office"]}

    def severity_buckets(self, since: float, bucket: float) -> dict[int, Counter[int]]:
        """Alert occurrences per time bucket (start time) and severity."""
        with self._lock:
            rows = self.db.execute(
                "SELECT CAST(e.ts / ? AS INTEGER) * ? AS b, g.severity AS s, sum(e.count) AS n "
                "FROM events e JOIN groups g ON g.id = e.grp WHERE e.ts >= ? GROUP BY b, s",
                (bucket, bucket, since),
            ).fetchall()
        out: dict[int, Counter[int]] = {}
        for r in rows:
            out.setdefault(int(r["b"]), Counter())[int(r["s"])] += int(r["n"])
        return out

    def summary(self, since: float, until: float) -> dict[str, Any]:
        """The figures of the hub's daily summary (appliance.hublink.report), over any span."""
        with self._lock:
            rows = self.db.execute(
                "SELECT e.count AS n, e.src, e.port, e.action, g.detector, g.severity, g.sid, "
                "g.signature, g.office FROM events e JOIN groups g ON g.id = e.grp "
                "WHERE e.ts >= ? AND e.ts < ? ORDER BY e.ts, e.rowid",
                (since, until),
            ).fetchall()
        t = tally.new_tallies()
        devices: Counter[str] = Counter()
        alerts = 0
        for r in rows:
            n = int(r["n"])
            alerts += n
            tally.count(
                t,
                n,
                action=str(r["action"]),
                detector=str(r["detector"] or "?"),
                severity=str(r["severity"]),
                signature=f"{r['sid']} {r['signature']}",
                source=str(r["src"]),
                port=str(r["port"] or ""),
            )
            if r["office"]:
                devices[str(r["office"])] += n
        return {
            "from": since,
            "to": until,
            "alerts": alerts,
            **tally.figures(t),
            "devices": [{"ip": k, "alerts": v} for k, v in devices.most_common(tally.TOP)],
        }


def _group(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["severity_text"] = SEVERITY.get(int(d["severity"] or 3), "low")
    d["acknowledged"] = float(d["acked"] or 0) >= float(d["last"] or 0)
    d["allowed"] = int(d["count"] or 0) - int(d["blocked"] or 0)
    return d
