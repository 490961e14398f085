"""The service's stats turned into what people read: the page's plain sentences, the JSON API's
shape and the Prometheus text.

The office owner has no IT staff: the page leads with one sentence that says whether all is well
and, if not, what is wrong in words (the hub link's own reason, the LEDs' fault), then the LEDs
as they are lit, then the numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from appliance.status.alerts import ago

STALE_S = 10.0  # stats older than this: the daemon's loop has not answered

COUNTERS = (
    ("packets", "packets inspected"),
    ("flows", "connections being tracked"),
    ("alerts", "alerts raised since start"),
    ("fail_open_events", "packets passed uninspected (queue full or no listener)"),
    ("queue_depth", "packets waiting in the queue"),
    ("blocked_packets", "packets blocked"),
)

LED_MEANING = {
    "green": {
        "on": "inspecting",
        "blink": "starting or reloading",
        "off": "not inspecting",
    },
    "amber": {
        "on": "connected to the hub",
        "blink": "trying to reach the hub, or its certificate needs renewing (see below)",
        "off": "no hub configured",
        "wink": "not enrolled with the hub (see below)",
    },
    "red": {
        "on": "fault: see below",
        "blink": "alerts not yet acknowledged",
        "off": "all quiet",
    },
}
IDENTIFY_TEXT = "blinking fast so you can find this box (identify)"

MODE_TEXT = {
    "monitor": "monitor mode: watches and reports, never blocks",
    "block": "block mode: stops connections to known threats",
}


def overview(stats: Mapping[str, Any] | None, age: float | None, now: float) -> dict[str, Any]:
    """The JSON API's /api/status body; the page renders the same dict."""
    if stats is None:
        return {
            "state": "unknown",
            "health": "bad",
            "headline": "No data from the watch service yet.",
            "notes": [],
            "data_age_s": None,
        }
    hub = _hub(stats, now)
    leds = _section(stats, "leds")
    unacked = _int(stats.get("unacked_alerts"))
    fault = str(stats.get("fault") or "")
    enrol = str(stats.get("enrol_problem") or "")
    state = str(stats.get("state") or "unknown")
    mode = str(stats.get("mode") or "")
    notes: list[str] = []
    health = "ok"
    stale = age is not None and age > STALE_S
    if stale:
        health = "bad"
        headline = (
            f"The watch service has not reported for {int(age or 0)} s: it may be stuck "
            "(the office network keeps working; inspection may not)."
        )
    elif state != "running":
        health, headline = "bad", "Inspection is stopped."
    elif fault:
        health, headline = "bad", f"Attention: {fault}."
    elif unacked:
        health = "warn"
        headline = (
            f"{unacked} alerts need your attention."
            if unacked != 1
            else "1 alert needs your attention."
        )
    elif enrol:
        health, headline = "warn", f"Watching your network, but {enrol}."
    elif hub["enabled"] and not hub["connected"]:
        health, headline = "warn", "Watching your network, but not connected to the hub."
    elif hub["cert_problem"]:
        health, headline = "warn", f"Watching your network, but {hub['cert_problem']}."
    else:
        headline = "All quiet: watching your network."
    if not stale and (health != "ok" or unacked):
        if fault and not headline.startswith("Attention"):
            notes.append(f"Fault: {fault}.")
        if hub["enabled"] and not hub["connected"]:
            notes.append(hub["text"])
    return {
        "state": state,
        "health": health,
        "headline": headline,
        "notes": notes,
        "data_age_s": None if age is None else round(age, 1),
        "mode": mode,
        "mode_text": MODE_TEXT.get(mode, mode),
        "version": str(stats.get("version") or ""),
        "uptime_s": _num(stats.get("uptime")),
        "uptime_text": duration(_num(stats.get("uptime"))),
        "counters": {key: _int(stats.get(key)) for key, _label in COUNTERS},
        "intel": {
            "version": str(stats.get("intel_version") or ""),
            "indicators": _int(stats.get("intel_indicators")),
        },
        "hub": hub,
        "leds": {name: str(leds.get(name) or "off") for name in ("green", "amber", "red")},
        "leds_text": {
            name: led_text(name, str(leds.get(name) or "off")) for name in ("green", "amber", "red")
        },
        "leds_present": bool(leds),
        "unacked_alerts": unacked,
        "fault": fault,
        "update": update_text(_section(stats, "update"), now),
    }


UPDATE_STEPS = {
    "queued": "waiting to download",
    "downloading": "downloading",
    "verifying": "checking its signature",
    "installing": "installing",
    "switching": "switching over",
    "checking": "checking the new software works",
}


def update_text(job: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The latest firmware update job for the page: its fields and one plain sentence."""
    if not job:
        return {"state": "", "text": ""}
    state = str(job.get("state") or "")
    version = str(job.get("version") or "?")
    old = str(job.get("from") or "")
    reason = str(job.get("reason") or "")
    at = job.get("at")
    when = f" ({ago(now - float(at))})" if isinstance(at, int | float) else ""
    if state == "succeeded":
        text = f"Updated to {version}" + (f" from {old}" if old else "") + when + "."
    elif state == "rolled-back":
        text = f"Update to {version} undone{when}: {old or 'the previous version'} kept ({reason})."
    elif state == "failed":
        text = f"Update to {version} not applied{when}: {reason}."
    else:
        text = f"Updating to {version}: {UPDATE_STEPS.get(state, state)}."
    return {
        "state": state, "version": version, "from": old, "reason": reason,
        "id": str(job.get("id") or ""), "text": text,
    }  # fmt: skip


def led_text(name: str, shown: str) -> str:
    if shown == "fast":
        return IDENTIFY_TEXT
    return LED_MEANING.get(name, {}).get(shown, shown)


def _hub(stats: Mapping[str, Any], now: float) -> dict[str, Any]:
    raw = _section(stats, "hub")
    enabled = bool(raw.get("enabled"))
    connected = bool(raw.get("connected"))
    problem = str(raw.get("problem") or "")
    cert_problem = str(raw.get("cert_problem") or "") if enabled else ""
    state = str(raw.get("state") or ("disabled" if not enabled else "unknown"))
    since = raw.get("since")
    since_f = float(since) if isinstance(since, int | float) and since > 0 else None
    where = f"{raw.get('host')}:{raw.get('port')}" if raw.get("host") else "the hub"
    when = ""
    if since_f is not None:
        when = f" since {clock(since_f)} ({ago(now - since_f)})"
    if not enabled:
        text = "No hub configured: alerts stay on this device."
    elif connected:
        text = f"Connected to the hub ({where}){when}."
    else:
        text = f"Not connected to the hub ({where}){when}: {problem or state}."
    return {
        "enabled": enabled,
        "connected": connected,
        "state": state,
        "problem": problem,
        "cert_problem": cert_problem,
        "since": since_f,
        "host": str(raw.get("host") or ""),
        "port": _int(raw.get("port")),
        "text": text,
    }


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes = s // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def _section(stats: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A nested dict of the stats snapshot ({} when missing or not a dict)."""
    value = stats.get(name)
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _int(value: Any) -> int:
    return int(_num(value))


# -- Prometheus -----------------------------------------------------------------------------------

# Monotonic counters of Service.stats(): exported as <name>_total counters, the rest as gauges.
PROM_COUNTERS = frozenset(
    {
        "packets",
        "decoded",
        "malformed",
        "alerts",
        "verdicts_pass",
        "verdicts_block",
        "callback_errors",
        "hook_errors",
        "socket_overruns",
        "queued_by_kernel",
        "fail_open_events",
        "queue_dropped",
        "blocked_packets",
        "block_requests_failed",
        "reloads",
        "reloads_refused",
        "worker_restarts",
        "component_errors",
    }
)
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metrics(stats: Mapping[str, Any] | None, age: float | None) -> str:
    """Prometheus text format (0.0.4): every number in the stats, plus info and LED series."""
    lines: list[str] = []
    seen: set[str] = set()

    def series(name: str, kind: str, value: float, labels: dict[str, str] | None = None) -> None:
        if name in seen:  # one family per name, or scrapers reject the whole page
            return
        seen.add(name)
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{_labels(labels)} {_fmt(value)}")

    series("watchpost_up", "gauge", 0.0 if stats is None else 1.0)
    if stats is None:
        return "\n".join(lines) + "\n"
    series("watchpost_stats_age_seconds", "gauge", round(age or 0.0, 3))
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        name = "watchpost_" + _NAME_BAD.sub("_", key)
        if key in PROM_COUNTERS:
            series(name + "_total", "counter", value)
        else:
            series(name, "gauge", value)
    hub = _section(stats, "hub")
    series("watchpost_hub_enabled", "gauge", float(bool(hub.get("enabled"))))
    series("watchpost_hub_connected", "gauge", float(bool(hub.get("connected"))))
    info = {
        "version": str(stats.get("version") or ""),
        "mode": str(stats.get("mode") or ""),
        "state": str(stats.get("state") or ""),
        "intel_version": str(stats.get("intel_version") or ""),
        "hub_state": str(hub.get("state") or ""),
    }
    series("watchpost_info", "gauge", 1.0, info)
    leds = _section(stats, "leds")
    if leds:
        lines.append("# TYPE watchpost_led gauge")
        for led in sorted(leds):
            labels = {"led": str(led), "state": str(leds[led])}
            lines.append(f"watchpost_led{_labels(labels)} 1")
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{_NAME_BAD.sub("_", k)}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
