"""From one MQTT message to a store row, or to a quarantine row with the reason.

The device's identity and site come from the TOPIC (which the broker's ACL binds to the
certificate) checked against the CA registry, never from the message body: an alert that names
another device in ``watchpost.device`` is stored under the device whose topic it came on.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from hub.store import AlertRow, BadRow, StatusRow, SummaryRow, TelemetryRow
from protocol import topics

MAX_BYTES = 64 * 1024
MAX_ID = 128
_RISKY = re.compile(rb"\\u(?:0000|d[89a-f])", re.IGNORECASE)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Alert times outside this range cannot be a device's clock (and would need absurd partitions).
_MIN_TS = dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()
_MAX_TS = dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()

Row = AlertRow | StatusRow | TelemetryRow | SummaryRow | BadRow


class Bad(Exception):
    """A message that cannot be stored; `reason` is a short category, the message the detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Registry:
    """device id -> site, from the CA's registry.json; None = accept every device (no registry)."""

    devices: dict[str, str] | None = None

    def check(self, site: str, device: str) -> None:
        if self.devices is None:
            return
        known = self.devices.get(device)
        if known is None:
            raise Bad("unknown device", f"{device!r} is not in the registry")
        if known != site:
            raise Bad("site mismatch", f"{device!r} is enrolled at {known!r}, not {site!r}")


def parse_eve_time(text: Any) -> float:
    if not isinstance(text, str):
        raise Bad("wrong shape", "timestamp is not a string")
    try:  # EVE's "2027-01-15T08:00:00.123456+0000": fromisoformat reads it (strptime: 4x slower)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise Bad("wrong shape", f"timestamp {text[:40]!r} is not an EVE time") from None
    if when.tzinfo is None:
        raise Bad("wrong shape", "timestamp has no time zone")
    ts = when.timestamp()
    if not _MIN_TS <= ts < _MAX_TS:
        raise Bad("wrong shape", f"timestamp {text[:40]!r} out of range")
    return ts


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(v: Any, limit: int = 512) -> str | None:
    return v[:limit] if isinstance(v, str) else None


def parse(
    topic: str,
    payload: bytes,
    *,
    retain: bool,
    now: float,
    registry: Registry,
    max_bytes: int = MAX_BYTES,
) -> Row:
    """The row for this message; never raises (a bad message becomes a BadRow)."""
    try:
        return _parse(topic, payload, retain, now, registry, max_bytes)
    except Bad as e:
        return BadRow(topic[:512], str(e)[:512], bytes(payload[:4096]), now)


def reason_of(row: BadRow) -> str:
    return row.reason.split(":", 1)[0]


def _parse(
    topic: str, payload: bytes, retain: bool, now: float, registry: Registry, max_bytes: int
) -> Row:
    if len(payload) > max_bytes:
        raise Bad("oversized", f"{len(payload)} bytes > {max_bytes}")
    try:
        site, device, sub = topics.split(topic)
    except ValueError:
        raise Bad("not a device topic", topic[:200]) from None
    registry.check(site, device)
    if sub not in (topics.ALERTS, topics.STATUS, topics.TELEMETRY, topics.SUMMARY):
        raise Bad("unknown sub-topic", sub[:100])
    if not payload and sub == topics.STATUS:
        raise Bad("wrong shape", "empty status (retained status cleared)")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise Bad("not JSON", str(e)[:200]) from None
    if not isinstance(data, dict):
        raise Bad("wrong shape", f"expected a JSON object, got {type(data).__name__}")
    if _RISKY.search(payload):
        # PostgreSQL's jsonb refuses NUL and lone surrogates: refuse them here, not in a commit.
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise Bad("wrong shape", "lone surrogate escape") from None
        if b"\\u0000" in payload.lower():
            raise Bad("wrong shape", "NUL character")
    if sub == topics.ALERTS:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise Bad("not JSON", "not UTF-8") from None
        return _alert(data, text, site, device, now)
    if sub == topics.STATUS:
        state = data.get("state")
        if not isinstance(state, str) or not state:
            raise Bad("wrong shape", "status without a state")
        if "bd_seq" in data and _int(data["bd_seq"]) is None:
            raise Bad("wrong shape", "status bd_seq is not an integer")
        seen = now
        ts = data.get("ts")
        if retain and isinstance(ts, int | float) and not isinstance(ts, bool):
            seen = min(now, float(ts))  # an old retained status is not a sign of life now
        return StatusRow(device, site, data, seen)
    if sub == topics.TELEMETRY:
        ts = data.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise Bad("wrong shape", "telemetry without a numeric ts")
        if "counters" in data and not isinstance(data["counters"], dict):
            raise Bad("wrong shape", "telemetry counters is not an object")
        return TelemetryRow(device, site, float(ts), now, data)
    day = data.get("day") or data.get("date")
    if not isinstance(day, str) or not _DAY.match(day):
        raise Bad("wrong shape", "summary without a day (YYYY-MM-DD)")
    return SummaryRow(device, site, day, now, data)


def _alert(eve: dict[str, Any], text: str, site: str, device: str, now: float) -> AlertRow:
    wp = eve.get("watchpost")
    if not isinstance(wp, dict):
        raise Bad("wrong shape", "alert without a watchpost object")
    ident = wp.get("id")
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_ID:
        raise Bad("wrong shape", "alert without a watchpost.id (1-128 characters)")
    seq = wp.get("seq")
    if seq is not None and (_int(seq) is None or seq < 1):
        raise Bad("wrong shape", f"watchpost.seq {seq!r} is not a positive integer")
    ts = parse_eve_time(eve.get("timestamp"))
    al = eve.get("alert")
    if not isinstance(al, dict):
        raise Bad("wrong shape", "alert without an alert object")
    return AlertRow(
        id=f"{device}:{ident}",  # ids are the device's: scoped so no device can shadow another's
        ts=ts,
        device=device,
        site=site,
        seq=seq,
        received_at=now,
        eve=text,  # the record as the device sent it (valid JSON, checked above)
        signature_id=_int(al.get("signature_id")),
        signature=_text(al.get("signature")),
        category=_text(al.get("category")),
        severity=_int(al.get("severity")),
        src_ip=_text(eve.get("src_ip"), 64),
        src_port=_int(eve.get("src_port")),
        dest_ip=_text(eve.get("dest_ip"), 64),
        dest_port=_int(eve.get("dest_port")),
        proto=_text(eve.get("proto"), 16),
        count=_int(wp.get("count")),
    )
