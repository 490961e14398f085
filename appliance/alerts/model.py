"""The alert record and its Suricata EVE-JSON form.

Analysts at the hub feed these straight into a SIEM that already reads Suricata, so the field
names and timestamp format are Suricata's; everything of our own lives under ``watchpost``.
Alerts carry metadata only: addresses, ports, names (DNS query, SNI, HTTP host/path, user agent)
and counts, never payload bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Signature:
    """One kind of finding; `sid` is stable across releases (documented in README)."""

    sid: int
    name: str
    category: str
    severity: int  # 1 = high, 2 = medium, 3 = low (Suricata's scale)
    # Suricata's generator id and revision: ours are 1; rules loaded by the rules detector
    # carry their own.
    gid: int = 1
    rev: int = 1

    def __post_init__(self) -> None:
        if self.severity not in (1, 2, 3):
            raise ValueError(f"signature {self.sid}: severity must be 1..3")


@dataclass(slots=True)
class Alert:
    """A finding, before numbering and privacy are applied by the pipeline."""

    detector: str
    signature: Signature
    timestamp: float
    src_ip: str
    dest_ip: str
    proto: str
    src_port: int | None = None
    dest_port: int | None = None
    action: str = "allowed"  # or "blocked"
    direction: str = "unknown"  # outbound | inbound | internal | unknown (who opened the flow)
    app_proto: str = ""
    # Suricata-shaped protocol objects, as in EVE: {"dns": {...}, "tls": {...}, "http": {...}}
    app: dict[str, Any] = field(default_factory=dict)
    # Detector facts worth reading (intel source, ports tried, ...); metadata, never payload.
    details: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    first_seen: float = 0.0
    last_seen: float = 0.0
    # Set by the pipeline.
    id: str = ""
    device: str = ""
    site: str = ""
    intel_version: str = ""

    def __post_init__(self) -> None:
        if not self.first_seen:
            self.first_seen = self.timestamp
        if not self.last_seen:
            self.last_seen = self.timestamp

    @property
    def key(self) -> tuple[str, int, str, str]:
        """Aggregation key: one alert per detector/signature/source/destination and window."""
        return (self.detector, self.signature.sid, self.src_ip, self.dest_ip)

    def to_eve(self) -> dict[str, Any]:
        sig = self.signature
        eve: dict[str, Any] = {
            "timestamp": eve_time(self.timestamp),
            "event_type": "alert",
            "src_ip": self.src_ip,
            "dest_ip": self.dest_ip,
            "proto": self.proto,
        }
        if self.src_port is not None:
            eve["src_port"] = self.src_port
        if self.dest_port is not None:
            eve["dest_port"] = self.dest_port
        if self.app_proto:
            eve["app_proto"] = self.app_proto
        eve["direction"] = "to_server"
        eve["alert"] = {
            "action": self.action,
            "gid": sig.gid,
            "signature_id": sig.sid,
            "rev": sig.rev,
            "signature": sig.name,
            "category": sig.category,
            "severity": sig.severity,
        }
        eve.update(self.app)
        wp: dict[str, Any] = {
            "id": self.id,
            "device": self.device,
            "site": self.site,
            "detector": self.detector,
            "count": self.count,
            "first_seen": eve_time(self.first_seen),
            "last_seen": eve_time(self.last_seen),
            "seq": 0,  # numbered by the pipeline's journal (the outbox)
            "direction": self.direction,
        }
        if self.intel_version:
            wp["intel_version"] = self.intel_version
        if self.details:
            wp["details"] = self.details
        eve["watchpost"] = wp
        return eve


def eve_time(ts: float) -> str:
    """Suricata's timestamp format: 2026-11-26T23:59:59.123456+0000."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def parse_eve_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def now() -> float:
    return time.time()


def service_port(eve: Mapping[str, Any]) -> int | None:
    """The port of the service involved in an EVE alert: the lower of its two ports.

    An alert's addresses follow the packet that raised it, so a DNS answer reads
    resolver:53 → client:51000; clients use high ephemeral ports, so the lower one is the
    service's whichever way the packet went. The page and the daily summary both count "ports
    targeted" by this one rule.
    """
    ports = [
        v
        for v in (eve.get("src_port"), eve.get("dest_port"))
        if isinstance(v, int) and not isinstance(v, bool) and v > 0
    ]
    return min(ports) if ports else None
