"""Alert tallies: the one way the hub's daily summary and the page's report count alerts.

Both say who attacked most, which ports were targeted, blocked versus allowed, and what each
detector found; an office owner comparing the page with the centre's report must see the same
figures, so the counting and the figures' shape live here once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

TOP = 10  # entries in each "top" list
KINDS = ("action", "detector", "severity", "source", "port", "signature")

Tallies = dict[str, Counter[str]]


def new_tallies() -> Tallies:
    return {k: Counter() for k in KINDS}


def count(
    t: Tallies,
    n: int,
    *,
    action: str,
    detector: str,
    severity: str,
    signature: str,
    source: str,
    port: str,
) -> None:
    """Count `n` occurrences of one alert (`port` as "PROTO/port", or "" when it has none)."""
    t["action"][action] += n
    t["detector"][detector] += n
    t["severity"][severity] += n
    t["signature"][signature] += n
    t["source"][source] += n
    if port:
        t["port"][port] += n


def figures(t: Tallies, top: int = TOP) -> dict[str, Any]:
    """The summary's figures from its tallies."""
    return {
        "blocked": t["action"].get("blocked", 0),
        "allowed": t["action"].get("allowed", 0),
        "by_detector": dict(t["detector"].most_common()),
        "by_severity": dict(sorted(t["severity"].items())),
        "top_sources": [{"ip": k, "alerts": v} for k, v in t["source"].most_common(top)],
        "top_ports": [{"port": k, "alerts": v} for k, v in t["port"].most_common(top)],
        "top_signatures": [
            {"signature": k, "alerts": v} for k, v in t["signature"].most_common(top)
        ],
    }
