"""TLS ClientHello: SNI, ALPN, JA3, JA4."""

from __future__ import annotations

from appliance.detect.records import TlsHello


def parse_client_hello(data: bytes) -> TlsHello | None:
    """Not written yet: see the dissectors task."""
    return None
