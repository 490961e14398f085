"""Recent alerts for the status page: the end of the EVE file, in plain words.

The EVE file grows for as long as logrotate lets it, so it is read from the end in blocks, never
more than `MAX_TAIL_BYTES`. What the page shows is picked field by field (signature text, when,
which office host, direction, the name involved): never whole records, never payload.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from appliance.alerts.model import parse_eve_time
from appliance.packet.addrset import AddrSet, is_entry, packed_address

MAX_TAIL_BYTES = 1 << 20  # read at most this much from the end of the file
BLOCK = 64 * 1024
MAX_LIMIT = 200  # most alerts one request may ask for

SEVERITY = {1: "high", 2: "medium", 3: "low"}
DIRECTION = {
    "outbound": "from the office to the internet",
    "inbound": "from the internet into the office",
    "internal": "inside the office",
}


def tail_lines(
    path: str | os.PathLike[str], n: int, max_bytes: int = MAX_TAIL_BYTES
) -> list[bytes]:
    """The last `n` complete lines of a file, reading at most `max_bytes` from its end.

    A last line without its newline is being written: it is left out. A missing file has none.
    """
    if n <= 0:
        return []
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; FileNotFoundError handled here)
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        buf = b""
        while pos > 0 and buf.count(b"\n") <= n and end - pos < max_bytes:
            size = min(BLOCK, pos, max_bytes - (end - pos))
            pos -= size
            f.seek(pos)
            buf = f.read(size) + buf
    cut = buf.rfind(b"\n")
    if cut < 0:
        return []
    lines = buf[:cut].split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first may have started before what was read
    return [line for line in lines if line.strip()][-n:]


def recent_alerts(
    path: str | os.PathLike[str],
    limit: int,
    home_nets: Iterable[str] = (),
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The last `limit` alerts of the EVE file, newest first, each in plain words."""
    nets = _nets(home_nets)
    out = []
    for line in reversed(tail_lines(path, limit)):
        try:
            eve = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(eve, dict) and eve.get("event_type") == "alert":
            out.append(describe(eve, nets, now))
    return out


def describe(
    eve: dict[str, Any],
    nets: AddrSet | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One EVE alert as the page shows it (a fixed set of fields, all plain values)."""
    alert = _dict(eve.get("alert"))
    wp = _dict(eve.get("watchpost"))
    direction = _text(wp.get("direction")) or "unknown"
    src, dest = _text(eve.get("src_ip")), _text(eve.get("dest_ip"))
    office, remote, remote_port = _sides(eve, src, dest, direction, nets or AddrSet())
    ts = _when(eve.get("timestamp"))
    severity = alert.get("severity")
    count = wp.get("count")
    return {
        "id": _text(wp.get("id")),
        "time": ts,
        "when": _clock_text(ts),
        "ago": _ago_text(ts, time.time() if now is None else now),
        "signature": _text(alert.get("signature")) or "unnamed alert",
        "category": _text(alert.get("category")),
        "severity": SEVERITY.get(severity, "unknown") if isinstance(severity, int) else "unknown",
        "action": "blocked" if alert.get("action") == "blocked" else "allowed",
        "office_host": office,
        "remote": remote,
        "remote_port": remote_port,
        "protocol": _text(eve.get("proto")),
        "direction": direction,
        "direction_text": DIRECTION.get(direction, "direction unknown"),
        "name": _name(eve),
        "count": count if isinstance(count, int) and count > 0 else 1,
    }


def _nets(cidrs: Iterable[str]) -> AddrSet:
    """The office ranges (the config was checked; an entry it would refuse is left out)."""
    return AddrSet(c for c in cidrs if is_entry(c))


def _is_office(addr: str, nets: AddrSet) -> bool:
    packed = packed_address(addr)
    if packed is None:
        return bool(addr)  # a pseudonym (privacy.pseudonymize) stands for an office address
    return nets.contains(packed)


def _sides(
    eve: dict[str, Any],
    src: str,
    dest: str,
    direction: str,
    nets: AddrSet,
) -> tuple[str, str, int | None]:
    """(office host, other party, other party's port)."""
    src_port, dest_port = eve.get("src_port"), eve.get("dest_port")
    src_in, dest_in = _is_office(src, nets), _is_office(dest, nets)
    # Both or neither in the office (internal traffic, or home_nets not matching): the side
    # that opened the flow is the office's unless it came in from the internet.
    office_is_src = src_in if src_in != dest_in else direction != "inbound"
    if office_is_src:
        return src, dest, dest_port if isinstance(dest_port, int) else None
    return dest, src, src_port if isinstance(src_port, int) else None


def _name(eve: dict[str, Any]) -> str:
    """The name involved: DNS query, TLS/QUIC server name or HTTP host."""
    for key, field in (("dns", "rrname"), ("tls", "sni"), ("quic", "sni"), ("http", "hostname")):
        value = _dict(eve.get(key)).get(field)
        if isinstance(value, str) and value:
            return value[:253]
    return ""


def _when(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_eve_time(value)
    except ValueError:
        return None


def _clock_text(ts: float | None) -> str:
    if ts is None:
        return "unknown time"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _ago_text(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    return ago(now - ts)


def ago(seconds: float) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago' (or 'in the future' for a clock jump)."""
    if seconds < -60:
        return "in the future (clock changed?)"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""
