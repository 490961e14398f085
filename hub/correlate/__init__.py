"""Cross-office correlation: a remote address or domain seen by at least K offices within a
window (scans, brute force, intel hits, exposure probes) becomes a regional indicator.

Each indicator keeps its evidence (offices, devices, kinds, alert counts, first and last seen).
It is ``suggested`` until an operator approves or rejects it, or ``approved`` by policy when at
least ``auto_approve`` offices saw it; an approved indicator ``expired`` ``ttl`` seconds after
approval (seen again later, it is suggested afresh). The approved set is an intel list
(``bundle_text``) that ``publish`` sends to every device as a signed bundle over the operator's
push-intel path; devices then cite the regional source in their alerts.

The ``indicators`` table is the store's migration 3 (hub/store/schema.py), on both backends.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any

from hub.console.queries import alerts_in
from hub.store import Store

DETECTORS = ("portscan", "bruteforce", "intel", "exposure")
STATES = ("suggested", "approved", "rejected", "expired")
SOURCE = "watchpost-regional"


class CorrelateError(Exception):
    """Bad policy or an unknown indicator; the message says which."""


@dataclass(frozen=True)
class Policy:
    min_offices: int = 3  # K
    window: float = 86400.0  # seconds
    auto_approve: int | None = None  # offices at or above which approval is automatic
    ttl: float = 7 * 86400.0  # seconds an approved indicator stays in the bundle

    def __post_init__(self) -> None:
        if self.min_offices < 2:
            raise CorrelateError(f"min_offices must be >= 2, got {self.min_offices}")
        if self.window <= 0 or self.ttl <= 0:
            raise CorrelateError("window and ttl must be > 0 seconds")
        if self.auto_approve is not None and self.auto_approve < self.min_offices:
            raise CorrelateError(
                f"auto_approve ({self.auto_approve}) must be >= min_offices ({self.min_offices})"
            )


def _remote(a: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, value) of the outside party of one alert: a domain for intel hits that name one,
    else the remote address (source of inbound, destination of outbound traffic)."""
    eve = a["eve"]
    wp = eve.get("watchpost") or {}
    if wp.get("detector") == "intel":
        for obj, key in (("dns", "rrname"), ("tls", "sni"), ("http", "hostname")):
            name = (eve.get(obj) or {}).get(key)
            if isinstance(name, str) and name:
                return "domain", name.lower().rstrip(".")
    addr = a["dest_ip"] if wp.get("direction") == "outbound" else a["src_ip"]
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None  # a pseudonymised office token, never a remote party
    if (ip.is_private and not _lab(ip)) or ip.is_loopback or ip.is_multicast:
        return None
    return "ip", str(ip)


_LAB = [ipaddress.ip_network(n) for n in ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
                                          "203.0.113.0/24")]  # fmt: skip


def _lab(ip: Any) -> bool:
    """Documentation/benchmark ranges count as remote (the lab's internet)."""
    return any(ip in n for n in _LAB)


def candidates(store: Store, policy: Policy, now: float) -> list[dict[str, Any]]:
    """Every remote party seen by at least K offices in (now - window, now], with evidence."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for a in alerts_in(store, now - policy.window, now + 1e-6):
        if (a["eve"].get("watchpost") or {}).get("detector") not in DETECTORS:
            continue
        who = _remote(a)
        if who is None:
            continue
        e = seen.setdefault(who, {"sites": {}, "first": a["ts"], "last": a["ts"]})
        site = e["sites"].setdefault(a["site"], {"alerts": 0, "devices": set(), "kinds": set()})
        site["alerts"] += int(a["count"] or 1)
        site["devices"].add(a["device"])
        site["kinds"].add(a["category"] or "?")
        e["first"], e["last"] = min(e["first"], a["ts"]), max(e["last"], a["ts"])
    out = []
    for (kind, value), e in sorted(seen.items()):
        if len(e["sites"]) < policy.min_offices:
            continue
        evidence = {
            s: {"alerts": v["alerts"], "devices": sorted(v["devices"]), "kinds": sorted(v["kinds"])}
            for s, v in sorted(e["sites"].items())
        }
        out.append({"id": f"{kind}:{value}", "kind": kind, "value": value,
                    "offices": len(evidence), "evidence": evidence,
                    "first_seen": e["first"], "last_seen": e["last"]})  # fmt: skip
    return out


def run(store: Store, policy: Policy, now: float | None = None) -> dict[str, int]:
    """One correlation pass: expire, then add or refresh indicators. Counts by what happened."""
    now = time.time() if now is None else now
    counts = {"expired": expire(store, now), "new": 0, "auto_approved": 0, "updated": 0}
    found = candidates(store, policy, now)
    p = store.p
    with store.lock, store._tx() as cur:
        for c in found:
            cur.execute(f"SELECT state, decided_at FROM indicators WHERE id = {p}", (c["id"],))
            row = cur.fetchone()
            auto = policy.auto_approve is not None and c["offices"] >= policy.auto_approve
            fresh = row is None or (row[0] == "expired" and c["last_seen"] > (row[1] or 0))
            if fresh:
                state = "approved" if auto else "suggested"
                cur.execute(f"DELETE FROM indicators WHERE id = {p}", (c["id"],))
                cur.execute(
                    f"INSERT INTO indicators (id, kind, value, state, offices, evidence, "
                    f"first_seen, last_seen, created_at, decided_by, decided_at, expires_at) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
                    (c["id"], c["kind"], c["value"], state, c["offices"],
                     json.dumps(c["evidence"], sort_keys=True), c["first_seen"], c["last_seen"],
                     now, "policy" if auto else None, now if auto else None,
                     now + policy.ttl if auto else None),
                )  # fmt: skip
                counts["auto_approved" if auto else "new"] += 1
            elif row[0] != "expired":
                cur.execute(
                    f"UPDATE indicators SET offices = {p}, evidence = {p}, last_seen = {p} "
                    f"WHERE id = {p}",
                    (c["offices"], json.dumps(c["evidence"], sort_keys=True), c["last_seen"],
                     c["id"]),
                )  # fmt: skip
                counts["updated"] += 1
    return counts


def expire(store: Store, now: float) -> int:
    with store.lock, store._tx() as cur:
        cur.execute(
            f"UPDATE indicators SET state = 'expired' WHERE state = 'approved' "
            f"AND expires_at <= {store.p}",
            (now,),
        )
        return int(cur.rowcount or 0)


def indicators(store: Store, state: str | None = None) -> list[dict[str, Any]]:
    if state is not None and state not in STATES:
        raise CorrelateError(f"state {state!r}: expected one of {', '.join(STATES)}")
    sql, args = "SELECT * FROM indicators", []
    if state:
        sql, args = sql + f" WHERE state = {store.p}", [state]
    rows = store._query(sql + " ORDER BY offices DESC, id", args)
    for r in rows:
        r["evidence"] = json.loads(r["evidence"])
    return rows


def decide(
    store: Store, ident: str, approve: bool, by: str, ttl: float, now: float | None = None
) -> dict[str, Any]:
    """Approve or reject a suggested (or re-decide an approved/rejected) indicator."""
    now = time.time() if now is None else now
    p = store.p
    with store.lock, store._tx() as cur:
        cur.execute(f"SELECT state FROM indicators WHERE id = {p}", (ident,))
        row = cur.fetchone()
        if row is None:
            raise CorrelateError(f"no indicator {ident!r}")
        if row[0] == "expired":
            raise CorrelateError(f"indicator {ident!r} has expired")
        state = "approved" if approve else "rejected"
        cur.execute(
            f"UPDATE indicators SET state = {p}, decided_by = {p}, decided_at = {p}, "
            f"expires_at = {p} WHERE id = {p}",
            (state, by, now, now + ttl if approve else None, ident),
        )
    return next(i for i in indicators(store) if i["id"] == ident)


def bundle_text(store: Store, now: float | None = None) -> tuple[bytes, str]:
    """The approved, unexpired set as an intel list and its version (a content hash)."""
    now = time.time() if now is None else now
    values = sorted(
        i["value"]
        for i in indicators(store, "approved")
        if i["expires_at"] is None or i["expires_at"] > now
    )
    body = "".join(f"{v}\n" for v in values)
    version = "regional-" + hashlib.sha256(body.encode()).hexdigest()[:12]
    header = (
        f"# watchpost: source={SOURCE} category=regional-indicator severity=2\n"
        f"# {len(values)} indicators, version {version}\n"
    )
    return (header + body).encode(), version
