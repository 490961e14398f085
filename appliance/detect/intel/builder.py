"""Building a store: indicator tokens parsed and collected as compact keys, then sorted into an
`IntelStore` (the file formats feed a `Builder`; `build` takes `Indicator` objects)."""

from __future__ import annotations

import hashlib
import re
import socket
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from appliance.detect.intel.store import (
    _P_DOMAIN,
    _P_JA3,
    _P_JA4,
    _P_URL,
    FORMAT_VERSION,
    KINDS,
    Indicator,
    IntelStore,
    LoadProblem,
    Meta,
    _h64,
    normalize_url,
)

MAX_META = 1 << 22  # meta ids share a 32-bit word with the prefix length
# A prefix shorter than this would flag a large part of the internet: refused as a mistake.
MIN_PREFIX = {4: 8, 6: 12}

DOMAIN_RE = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+"
    r"(?:[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?|xn--[a-z0-9-]{1,59})"
)
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_JA4_RE = re.compile(r"[tqd][0-9s][0-9][di][0-9]{2}[0-9]{2}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}")
_HOST_PORT_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}|\[([0-9a-fA-F:.]+)\]:\d{1,5}")


def classify(token: str) -> str | None:
    """The indicator kind of one token from a plain list, or None if it is none."""
    return Builder.parse_token(token)[0]


def clean_domain(token: str) -> str | None:
    name = token.lower().rstrip(".")
    if name.startswith("*."):
        name = name[2:]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253 or DOMAIN_RE.fullmatch(name) is None:
        return None
    return name


class Builder:
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
        if "/" in token and not token.partition("/")[2].isdigit():
            # "host/path" or "1.2.3.4:8080/path": a URL without its scheme, as trail lists
            # write them (the scheme is http: an https URL's path is never seen on the wire)
            host = token.partition("/")[0]
            bare, colon, port = host.rpartition(":")
            if colon and port.isdigit() and not bare.endswith(":"):
                host = bare  # host:port
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if host and Builder.parse_token(host)[0] in ("domain", "ip"):
                url = normalize_url("http://" + token)
                if url:
                    return ("url", url)
            return None, f"not a network or URL: {token[:80]!r}"
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
                return Builder.parse_token(m.group(1) or m.group(2))
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
        name = clean_domain(token)
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


def build(indicators: Iterable[Indicator], problems: list[LoadProblem] | None = None) -> IntelStore:
    """A store from `Indicator` objects (tests and tools; files go through `load_files`)."""
    builder = Builder()
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
