"""The device list: SQLite in the state directory, and vendors from Debian's ieee-data OUI list.

Keyed by office address (what alerts carry). Names come from several sources; the shown one is
the owner's own name if set, else the best learnt one (DHCP over mDNS over NetBIOS over LLMNR
over PTR). Bounded: at most `MAX_DEVICES`, the longest unseen go first. Names stay on the device:
nothing here is ever sent to the hub.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE_FILE = "inventory.sqlite"
OUI_FILE = "/usr/share/ieee-data/oui.txt"
MAX_DEVICES = 2048
MAX_CUSTOM = 40
RANK = {"owner": 0, "dhcp": 1, "mdns": 2, "netbios": 3, "llmnr": 4, "ptr": 5, "": 9}


def open_db(path: Path) -> sqlite3.Connection:
    """A SQLite database in the state directory, or in memory (for this run only, with a
    warning) when the directory cannot hold it: the page works either way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        log.warning("watchpost: cannot keep %s (%s): in memory for this run", path, e)
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    return db


@functools.cache
def _oui_table(path: str = OUI_FILE) -> dict[str, str]:
    table: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "(base 16)" in line:
                    prefix, _, vendor = line.partition("(base 16)")
                    table[prefix.strip().upper()] = vendor.strip()
    except OSError as e:
        log.warning("inventory: no vendor list (%s: %s); apt install ieee-data", path, e)
    return table


def vendor(mac: str, path: str = OUI_FILE) -> str:
    if not mac:
        return ""
    hexes = mac.replace(":", "").replace("-", "").upper()
    if len(hexes) != 12:
        return ""
    if int(hexes[1], 16) & 0x2:
        return "private address (randomised by the device)"
    return _oui_table(path).get(hexes[:6], "")


class DeviceStore:
    def __init__(self, state_dir: str | os.PathLike[str], oui_path: str = OUI_FILE) -> None:
        self.path = Path(state_dir) / STORE_FILE
        self.oui_path = oui_path
        self._lock = threading.Lock()
        self.db = open_db(self.path)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS devices (ip TEXT PRIMARY KEY, mac TEXT DEFAULT '', "
            "vendor TEXT DEFAULT '', name TEXT DEFAULT '', source TEXT DEFAULT '', "
            "custom TEXT DEFAULT '', first REAL, last REAL)"
        )
        self._names: dict[str, str] = {}
        self._load_names()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _load_names(self) -> None:
        rows = self.db.execute("SELECT ip, name, custom FROM devices").fetchall()
        self._names = {r["ip"]: r["custom"] or r["name"] for r in rows if r["custom"] or r["name"]}

    def learn(self, ip: str, mac: str = "", name: str = "", source: str = "",
              now: float | None = None) -> None:  # fmt: skip
        now = time.time() if now is None else now
        with self._lock:
            row = self.db.execute("SELECT * FROM devices WHERE ip=?", (ip,)).fetchone()
            if row is None:
                self.db.execute(
                    "INSERT INTO devices(ip, mac, vendor, name, source, first, last) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (ip, mac, vendor(mac, self.oui_path), name, source if name else "", now, now),
                )
                self._bound()
            else:
                sets: list[str] = ["last=?"]
                args: list[object] = [now]
                if mac and mac != row["mac"]:
                    sets += ["mac=?", "vendor=?"]
                    args += [mac, vendor(mac, self.oui_path)]
                if name and RANK.get(source, 8) <= RANK.get(row["source"], 9):
                    sets += ["name=?", "source=?"]
                    args += [name, source]
                self.db.execute(f"UPDATE devices SET {', '.join(sets)} WHERE ip=?", [*args, ip])
            if name:
                self._names.setdefault(ip, name)
                row = self.db.execute(
                    "SELECT name, custom FROM devices WHERE ip=?", (ip,)
                ).fetchone()
                self._names[ip] = row["custom"] or row["name"]

    def _bound(self) -> None:
        self.db.execute(
            "DELETE FROM devices WHERE ip IN (SELECT ip FROM devices ORDER BY last DESC "
            "LIMIT -1 OFFSET ?)",
            (MAX_DEVICES,),
        )

    def rename(self, ip: str, name: str) -> bool:
        """The owner's name for a device ("" goes back to the learnt one); False if unknown."""
        name = "".join(c for c in name if c.isprintable()).strip()[:MAX_CUSTOM]
        with self._lock:
            cur = self.db.execute("UPDATE devices SET custom=? WHERE ip=?", (name, ip))
            if cur.rowcount == 0:
                return False
            row = self.db.execute("SELECT name, custom FROM devices WHERE ip=?", (ip,)).fetchone()
            shown = row["custom"] or row["name"]
            if shown:
                self._names[ip] = shown
            else:
                self._names.pop(ip, None)
            return True

    def name(self, ip: str) -> str:
        return self._names.get(ip, "")

    def get(self, ip: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT * FROM devices WHERE ip=?", (ip,)).fetchone()
        return _device(row) if row else None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM devices ORDER BY last DESC").fetchall()
        return [_device(r) for r in rows]


def _device(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["shown"] = d["custom"] or d["name"]
    d["learnt_from"] = {"owner": "you", "dhcp": "DHCP", "mdns": "mDNS", "netbios": "NetBIOS",
                        "llmnr": "LLMNR", "ptr": "DNS"}.get(d["source"], "")  # fmt: skip
    return d
