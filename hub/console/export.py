"""SIEM export: one file per UTC day, ``eve-YYYY-MM-DD.json``, one EVE alert per line, as
Filebeat's Suricata module and Vector's file source with JSON decoding read Suricata's eve.json.

Each line is the device's record as stored, with ``watchpost.device`` and ``watchpost.site`` set
from the collector's identity (the topic and registry), not from the record's body.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from hub.console.queries import alerts_in
from hub.store import Store
from protocol.files import atomic_write

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ExportError(Exception):
    pass


def parse_day(text: str) -> float:
    if not _DAY.match(text or ""):
        raise ExportError(f"day {text!r}: expected YYYY-MM-DD")
    try:
        d = dt.date.fromisoformat(text)
    except ValueError as e:
        raise ExportError(f"day {text!r}: {e}") from None
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()


def export_day(store: Store, day: str, out: Path) -> tuple[Path, int]:
    """Write OUT/eve-DAY.json (replacing it whole); the path and the number of alerts."""
    start = parse_day(day)
    lines = []
    for a in alerts_in(store, start, start + 86400):
        eve = dict(a["eve"])
        wp = dict(eve.get("watchpost") or {})
        wp["device"], wp["site"] = a["device"], a["site"]
        eve["watchpost"] = wp
        eve.setdefault("event_type", "alert")
        lines.append(json.dumps(eve, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    path = out / f"eve-{day}.json"
    atomic_write(path, "".join(line + "\n" for line in lines).encode())
    return path, len(lines)
