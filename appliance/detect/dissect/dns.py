"""DNS messages (UDP, and TCP with its 2-byte length prefix): question, rcode and answers."""

from __future__ import annotations

from appliance.detect.records import DnsMessage


def parse_dns(data: bytes, tcp: bool = False) -> DnsMessage | None:
    """Not written yet: see the dissectors task."""
    return None
