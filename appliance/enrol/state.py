"""Where enrolment stands, for the LEDs and the status page (read once a second by the daemon).

``<state_dir>/enrol-status.json`` holds ``{"state", "reason", "at"}``: ``enrolling``, ``failed``
or ``enrolled``; ``<state_dir>/enrolled`` is the stamp the first-boot unit's
``ConditionPathExists=!`` looks at. A device that was never asked to enrol (no status file: a
hand-configured or lab device) has no enrolment problem.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from protocol.files import atomic_write

STATUS_FILE = "enrol-status.json"
STAMP = "enrolled"


def write_status(state_dir: str | Path, state: str, reason: str = "") -> None:
    body = {"state": state, "reason": reason, "at": round(time.time(), 3)}
    atomic_write(Path(state_dir) / STATUS_FILE, (json.dumps(body) + "\n").encode(), mode=0o644)


def read_status(state_dir: str | Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def enrolled(state_dir: str | Path) -> bool:
    return (Path(state_dir) / STAMP).exists()


def problem(state_dir: str | Path) -> str | None:
    """ "not enrolled with the hub: <why>" while enrolment has not succeeded, else None."""
    if enrolled(state_dir):
        return None
    status = read_status(state_dir)
    if status is None:
        return None
    state = status.get("state")
    if state == "enrolled":
        return None
    if state == "enrolling":
        return "not enrolled with the hub yet: enrolling"
    return f"not enrolled with the hub: {status.get('reason') or 'unknown reason'}"
