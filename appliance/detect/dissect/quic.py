"""QUIC v1 Initial packets, decrypted with the RFC 9001 initial keys to read the ClientHello."""

from __future__ import annotations

from appliance.detect.records import TlsHello


def parse_initial(data: bytes) -> TlsHello | None:
    """Not written yet: see the dissectors task."""
    return None
