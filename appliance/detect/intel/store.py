"""The intel store: what is listed, looked up on the packet path without a Python object per
indicator (that alone would cost ~100 bytes each on a Pi holding millions).

- IPv4 addresses and networks are flattened into disjoint ranges kept in `array('I')` columns
  (start, end, meta): a lookup is one `bisect`. IPv6 ranges use 16-byte big-endian records.
  Overlapping networks are resolved at build time (`builder.py`) so the most specific entry wins.
- Domains, URLs, JA3 and JA4 fingerprints are kept as sorted 64-bit BLAKE2b hashes (Maltrail's
  approach) with a parallel meta column; a domain lookup hashes the name and each parent (a listed
  domain covers its subdomains).
- Everything else an alert wants to say (source, category, severity, family tags) lives in a small
  side table indexed by a compact meta id.
"""

from __future__ import annotations

import bisect
import hashlib
import socket
from array import array
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

KINDS = ("ip", "cidr", "domain", "url", "ja3", "ja4")
# Bumped whenever parsing or the compiled layout changes: part of the version and the cache key.
FORMAT_VERSION = 4

# Hash prefixes keep kinds apart in the one hash table.
_P_DOMAIN, _P_URL, _P_JA3, _P_JA4 = b"d\0", b"u\0", b"3\0", b"4\0"
_PREFIX_KIND = {_P_DOMAIN: "domain", _P_URL: "url", _P_JA3: "ja3", _P_JA4: "ja4"}


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Indicator:
    """One hit: what was listed (`value`), its kind and who listed it how seriously."""

    value: str
    kind: str  # ip | cidr | domain | url | ja3 | ja4
    source: str
    category: str = "malicious"
    severity: int = 2  # 1 = high .. 3 = low, as alert severities
    tags: str = ""  # malware family or feed tags, e.g. "Dridex" or "elf,mirai"


@dataclass(frozen=True, slots=True)
class Meta:
    source: str
    category: str
    severity: int
    tags: str = ""


@dataclass(slots=True)
class LoadProblem:
    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.problem}"
            if self.line
            else f"{self.path}: {self.problem}"
        )


@dataclass(slots=True)
class FileReport:
    """What one source file contributed, or why it was refused (`broken`)."""

    path: str
    format: str = ""
    source: str = ""
    indicators: int = 0
    bad_lines: int = 0
    skipped: int = 0  # rows of kinds we do not match on (file hashes in ThreatFox, ...)
    broken: str = ""
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "path": self.path,
            "format": self.format,
            "source": self.source,
            "indicators": self.indicators,
            "bad_lines": self.bad_lines,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if self.broken:
            out["broken"] = self.broken
        return out


# -- the store ----------------------------------------------------------------------------------


class IntelStore:
    """Immutable once built; `version` identifies the content (shown in status and alerts)."""

    def __init__(self) -> None:
        self.version = "empty"
        self._v4h = array("Q")  # listed single addresses: address << 32 | severity, meta
        self._v4s = array("I")  # listed networks as disjoint ranges: starts, sorted
        self._v4e = array("I")  # range ends (inclusive)
        self._v4v = array("I")  # meta id << 8 | prefix length of the listed entry
        self._v6s = b""  # 16-byte big-endian starts, sorted
        self._v6e = b""
        self._v6v = array("I")
        self._hk = array("Q")  # sorted 64-bit hashes of prefixed names / URLs / fingerprints
        self._hv = array("I")  # meta id per hash
        self.meta: list[Meta] = []
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.files: list[FileReport] = []
        self.problems: list[LoadProblem] = []
        self.loaded_from = "sources"
        self.load_seconds = 0.0

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def broken(self) -> list[FileReport]:
        """Files refused as a whole; a manager keeps its old store when there are any."""
        return [f for f in self.files if f.broken]

    @property
    def bad_lines(self) -> int:
        return sum(f.bad_lines for f in self.files)

    # -- lookups (the packet path) ------------------------------------------------------------

    def match_ip(self, addr: bytes) -> Indicator | None:
        """The indicator covering a packed IPv4/IPv6 address, most specific first (O(log n))."""
        if len(addr) == 4:
            a = int.from_bytes(addr, "big")
            hosts = self._v4h
            i = bisect.bisect_left(hosts, a << 32)
            if i < len(hosts) and hosts[i] >> 32 == a:  # a single address is the most specific
                return self._ip_indicator(a, 32, (hosts[i] & 0x3FFFFF) << 8 | 32)
            i = bisect.bisect_right(self._v4s, a) - 1
            if i < 0 or a > self._v4e[i]:
                return None
            return self._ip_indicator(a, 32, self._v4v[i])
        if len(addr) != 16 or not self._v6s:
            return None
        s6 = self._v6s
        i = bisect.bisect_right(range(len(s6) // 16), addr, key=lambda k: s6[16 * k : 16 * k + 16])
        i -= 1
        if i < 0 or addr > self._v6e[16 * i : 16 * i + 16]:
            return None
        return self._ip_indicator(int.from_bytes(addr, "big"), 128, self._v6v[i])

    def match_ip_text(self, text: str) -> Indicator | None:
        """`match_ip` for an address in text form (e.g. a DNS answer); None if not an address."""
        try:
            packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        except (OSError, ValueError):
            return None
        return self.match_ip(packed)

    def _ip_indicator(self, a: int, bits: int, val: int) -> Indicator:
        plen = val & 0xFF
        m = self.meta[val >> 8]
        net = a & ~((1 << (bits - plen)) - 1) & ((1 << bits) - 1)
        text = socket.inet_ntop(
            socket.AF_INET if bits == 32 else socket.AF_INET6, net.to_bytes(bits // 8, "big")
        )
        kind = "ip" if plen == bits else "cidr"
        value = text if kind == "ip" else f"{text}/{plen}"
        return Indicator(value, kind, m.source, m.category, m.severity, m.tags)

    def _match_hash(self, prefix: bytes, text: str) -> Indicator | None:
        hk = self._hk
        if not hk:
            return None
        h = _h64(prefix + text.encode("utf-8", "surrogateescape"))
        i = bisect.bisect_left(hk, h)
        if i < len(hk) and hk[i] == h:
            m = self.meta[self._hv[i]]
            return Indicator(text, _PREFIX_KIND[prefix], m.source, m.category, m.severity, m.tags)
        return None

    def match_domain(self, name: str) -> Indicator | None:
        """A listed domain matches itself and every subdomain (walks up the parent labels)."""
        if not self._hk or not name:
            return None
        name = name.lower().rstrip(".")
        while "." in name:
            ind = self._match_hash(_P_DOMAIN, name)
            if ind is not None:
                return ind
            name = name.partition(".")[2]
        return None

    def match_url(self, url: str) -> Indicator | None:
        """A listed URL, compared normalised; a listed URL without a query also matches the same
        URL with any query string."""
        if not self._hk:
            return None
        norm = normalize_url(url)
        if norm is None:
            return None
        ind = self._match_hash(_P_URL, norm)
        if ind is None and "?" in norm:
            ind = self._match_hash(_P_URL, norm.partition("?")[0])
        return ind

    def match_ja3(self, md5_hex: str) -> Indicator | None:
        return self._match_hash(_P_JA3, md5_hex.lower()) if md5_hex else None

    def match_ja4(self, fingerprint: str) -> Indicator | None:
        return self._match_hash(_P_JA4, fingerprint.lower()) if fingerprint else None

    # -- reporting ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the status page, telemetry and `cmd/res` say about the loaded intel."""
        return {
            "version": self.version,
            "indicators": len(self),
            "counts": dict(self.counts),
            "bad_lines": self.bad_lines,
            "files": [f.as_dict() for f in self.files],
            "problems": [str(p) for p in self.problems[:20]],
            "loaded_from": self.loaded_from,
            "load_seconds": round(self.load_seconds, 3),
        }


# -- parsing ------------------------------------------------------------------------------------


def normalize_url(text: str) -> str | None:
    """Scheme and host lower-cased, default port and fragment dropped, empty path as "/"."""
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != (80 if scheme == "http" else 443):
        host = f"{host}:{port}"
    path = parts.path or "/"
    return f"{scheme}://{host}{path}" + (f"?{parts.query}" if parts.query else "")
