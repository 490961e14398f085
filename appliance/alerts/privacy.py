"""Pseudonymisation: office addresses leave the device only as keyed tokens.

The token is an HMAC of the address under the device's privacy key, so the hub can still see
that two alerts concern the same office host, but cannot tell which host it is without the key.
Applied to the finished EVE record, so an office address in any field (including DNS answers
and detector details) is caught, not only src_ip/dest_ip.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any

from appliance.packet.addrset import AddrSet, packed_address


class Pseudonymizer:
    def __init__(self, key: str, home_nets: tuple[str, ...]) -> None:
        self._key = key.encode()
        self._home = AddrSet(home_nets)
        self._cache: dict[str, str] = {}

    def token(self, addr: str) -> str:
        """The stable token for an address string ("office-" + 16 hex digits)."""
        tok = self._cache.get(addr)
        if tok is None:
            mac = hmac.new(self._key, addr.encode(), hashlib.sha256).hexdigest()[:16]
            tok = f"office-{mac}"
            if len(self._cache) < 65536:
                self._cache[addr] = tok
        return tok

    def _office(self, text: str) -> str:
        """The canonical form of `text` if it is an office address, else ""."""
        packed = packed_address(text)
        if packed is None or not self._home.contains(packed):
            return ""
        return ipaddress.ip_address(packed).compressed

    def apply(self, value: Any) -> Any:
        """`value` with every office address string replaced by its token (recursively)."""
        if isinstance(value, str):
            canonical = self._office(value)
            return self.token(canonical) if canonical else value
        if isinstance(value, dict):
            return {k: self.apply(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.apply(v) for v in value]
        return value
