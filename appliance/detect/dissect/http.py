"""HTTP/1 request heads: method, target, Host, User-Agent."""

from __future__ import annotations

from appliance.detect.records import HttpRequest


def parse_request(data: bytes) -> HttpRequest | None:
    """Not written yet: see the dissectors task."""
    return None
