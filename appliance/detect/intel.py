"""Threat-intel store: which addresses, names and fingerprints are known bad, and who said so.

Built for a Raspberry Pi holding millions of indicators, so nothing here keeps a Python object per
indicator (that alone would cost ~100 bytes each):

- IPv4 addresses and networks are flattened into disjoint ranges kept in `array('I')` columns
  (start, end, meta): a lookup is one `bisect`. IPv6 ranges use 16-byte big-endian records.
  Overlapping networks are resolved at build time so the most specific entry wins.
- Domains, URLs, JA3 and JA4 fingerprints are kept as sorted 64-bit BLAKE2b hashes (Maltrail's
  approach) with a parallel meta column; a domain lookup hashes the name and each parent (a listed
  domain covers its subdomains).
- Everything else an alert wants to say (source, category, severity, family tags) lives in a small
  side table indexed by a compact meta id.

Files are read in bounded chunks; the format is sniffed per file (plain lists, hosts files,
abuse.ch CSV such as Feodo Tracker and URLhaus, Spamhaus DROP text or JSON lines). Bad lines are
counted and reported with file and line; a file that is mostly junk, binary or cut off mid-line is
refused as a whole. A compiled cache next to the sources makes restarts fast, and `IntelManager`
rebuilds in the background and swaps the finished store in one reference assignment, keeping the
old store when a new load fails.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

KINDS = ("ip", "cidr", "domain", "url", "ja3", "ja4")
# Bumped whenever parsing or the compiled layout changes: part of the version and the cache key.
FORMAT_VERSION = 4
MAX_FILE_BYTES = 512 << 20
MAX_LINE = 16 << 10  # longer lines are junk (the longest real URLs are a few KiB)
CHUNK = 1 << 20
MAX_PROBLEMS_PER_FILE = 50
MAX_META = 1 << 22  # meta ids share a 32-bit word with the prefix length
# A prefix shorter than this would flag a large part of the internet: refused as a mistake.
MIN_PREFIX = {4: 8, 6: 12}

_SEVERITY_NAMES = {"high": 1, "medium": 2, "low": 3, "1": 1, "2": 2, "3": 3}
_HOSTS_IGNORED = {
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
}
_DOMAIN_RE = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+"
    r"(?:[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?|xn--[a-z0-9-]{1,59})"
)
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_JA4_RE = re.compile(r"[tqd][0-9s][0-9][di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
_HOST_PORT_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}|\[([0-9a-fA-F:.]+)\]:\d{1,5}")

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


def classify(token: str) -> str | None:
    """The indicator kind of one token from a plain list, or None if it is none."""
    return _Builder.parse_token(token)[0]


def _clean_domain(token: str) -> str | None:
    name = token.lower().rstrip(".")
    if name.startswith("*."):
        name = name[2:]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253 or _DOMAIN_RE.fullmatch(name) is None:
        return None
    return name


class _Builder:
    """Collects compact keys from all files, then sorts them into an `IntelStore`.

    Keys: ``start << 32 | plen << 24 | sev << 22 | meta`` for networks (sorting puts wider
    networks and then more severe entries first) and ``hash`` plus ``sev << 22 | meta`` for hashed
    kinds. They are kept in 256 `array` buckets by their top byte rather than in Python lists, so
    that building a million-entry store never holds a million Python ints: each bucket is sorted
    on its own (IPv4 networks are at least /8, so no network spans two buckets).
    """

    def __init__(self) -> None:
        self.h4: list[array[int]] = [array("Q") for _ in range(256)]  # /32: addr << 32 | tail
        self.v4: list[array[int]] = [array("Q") for _ in range(256)]  # networks
        self.v6: list[int] = []
        self.hk: list[array[int]] = [array("Q") for _ in range(256)]
        self.ht: list[array[int]] = [array("I") for _ in range(256)]
        self.meta: list[Meta] = []
        self._meta_ids: dict[Meta, int] = {}
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    def tail(self, meta: Meta) -> int:
        """The low 24 bits shared by every key of one meta entry (severity and meta id)."""
        mid = self._meta_ids.get(meta)
        if mid is None:
            if len(self.meta) >= MAX_META:  # too many distinct tags: keep the rest without tags
                return self.tail(Meta(meta.source, meta.category, meta.severity))
            mid = self._meta_ids[meta] = len(self.meta)
            self.meta.append(meta)
        return (meta.severity - 1) << 22 | mid

    @staticmethod
    def parse_token(token: str) -> tuple[str | None, Any]:
        """(kind, parsed) for one indicator token, or (None, why) when it is not one."""
        if not token:
            return None, "empty"
        if "://" in token:
            url = normalize_url(token)
            return ("url", url) if url else (None, f"not an http(s) URL: {token[:80]!r}")
        c = token[0]
        if "/" in token:
            addr, _, plen_s = token.partition("/")
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            try:
                packed = socket.inet_pton(fam, addr)
                plen = int(plen_s)
            except (OSError, ValueError):
                return None, f"not a network: {token[:80]!r}"
            bits = len(packed) * 8
            if not 0 <= plen <= bits:
                return None, f"prefix length out of range: {token[:80]!r}"
            if plen < MIN_PREFIX[4 if bits == 32 else 6]:
                return None, f"network too wide to list: {token[:80]!r}"
            a = int.from_bytes(packed, "big") & ~((1 << (bits - plen)) - 1)
            return ("cidr", (bits, a, plen))
        if ":" in token:
            try:
                packed = socket.inet_pton(socket.AF_INET6, token)
            except (OSError, ValueError):
                m = _HOST_PORT_RE.fullmatch(token)  # "1.2.3.4:443" or "[2001:db8::1]:443"
                if m is None:
                    return None, f"not an address: {token[:80]!r}"
                return _Builder.parse_token(m.group(1) or m.group(2))
            return ("ip", (128, int.from_bytes(packed, "big"), 128))
        if c.isdigit() and token[-1].isdigit() and "." in token:
            try:
                packed = socket.inet_pton(socket.AF_INET, token)
            except OSError:
                return None, f"not an address: {token[:80]!r}"
            return ("ip", (32, int.from_bytes(packed, "big"), 32))
        low = token.lower()
        if len(low) == 32 and _HEX32_RE.fullmatch(low):
            return ("ja3", low)
        if len(low) == 36 and _JA4_RE.fullmatch(low):
            return ("ja4", low)
        name = _clean_domain(token)
        if name is None:
            return None, f"not an indicator: {token[:80]!r}"
        return ("domain", name)

    def add(self, token: str, tail: int) -> str | None:
        """Add one token; returns a problem text when it is not an indicator."""
        kind, parsed = self.parse_token(token)
        if kind is None:
            return parsed
        self.add_parsed(kind, parsed, tail)
        return None

    def add_parsed(self, kind: str, parsed: Any, tail: int) -> None:
        self.counts[kind] += 1
        if kind in ("ip", "cidr"):
            bits, a, plen = parsed
            if bits == 32 and plen == 32:
                self.h4[a >> 24].append(a << 32 | tail)
            elif bits == 32:
                self.v4[a >> 24].append(a << 32 | plen << 24 | tail)
            else:
                self.v6.append(a << 32 | plen << 24 | tail)
        else:
            prefix = {"domain": _P_DOMAIN, "url": _P_URL, "ja3": _P_JA3, "ja4": _P_JA4}[kind]
            h = _h64(prefix + parsed.encode())
            self.hk[h >> 56].append(h)
            self.ht[h >> 56].append(tail)

    def mark(self) -> tuple[list[int], int, list[int], dict[str, int]]:
        return (
            [len(b) for b in self.h4 + self.v4],
            len(self.v6),
            [len(b) for b in self.hk],
            dict(self.counts),
        )

    def rollback(self, mark: tuple[list[int], int, list[int], dict[str, int]]) -> None:
        """Forget everything added since `mark` (a file refused as a whole)."""
        for b, n in zip(self.h4 + self.v4, mark[0], strict=True):
            del b[n:]
        del self.v6[mark[1] :]
        for hb, tb, n in zip(self.hk, self.ht, mark[2], strict=True):
            del hb[n:]
            del tb[n:]
        self.counts = dict(mark[3])

    def _sorted_v4(self) -> Iterator[int]:
        for i in range(256):
            keys = sorted(self.v4[i])
            self.v4[i] = array("Q")
            yield from keys

    def build(self) -> IntelStore:
        store = IntelStore()
        store.meta = list(self.meta)
        store.counts = dict(self.counts)
        for i in range(256):  # duplicates stay: a lookup finds the first, the most severe
            keys = sorted(self.h4[i])
            self.h4[i] = array("Q")
            store._v4h.extend(keys)
        _flatten(self._sorted_v4(), 32, store._v4s, store._v4e, store._v4v)
        self.v6.sort()
        s6: list[int] = []
        e6: list[int] = []
        _flatten(self.v6, 128, s6, e6, store._v6v)
        store._v6s = b"".join(x.to_bytes(16, "big") for x in s6)
        store._v6e = b"".join(x.to_bytes(16, "big") for x in e6)
        self.v6 = []
        hk, hv = store._hk, store._hv
        for i in range(256):  # duplicates stay: a lookup finds the first, the most severe
            keys = [h << 32 | t for h, t in zip(self.hk[i], self.ht[i], strict=True)]
            self.hk[i], self.ht[i] = array("Q"), array("I")
            keys.sort()
            hk.extend([k >> 32 for k in keys])
            hv.extend([k & 0x3FFFFF for k in keys])
        return store


def _flatten(keys: Iterable[int], bits: int, out_s: Any, out_e: Any, out_v: Any) -> None:
    """Sorted network keys → disjoint ranges where the most specific listed network wins.

    Networks (CIDRs) either nest or do not touch, so one pass with a stack of enclosing networks
    suffices: an inner network cuts its encloser into a head and a tail.
    """
    full = (1 << bits) - 1
    stack: list[tuple[int, int]] = []  # (end, val) of the enclosing networks, innermost last
    cursor = 0
    prev = -1
    for key in keys:
        ident = key >> 24  # start and prefix length: equal means the same network listed twice
        if ident == prev:
            continue
        prev = ident
        start = key >> 32
        plen = ident & 0xFF
        val = (key & 0x3FFFFF) << 8 | plen
        while stack and stack[-1][0] < start:
            top_end, top_val = stack.pop()
            if cursor <= top_end:
                out_s.append(cursor)
                out_e.append(top_end)
                out_v.append(top_val)
                cursor = top_end + 1
        if stack and cursor < start:
            out_s.append(cursor)
            out_e.append(start - 1)
            out_v.append(stack[-1][1])
        cursor = start
        stack.append((start | (full >> plen), val))
    while stack:
        top_end, top_val = stack.pop()
        if cursor <= top_end:
            out_s.append(cursor)
            out_e.append(top_end)
            out_v.append(top_val)
            cursor = top_end + 1


# -- file formats -------------------------------------------------------------------------------

# Known feeds: (source name, category, severity) used when the file does not say otherwise.
FEEDS: dict[str, tuple[str, str, int]] = {
    "feodo": ("feodotracker", "botnet-c2", 1),
    "urlhaus": ("urlhaus", "malware-distribution", 2),
    "threatfox": ("threatfox", "malware", 2),
    "sslbl": ("sslbl", "malware-tls-fingerprint", 2),
    "spamhaus-drop": ("spamhaus-drop", "hijacked-network", 2),
}
# Column layouts of the abuse.ch CSV exports, for files whose header line is missing.
FEODO_COLUMNS = ("first_seen_utc", "dst_ip", "dst_port", "c2_status", "last_online", "malware")
URLHAUS_COLUMNS = (
    "id",
    "dateadded",
    "url",
    "url_status",
    "last_online",
    "threat",
    "tags",
    "urlhaus_link",
    "reporter",
)
_INDICATOR_COLUMNS = (
    "dst_ip",
    "ip_address",
    "ip",
    "url",
    "ja3_md5",
    "ioc_value",
    "ioc",
    "indicator",
    "domain",
    "host",
)
_TAG_COLUMNS = ("malware", "malware_printable", "listingreason", "tags")
_CATEGORY_COLUMNS = ("threat", "threat_type")
_STATUS_COLUMNS = ("c2_status", "url_status")
# ThreatFox ioc_type values that are not network indicators: skipped, not bad.
_NON_NETWORK_IOC = ("md5_hash", "sha1_hash", "sha256_hash", "sha3_384_hash", "imphash")


class _Format:
    """Per-line parser of one file format; `parse` returns a problem text or None."""

    name = "plain"

    def __init__(self, builder: _Builder, meta: Meta) -> None:
        self.b = builder
        self.meta = meta
        self.tail = builder.tail(meta)
        self.skipped = 0

    def directive(self, line: str) -> str | None:
        """``# watchpost: source=NAME category=WORD severity=1..3`` sets defaults from here on."""
        body = line.split("watchpost:", 1)[1]
        values = {}
        for part in body.split():
            key, sep, value = part.partition("=")
            if not sep or key not in ("source", "category", "severity") or not value:
                return f"bad directive {part!r} (use source=, category=, severity=)"
            values[key] = value
        sev = self.meta.severity
        if "severity" in values:
            sev = _SEVERITY_NAMES.get(values["severity"].lower(), 0)
            if not sev:
                return f"bad severity {values['severity']!r} (1..3 or high/medium/low)"
        self.meta = Meta(
            values.get("source", self.meta.source),
            values.get("category", self.meta.category),
            sev,
            self.meta.tags,
        )
        self.tail = self.b.tail(self.meta)
        return None

    def parse_text(self, text: str, lineno: int, bad: Callable[[int, str], None]) -> int:
        """Parse complete lines (`text` ends with a newline) numbered from `lineno` + 1;
        returns the last line number."""
        lines = text.split("\n")
        lines.pop()
        return self.parse_lines(lines, lineno, bad)

    def parse_lines(self, lines: list[str], lineno: int, bad: Callable[[int, str], None]) -> int:
        parse = self.parse
        for line in lines:
            lineno += 1
            if not line:
                continue
            if line[0] == "#" and _is_directive(line):
                why = self.directive(line)
            elif len(line) > MAX_LINE:
                why = f"line longer than {MAX_LINE} bytes"
            else:
                why = parse(line)
            if why is not None:
                bad(lineno, _explain(line, why))
        return lineno

    def parse(self, line: str) -> str | None:
        if "#" in line:
            line = line.split("#", 1)[0]
        token = line.strip()
        if not token:
            return None
        if " " in token or "\t" in token:  # "indicator  trailing words": the first word counts
            words = token.split()
            # DShield block list: "start end prefix-length ..." is the network start/prefix
            if (
                len(words) >= 3
                and words[2].isdigit()
                and ":" not in words[0]
                and self.b.parse_token(words[1])[0] == "ip"
            ):
                return self.b.add(f"{words[0]}/{words[2]}", self.tail)
            why = self.b.add(words[0], self.tail)
            return None if why is None else f"not an indicator line: {token[:80]!r}"
        return self.b.add(token, self.tail)


class _Plain(_Format):
    """One indicator per line, kinds mixed. The common kinds (IPv4, domains) take a fast path
    because a million-line list must load in a few seconds on a Pi."""

    def parse_lines(self, lines: list[str], lineno: int, bad: Callable[[int, str], None]) -> int:
        b = self.b
        h4, hk, ht = b.h4, b.hk, b.ht
        pton, af_inet = socket.inet_pton, socket.AF_INET
        domain_match = _DOMAIN_RE.fullmatch
        blake = hashlib.blake2b
        tail = self.tail
        n_ip = n_dom = 0
        for line in lines:
            lineno += 1
            if not line:
                continue
            c = line[0]
            if c == "#":
                if _is_directive(line):
                    why = self.directive(line)
                    tail = self.tail
                    if why is not None:
                        bad(lineno, why)
                continue
            if "#" in line:
                line = line.split("#", 1)[0]
            tok = line.strip()
            if not tok or len(tok) > 253:
                if tok:
                    why = (
                        self.parse(tok)
                        if len(line) <= MAX_LINE
                        else f"line longer than {MAX_LINE} bytes"
                    )
                    if why is not None:
                        bad(lineno, _explain(line, why))
                continue
            c = tok[0]
            if "0" <= c <= "9" and "0" <= tok[-1] <= "9":
                try:
                    a = int.from_bytes(pton(af_inet, tok), "big")
                except OSError:
                    pass
                else:
                    h4[a >> 24].append(a << 32 | tail)
                    n_ip += 1
                    continue
            elif "." in tok:  # (the pattern admits only ASCII letters, digits, '-', '_', '.')
                low = tok.lower()
                if low[-1] == ".":
                    low = low[:-1]
                if domain_match(low) is not None:
                    h = int.from_bytes(blake(b"d\0" + low.encode(), digest_size=8).digest(), "big")
                    hk[h >> 56].append(h)
                    ht[h >> 56].append(tail)
                    n_dom += 1
                    continue
            why = self.parse(tok)
            if why is not None:
                bad(lineno, _explain(line, why))
        b.counts["ip"] += n_ip
        b.counts["domain"] += n_dom
        return lineno


def _is_directive(line: str) -> bool:
    return line.lstrip("# \t").startswith("watchpost:")


def _explain(line: str, why: str) -> str:
    """Say "not UTF-8 text" for lines that were not, instead of the parser's complaint."""
    try:
        line.encode()
    except UnicodeEncodeError:
        return "not UTF-8 text"
    return why


class _Hosts(_Format):
    name = "hosts"

    def parse(self, line: str) -> str | None:
        if "#" in line:
            line = line.split("#", 1)[0]
        fields = line.split()
        if not fields:
            return None
        if len(fields) < 2 or self.b.parse_token(fields[0])[0] != "ip":
            return f"not a hosts line: {line.strip()[:80]!r}"
        for name in fields[1:]:
            if name.lower() in _HOSTS_IGNORED:
                continue
            clean = _clean_domain(name)
            if clean is None:
                return f"not a domain: {name[:80]!r}"
            self.b.add_parsed("domain", clean, self.tail)
        return None


class _Drop(_Format):
    """Spamhaus DROP/EDROP text: ``CIDR ; SBLnnn``, comments start with ';'."""

    name = "spamhaus-drop"

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] in ";#":
            return None
        net, _, sbl = body.partition(";")
        if not self.add_network(net.strip(), sbl.strip()):
            return f"not a DROP line: {body[:80]!r}"
        return None

    def add_network(self, net: str, sbl: str) -> bool:
        """Add one DROP network tagged with its SBL id; False if `net` is no address/CIDR."""
        kind, parsed = self.b.parse_token(net)
        if kind not in ("cidr", "ip"):
            return False
        tail = self.b.tail(Meta(self.meta.source, self.meta.category, self.meta.severity, sbl))
        self.b.add_parsed(kind, parsed, tail)
        return True


class _DropJson(_Drop):
    """Spamhaus DROP JSON lines: ``{"cidr": ..., "sblid": ..., "rir": ...}``, then metadata."""

    name = "spamhaus-drop-json"

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] in ";#":
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            return f"not JSON: {body[:80]!r}"
        if not isinstance(obj, dict):
            return f"not a JSON object: {body[:80]!r}"
        if obj.get("type") == "metadata":
            return None
        cidr = obj.get("cidr")
        if not isinstance(cidr, str):
            return "no 'cidr' in object"
        if not self.add_network(cidr.replace("\\/", "/"), str(obj.get("sblid", ""))):
            return f"bad cidr {cidr[:80]!r}"
        return None


class _Csv(_Format):
    """abuse.ch-style CSV (Feodo Tracker, URLhaus, ThreatFox, SSLBL) located by column names."""

    name = "csv"

    def __init__(self, builder: _Builder, meta: Meta, columns: tuple[str, ...]) -> None:
        super().__init__(builder, meta)
        self.columns = columns
        idx = {c: i for i, c in enumerate(columns)}
        self.ind_col = next(idx[c] for c in _INDICATOR_COLUMNS if c in idx)
        self.tag_col = next((idx[c] for c in _TAG_COLUMNS if c in idx), None)
        self.cat_col = next((idx[c] for c in _CATEGORY_COLUMNS if c in idx), None)
        self.status_col = next((idx[c] for c in _STATUS_COLUMNS if c in idx), None)
        self.conf_col = idx.get("confidence_level")
        self.type_col = idx.get("ioc_type")
        self._tails: dict[tuple[str, str, int], int] = {}

    def directive(self, line: str) -> str | None:
        self._tails = {}
        return super().directive(line)

    def parse(self, line: str) -> str | None:
        body = line.strip()
        if not body or body[0] == "#":
            return None
        try:
            row = next(csv.reader([body], strict=True))
        except (csv.Error, StopIteration) as e:
            return f"bad CSV row ({e}): {body[:80]!r}"
        row = [c.strip() for c in row]
        if tuple(c.lower() for c in row) == self.columns:
            return None  # the header row itself
        if len(row) <= self.ind_col:
            return f"expected {len(self.columns)} columns, got {len(row)}: {body[:80]!r}"
        tc = self.type_col
        if tc is not None and len(row) > tc and row[tc].lower() in _NON_NETWORK_IOC:
            self.skipped += 1
            return None
        kind, parsed = self.b.parse_token(row[self.ind_col])
        if kind is None:
            return parsed
        self.b.add_parsed(kind, parsed, self._tail(row))
        return None

    def _tail(self, row: list[str]) -> int:
        meta = self.meta
        sev = meta.severity
        category = meta.category
        if self.cat_col is not None and self.cat_col < len(row) and row[self.cat_col]:
            category = row[self.cat_col].lower().replace("_", "-")
        sc = self.status_col
        if sc is not None and sc < len(row) and row[sc].lower() == "offline":
            sev = min(3, sev + 1)  # no longer answering: still worth knowing, less urgent
        if self.conf_col is not None and self.conf_col < len(row):
            try:
                conf = int(row[self.conf_col])
            except ValueError:
                pass
            else:
                sev = 1 if conf >= 90 else 2 if conf >= 50 else 3
        tags = ""
        if self.tag_col is not None and self.tag_col < len(row):
            tags = row[self.tag_col][:64]
        key = (category, tags, sev)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = self.b.tail(Meta(meta.source, category, sev, tags))
        return tail


def _csv_header(line: str) -> tuple[str, ...] | None:
    """Column names if `line` (possibly commented out) is a CSV header we understand."""
    body = line.lstrip("#; ").strip()
    if "," not in body:
        return None
    try:
        cols = tuple(c.strip().lower() for c in next(csv.reader([body])))
    except (csv.Error, StopIteration):
        return None
    if any(c in cols for c in _INDICATOR_COLUMNS) and len(cols) >= 2:
        return cols
    return None


def _sniff(head: list[str], path: Path, builder: _Builder) -> _Format:
    """Choose the parser for a file from its first lines (comments and data)."""
    comments = " ".join(ln.lower() for ln in head if ln.lstrip().startswith(("#", ";")))
    data = [ln.strip() for ln in head if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
    data = data[:50]
    feed = ""
    if "feodo tracker" in comments:
        feed = "feodo"
    elif "urlhaus" in comments:
        feed = "urlhaus"
    elif "threatfox" in comments:
        feed = "threatfox"
    elif "sslbl" in comments or "ssl blacklist" in comments:
        feed = "sslbl"
    elif "spamhaus" in comments:
        feed = "spamhaus-drop"

    columns = None
    csv_like = bool(data) and sum(1 for d in data if "," in d) > len(data) // 2
    for ln in head if csv_like else ():  # a header only counts when the rows have commas
        columns = _csv_header(ln)
        if columns is not None:
            break
    if columns is not None:
        if "dst_ip" in columns and "c2_status" in columns:
            feed = "feodo"
        elif "url_status" in columns or "urlhaus_link" in columns:
            feed = "urlhaus"
        elif "ioc_value" in columns:
            feed = "threatfox"
        elif "ja3_md5" in columns:
            feed = "sslbl"
    elif data and sum(1 for d in data if d.count(",") >= 2) > len(data) // 2:
        columns = {"feodo": FEODO_COLUMNS, "urlhaus": URLHAUS_COLUMNS}.get(feed)

    source, category, severity = FEEDS.get(feed, (path.stem, "malicious", 2))
    meta = Meta(source, category, severity)
    if data and sum(1 for d in data if d.startswith("{") and '"cidr"' in d) > len(data) // 2:
        return _DropJson(builder, Meta(*FEEDS["spamhaus-drop"]))
    if data and sum(1 for d in data if re.match(r"\S+/\d+\s*;", d)) > len(data) // 2:
        return _Drop(builder, Meta(*FEEDS["spamhaus-drop"]))
    if columns is not None:
        fmt = _Csv(builder, meta, columns)
        fmt.name = f"csv:{feed}" if feed else "csv"
        return fmt
    hostlike = 0
    for d in data:  # "0.0.0.0 name": an address, then a name (not "start end" ranges)
        parts = d.split("#", 1)[0].split()
        if (
            len(parts) >= 2
            and builder.parse_token(parts[0])[0] == "ip"
            and (parts[1].lower() in _HOSTS_IGNORED or builder.parse_token(parts[1])[0] == "domain")
        ):
            hostlike += 1
    if data and hostlike > len(data) // 2:
        return _Hosts(builder, Meta(path.stem, "blocklist", 2))
    fmt = _Plain(builder, meta)
    fmt.name = f"plain:{feed}" if feed else "plain"
    return fmt


def _load_file(path: Path, builder: _Builder, problems: list[LoadProblem]) -> FileReport:
    """Parse one file into `builder`; a refused file leaves the builder as it was."""
    report = FileReport(str(path))
    mark = builder.mark()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            report.size, report.mtime_ns = st.st_size, st.st_mtime_ns
            if st.st_size > MAX_FILE_BYTES:
                report.broken = f"too large ({st.st_size} bytes, limit {MAX_FILE_BYTES})"
            else:
                _parse_stream(f, path, builder, problems, report)
    except OSError as e:
        report.broken = f"cannot read: {e.strerror or e}"
    if not report.broken and report.bad_lines and report.bad_lines >= report.indicators:
        report.broken = (
            f"mostly not indicators ({report.bad_lines} bad lines, "
            f"{report.indicators} indicators): wrong file or corrupted"
        )
    if report.broken:
        builder.rollback(mark)
        report.indicators = 0
        problems.append(LoadProblem(str(path), 0, f"file refused: {report.broken}"))
    return report


def _parse_stream(
    f: Any, path: Path, builder: _Builder, problems: list[LoadProblem], report: FileReport
) -> None:
    digest = hashlib.sha256()
    first = f.read(CHUNK)
    if b"\0" in first[:65536]:
        report.broken = "binary data (NUL bytes), not a text list"
        return
    head = first[:65536].decode("utf-8", "replace").splitlines()[:200]
    fmt = _sniff(head, path, builder)
    report.format, report.source = fmt.name, fmt.meta.source
    before = sum(builder.counts.values())
    n_problems = 0

    def bad(lineno: int, why: str) -> None:
        nonlocal n_problems
        report.bad_lines += 1
        n_problems += 1
        if n_problems <= MAX_PROBLEMS_PER_FILE:
            problems.append(LoadProblem(str(path), lineno, why))

    lineno = 0
    carry = b""
    skipping = False  # inside an overlong line, dropping bytes until its end
    last_bad = False
    chunk = first
    while chunk:
        digest.update(chunk)
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            if len(carry) > MAX_LINE:
                if not skipping:
                    bad(lineno + 1, f"line longer than {MAX_LINE} bytes")
                    skipping = True
                carry = b""
            chunk = f.read(CHUNK)
            continue
        complete, carry = data[: cut + 1], data[cut + 1 :]
        if b"\0" in complete:
            report.broken = f"binary data (NUL bytes) after line {lineno}"
            return
        text = complete.decode("utf-8", "surrogateescape")
        if skipping:  # the first line is the end of an overlong one, already counted
            lineno += 1
            text = text.partition("\n")[2]
            skipping = False
        lineno = fmt.parse_text(text, lineno, bad)
        if len(carry) > MAX_LINE:
            bad(lineno + 1, f"line longer than {MAX_LINE} bytes")
            skipping = True
            carry = b""
        chunk = f.read(CHUNK)
    if carry and not skipping:
        lineno += 1
        line = carry.decode("utf-8", "surrogateescape")
        why = fmt.parse(line) if len(line) <= MAX_LINE else f"line longer than {MAX_LINE} bytes"
        if why is not None:
            bad(lineno, why)
            last_bad = True
    if last_bad:
        report.broken = f"ends mid-line at line {lineno} (half-written?)"
        return
    report.skipped = fmt.skipped
    report.indicators = sum(builder.counts.values()) - before
    report.sha256 = digest.hexdigest()


def _version(files: list[FileReport]) -> str:
    digest = hashlib.sha256(f"watchpost-intel/{FORMAT_VERSION}".encode())
    for f in files:
        if not f.broken:
            digest.update(f"\0{Path(f.path).name}\0{f.sha256}".encode())
    return digest.hexdigest()[:12]


# -- the compiled cache -------------------------------------------------------------------------

_MAGIC = b"WPINTEL\x03"


def cache_path(paths: Iterable[str], cache_dir: str | None = None) -> Path | None:
    """Where the compiled form of this set of files lives: next to the first file, or in
    `cache_dir` when given."""
    resolved = [str(Path(p).resolve()) for p in paths]
    if not resolved:
        return None
    name = hashlib.sha256("\0".join(resolved).encode()).hexdigest()[:12]
    where = Path(cache_dir) if cache_dir else Path(resolved[0]).parent
    return where / f".watchpost-intel-{name}.cache"


def _sources_match(files: list[dict[str, Any]], paths: list[str]) -> bool:
    """Whether the cached sources are exactly `paths` with unchanged size, mtime and content
    (the content hash is computed only when size and mtime already match)."""
    if [x["path"] for x in files] != [str(Path(p)) for p in paths]:
        return False
    try:
        for x in files:
            st = os.stat(x["path"])
            if (st.st_size, st.st_mtime_ns) != (x["size"], x["mtime_ns"]):
                return False
        for x in files:
            digest = hashlib.sha256()
            with open(x["path"], "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != x["sha256"]:
                return False
    except OSError:
        return False
    return True


def _arrays(store: IntelStore) -> list[tuple[str, Any]]:
    return [
        ("v4h", store._v4h),
        ("v4s", store._v4s),
        ("v4e", store._v4e),
        ("v4v", store._v4v),
        ("v6v", store._v6v),
        ("hk", store._hk),
        ("hv", store._hv),
    ]


def write_cache(store: IntelStore, path: Path) -> None:
    """Save the compiled store atomically (a crash leaves the old cache or none, never half)."""
    header = {
        "format": FORMAT_VERSION,
        "byteorder": sys.byteorder,
        "version": store.version,
        "counts": store.counts,
        "meta": [[m.source, m.category, m.severity, m.tags] for m in store.meta],
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "sha256": f.sha256,
                "report": f.as_dict(),
            }
            for f in store.files
        ],
        "problems": [[p.path, p.line, p.problem] for p in store.problems[:1000]],
        "arrays": {name: [arr.typecode, len(arr)] for name, arr in _arrays(store)},
        "v6": [len(store._v6s), len(store._v6e)],
    }
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            crc = 0
            f.write(_MAGIC + struct.pack("<I", len(blob)) + blob)
            for part in [arr for _, arr in _arrays(store)] + [store._v6s, store._v6e]:
                mv = memoryview(part).cast("B")
                crc = zlib.crc32(mv, crc)
                f.write(mv)
            f.write(struct.pack("<I", crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(path: Path, paths: list[str]) -> IntelStore | None:
    """The cached store if it was compiled from exactly these file contents, else None."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            (hlen,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(hlen))
            if header.get("format") != FORMAT_VERSION or header.get("byteorder") != sys.byteorder:
                return None
            if not _sources_match(header["files"], paths):
                return None
            store = IntelStore()
            crc = 0
            for name, arr in _arrays(store):
                typecode, n = header["arrays"][name]
                if typecode != arr.typecode:
                    return None
                if n:  # read straight into the array: no second copy of a large buffer
                    arr = array(typecode, [0]) * n
                    setattr(store, f"_{name}", arr)
                    view = memoryview(arr).cast("B")
                    if f.readinto(view) != len(view):
                        return None
                    crc = zlib.crc32(view, crc)
                    view.release()
            n6s, n6e = header["v6"]
            store._v6s = f.read(n6s)
            store._v6e = f.read(n6e)
            crc = zlib.crc32(store._v6e, zlib.crc32(store._v6s, crc))
            tail = f.read(4)
            if len(tail) != 4 or struct.unpack("<I", tail)[0] != crc:
                return None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    store.version = header["version"]
    store.counts = {k: int(v) for k, v in header["counts"].items()}
    store.meta = [Meta(s, c, int(sev), t) for s, c, sev, t in header["meta"]]
    for x in header["files"]:
        r = x["report"]
        store.files.append(
            FileReport(
                r["path"],
                r["format"],
                r["source"],
                r["indicators"],
                r["bad_lines"],
                r.get("skipped", 0),
                r.get("broken", ""),
                x["sha256"],
                x["size"],
                x["mtime_ns"],
            )
        )
    store.problems = [LoadProblem(p, n, why) for p, n, why in header["problems"]]
    store.loaded_from = "cache"
    return store


# -- loading ------------------------------------------------------------------------------------


def intel_cache_dir(state_dir: str) -> str | None:
    """Where compiled intel lives: the state directory (the config directory is read-only under
    systemd); None when it cannot be written (then no cache)."""
    d = Path(state_dir) / "intel-cache"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(d) if os.access(d, os.W_OK) else None


def load_files(
    paths: Iterable[str], *, cache: bool = False, cache_dir: str | None = None
) -> IntelStore:
    """Build a store from intel files. Never raises for bad content: problems are in
    `store.problems` and refused files in `store.broken`.

    With `cache`, a compiled copy is kept next to the first file (or in `cache_dir`) and reused
    while every source has the same size, mtime and content hash.
    """
    t0 = time.monotonic()
    paths = [str(p) for p in paths]
    cpath = cache_path(paths, cache_dir) if cache else None
    if cpath is not None and cpath.exists():
        store = read_cache(cpath, paths)
        if store is not None:
            store.load_seconds = time.monotonic() - t0
            return store
    builder = _Builder()
    problems: list[LoadProblem] = []
    files = [_load_file(Path(p), builder, problems) for p in paths]
    store = builder.build()
    store.files = files
    store.problems = problems
    store.version = _version(files) if len(store) else "empty"
    if cpath is not None and not store.broken:
        try:
            write_cache(store, cpath)
        except OSError as e:
            log.warning("intel cache %s not written: %s", cpath, e.strerror or e)
    store.load_seconds = time.monotonic() - t0
    return store


def build(indicators: Iterable[Indicator], problems: list[LoadProblem] | None = None) -> IntelStore:
    """A store from `Indicator` objects (tests and tools; files go through `load_files`)."""
    builder = _Builder()
    digest = hashlib.sha256(f"watchpost-intel/{FORMAT_VERSION}".encode())
    for ind in indicators:
        digest.update(f"{ind.kind}\0{ind.value}\0{ind.source}\n".encode())
        why = builder.add(
            ind.value, builder.tail(Meta(ind.source, ind.category, ind.severity, ind.tags))
        )
        if why is not None:
            raise ValueError(why)
    store = builder.build()
    store.problems = problems or []
    store.version = digest.hexdigest()[:12] if len(store) else "empty"
    return store


# -- reloading ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    ok: bool
    version: str
    message: str
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class IntelManager:
    """Owns the current store and replaces it atomically.

    A reload builds the new store completely (in a background thread) while the old one keeps
    serving; only a finished, acceptable store is swapped in, with one reference assignment, and
    the listeners (e.g. `Engine.set_intel`) are told. A load with a refused file keeps the old
    store and says why in `status()`; at the first load there is no old store, so the good files
    are served and the refused ones reported.
    """

    def __init__(
        self,
        paths: Iterable[str] = (),
        *,
        cache: bool = True,
        cache_dir: str | None = None,
        listeners: Iterable[Callable[[IntelStore], None]] = (),
        isolate: bool = True,
    ) -> None:
        self.paths = tuple(str(p) for p in paths)
        self.cache = cache
        # With a cache, compile in a child process first: parsing millions of lines then holds
        # neither this process's GIL (the packet path) nor its memory (the peak goes with the
        # child); this process only reads the finished cache.
        self.isolate = isolate
        self.cache_dir = cache_dir
        self.listeners = list(listeners)
        self._store = IntelStore()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None
        self._loaded_once = False
        self.last: LoadResult | None = None
        self.loaded_at = 0.0

    @property
    def store(self) -> IntelStore:
        return self._store

    @property
    def version(self) -> str:
        return self._store.version

    @property
    def loading(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def load(self) -> LoadResult:
        """Load now, in the calling thread; swap in the result if it is acceptable."""
        with self._lock:
            t0 = time.monotonic()
            try:
                if self.cache and self.isolate and self.paths:
                    self._compile_in_child()
                new = load_files(self.paths, cache=self.cache, cache_dir=self.cache_dir)
            except Exception as e:  # a bug or out of memory: keep serving the old store
                log.exception("intel load failed")
                result = LoadResult(False, self._store.version, f"intel load failed: {e!r}")
                self.last = result
                return result
            seconds = time.monotonic() - t0
            problems = [str(p) for p in new.problems[:20]]
            refused = new.broken
            if refused and self._loaded_once:
                why = "; ".join(f"{Path(f.path).name}: {f.broken}" for f in refused)
                result = LoadResult(
                    False,
                    self._store.version,
                    f"intel reload refused, still serving {self._store.version}: {why}",
                    seconds,
                    problems,
                )
                log.warning("%s", result.message)
            else:
                self._swap(new)
                msg = f"intel {new.version}: {len(new)} indicators from {len(self.paths)} files"
                if new.bad_lines:
                    msg += f", {new.bad_lines} bad lines"
                if refused:
                    msg += f", refused {', '.join(Path(f.path).name for f in refused)}"
                result = LoadResult(True, new.version, msg, seconds, problems)
                log.info("%s (%.2fs, %s)", msg, seconds, new.loaded_from)
            self.last = result
            return result

    def _compile_in_child(self) -> None:
        """Refresh the cache in a subprocess; on any failure the load below parses in-process."""
        cmd = [sys.executable, "-m", "appliance.detect.intel", "compile"]
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        try:
            out = subprocess.run(
                [*cmd, "--", *self.paths], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("intel compile subprocess failed (%s); loading in-process", e)
            return
        if out.returncode not in (0, 1):
            log.warning("intel compile subprocess exited %s: %s", out.returncode, out.stderr[-500:])

    def reload(self, paths: Iterable[str] | None = None) -> threading.Thread:
        """Start a background load (of new `paths`, if given); the old store serves until the
        new one is complete. Returns the thread (join it to wait)."""
        if paths is not None:
            self.paths = tuple(str(p) for p in paths)
        thread = threading.Thread(target=self.load, name="intel-load", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> LoadResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.last

    def _swap(self, new: IntelStore) -> None:
        self._store = new
        self._loaded_once = True
        self.loaded_at = time.time()
        for fn in self.listeners:
            try:
                fn(new)
            except Exception:
                log.exception("intel listener failed")

    # -- service component hooks ---------------------------------------------------------------

    def configure(self, config: Any) -> None:
        """Live reconfiguration: reload in the background when `[intel]` changed."""
        paths = tuple(config.intel.paths)
        if paths != self.paths or bool(config.intel.cache) != self.cache:
            self.cache = bool(config.intel.cache)
            self.reload(paths)

    def stats(self) -> dict[str, Any]:
        return {"intel": self.status()}

    def status(self) -> dict[str, Any]:
        out = self._store.status()
        out["loading"] = self.loading
        out["loaded_at"] = self.loaded_at
        if self.last is not None:
            out["last_load"] = {"ok": self.last.ok, "message": self.last.message}
        return out


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.detect.intel compile|check [--cache-dir D] [--] FILE...``: compile
    the cache (used by `IntelManager` in a child process) or just report; prints the status as
    JSON; exit 1 when a file was refused."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("compile", "check"):
        print("usage: python -m appliance.detect.intel compile|check [--cache-dir D] FILE...")
        return 2
    cmd, args = args[0], args[1:]
    cache_dir = None
    if args[:1] == ["--cache-dir"] and len(args) >= 2:
        cache_dir, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    store = load_files(args, cache=cmd == "compile", cache_dir=cache_dir)
    print(json.dumps(store.status()))
    return 1 if store.broken else 0


if __name__ == "__main__":
    sys.exit(main())
