"""Read queries the console, the reports, correlation and the SIEM export need beyond the store's
own (hub/store): alert search with paging and a total, alerts of a time range, one device.

They use the store's connection API only (``Store._query`` with its placeholder and time
conversion), so they run unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hub.store import Store

MAX_PAGE = 500


@dataclass(frozen=True)
class AlertFilter:
    """What the analyst searches by; None = any. ``max_severity`` 1 = high only."""

    site: str | None = None
    device: str | None = None
    signature_id: int | None = None
    src_ip: str | None = None
    category: str | None = None
    max_severity: int | None = None
    since: float | None = None
    until: float | None = None


def _where(store: Store, f: AlertFilter) -> tuple[str, list[Any]]:
    p = store.p
    parts: list[str] = []
    args: list[Any] = []
    for col, op, v in (
        ("site", "=", f.site),
        ("device", "=", f.device),
        ("signature_id", "=", f.signature_id),
        ("src_ip", "=", f.src_ip),
        ("category", "=", f.category),
        ("severity", "<=", f.max_severity),
    ):
        if v is not None:
            parts.append(f"{col} {op} {p}")
            args.append(v)
    if f.since is not None:
        parts.append(f"ts >= {p}")
        args.append(store._ts(f.since))
    if f.until is not None:
        parts.append(f"ts < {p}")
        args.append(store._ts(f.until))
    return (" WHERE " + " AND ".join(parts)) if parts else "", args


def _rows(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        r["ts"] = store._from_ts(r["ts"])
        if isinstance(r.get("eve"), str):
            r["eve"] = json.loads(r["eve"])
    return rows


def search_alerts(
    store: Store, f: AlertFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """One page of alerts, newest first (ties by id, so pages never overlap), and the total."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    where, args = _where(store, f)
    total = int(store._query(f"SELECT count(*) AS n FROM alerts{where}", args)[0]["n"])
    rows = store._query(
        f"SELECT * FROM alerts{where} ORDER BY ts DESC, id LIMIT {int(limit)} OFFSET {int(offset)}",
        args,
    )
    return _rows(store, rows), total


def alerts_in(
    store: Store,
    since: float,
    until: float,
    *,
    site: str | None = None,
    categories: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Every alert with since <= ts < until (optionally one office, some categories), oldest
    first: for reports (one office, one week), correlation (a window) and the daily export."""
    where, args = _where(store, AlertFilter(site=site, since=since, until=until))
    if categories:
        clause, cargs = store._in(list(categories))
        where += f" AND category IN {clause}"
        args += cargs
    return _rows(store, store._query(f"SELECT * FROM alerts{where} ORDER BY ts, id", args))


def device(store: Store, name: str) -> dict[str, Any] | None:
    for d in store.devices():
        if d["device"] == name:
            return d
    return None


def sites(store: Store) -> list[str]:
    return [r["site"] for r in store._query("SELECT DISTINCT site FROM devices ORDER BY site")]


def signatures(store: Store) -> list[dict[str, Any]]:
    """Signature ids seen in the store with their text (for the search form)."""
    return store._query(
        "SELECT signature_id, min(signature) AS signature, count(*) AS n FROM alerts "
        "WHERE signature_id IS NOT NULL GROUP BY signature_id ORDER BY signature_id"
    )
