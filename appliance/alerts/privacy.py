"""Pseudonymisation: office addresses leave the device only as keyed tokens.

The token is an HMAC of the address under the device's privacy key, so the hub can still see
that two alerts concern the same office host, but cannot tell which host it is without the key.
Applied to every finished record that leaves the device (alerts, telemetry, summaries, command
answers such as `logs`), and inside every string of it: a bare address, ``host:port``,
``[v6]:port``, a URL, a reverse-DNS name (``11.0.18.198.in-addr.arpa``, ``…ip6.arpa``), an
IPv4-mapped IPv6 address (``::ffff:198.18.0.11``) all become the same token as the address.

Without a configured `privacy.key` a random key is made once and kept in the state directory
(`key_for`), so tokens stay stable across restarts and the key never leaves the device.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from appliance.packet.addrset import AddrSet, packed_address
from protocol.files import atomic_write

KEY_FILE = "privacy.key"

# Anything that may hold an address: dotted quads (also inside names and URLs), IPv6-looking
# runs of hex digits and colons (with an optional embedded IPv4 tail), and reverse-DNS names.
_REV4 = r"(?P<rev4>(?:\d{1,3}\.){4})in-addr\.arpa"
_REV6 = r"(?P<rev6>(?:[0-9a-fA-F]\.){32})ip6\.arpa"
_V4 = r"(?P<v4>(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d]))"
_V6 = (
    r"(?P<v6>(?<![0-9a-fA-F:])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}"
    r"(?::\d{1,3}(?:\.\d{1,3}){3})?)"
)
_V6_V4 = r"(?P<v6m>(?<![0-9a-fA-F:])[0-9a-fA-F:]{2,30}:\d{1,3}(?:\.\d{1,3}){3}(?![\d]))"
_ANY = re.compile(f"{_REV4}|{_REV6}|{_V6_V4}|{_V6}|{_V4}", re.IGNORECASE)
_HINT = re.compile(r"[.:]")  # a string with neither '.' nor ':' holds no address


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
        if len(packed) == 16 and packed[:12] == b"\x00" * 10 + b"\xff\xff":
            packed = packed[12:]  # a mapped address is the IPv4 address
        return ipaddress.ip_address(packed).compressed

    def _replace(self, m: re.Match[str]) -> str:
        text = m.group(0)
        if m.group("rev4"):
            addr = ".".join(reversed(m.group("rev4").rstrip(".").split(".")))
        elif m.group("rev6"):
            nibbles = m.group("rev6").replace(".", "")[::-1]
            addr = ":".join(nibbles[i : i + 4] for i in range(0, 32, 4))
        else:
            addr = text
        canonical = self._office(addr)
        return self.token(canonical) if canonical else text

    def scrub(self, text: str) -> str:
        """`text` with every office address in it, in any of its forms, replaced by its token."""
        if not _HINT.search(text):
            return text
        canonical = self._office(text)
        if canonical:
            return self.token(canonical)
        return _ANY.sub(self._replace, text)

    def apply(self, value: Any) -> Any:
        """`value` with every office address replaced by its token (recursively, keys too)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {
                self.scrub(k) if isinstance(k, str) else k: self.apply(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.apply(v) for v in value]
        return value

    def scrub_payload(self, payload: bytes) -> bytes:
        """A message body (JSON, else text) with every office address replaced."""
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self.scrub(payload.decode("utf-8", "replace")).encode()
        return json.dumps(self.apply(doc), separators=(",", ":")).encode()


def key_for(configured: str, state_dir: str | os.PathLike[str]) -> str:
    """The privacy key: the configured one, else the one kept in the state directory (made
    with 32 random bytes the first time)."""
    if configured:
        return configured
    path = Path(state_dir) / KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) >= 32:
        return key
    key = secrets.token_hex(32)
    atomic_write(path, (key + "\n").encode(), mode=0o600)
    return key
