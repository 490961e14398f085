"""Threat-intel store: which addresses and names are known bad, and who said so.

Loaded from list files (`intel.paths`), looked up on the packet path, swapped whole on reload so
lookups never see a half-loaded store.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Indicator:
    value: str
    kind: str  # ip | cidr | domain | url | ja3 | ja4
    source: str
    category: str = "malicious"
    severity: int = 2


@dataclass(slots=True)
class LoadProblem:
    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass
class IntelStore:
    """Immutable once built; `version` identifies the content (shown in status and alerts)."""

    version: str = "empty"
    # IPv4/IPv6 ranges as sorted, non-overlapping (start, end, indicator) lists.
    _v4_starts: list[int] = field(default_factory=list)
    _v4: list[tuple[int, int, Indicator]] = field(default_factory=list)
    _v6_starts: list[int] = field(default_factory=list)
    _v6: list[tuple[int, int, Indicator]] = field(default_factory=list)
    _domains: dict[str, Indicator] = field(default_factory=dict)
    problems: list[LoadProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6) + len(self._domains)

    def match_ip(self, addr: bytes) -> Indicator | None:
        """The indicator covering a packed IPv4/IPv6 address, if any (O(log n))."""
        a = int.from_bytes(addr, "big")
        starts, ranges = (
            (self._v4_starts, self._v4) if len(addr) == 4 else (self._v6_starts, self._v6)
        )
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0:
            _start, end, ind = ranges[i]
            if a <= end:
                return ind
        return None

    def match_domain(self, name: str) -> Indicator | None:
        """A listed domain matches itself and every subdomain."""
        name = name.lower().rstrip(".")
        domains = self._domains
        while name:
            ind = domains.get(name)
            if ind is not None:
                return ind
            _, _, name = name.partition(".")
        return None


def build(indicators: Iterable[Indicator], problems: list[LoadProblem] | None = None) -> IntelStore:
    """A store from indicators (IP/CIDR ranges merged so lookups are one bisect)."""
    v4: list[tuple[int, int, Indicator]] = []
    v6: list[tuple[int, int, Indicator]] = []
    domains: dict[str, Indicator] = {}
    digest = hashlib.sha256()
    for ind in indicators:
        digest.update(f"{ind.kind}\0{ind.value}\0{ind.source}\n".encode())
        if ind.kind in ("ip", "cidr"):
            net = ipaddress.ip_network(ind.value, strict=False)
            start = int(net.network_address)
            rng = (start, start + net.num_addresses - 1, ind)
            (v4 if net.version == 4 else v6).append(rng)
        elif ind.kind == "domain":
            domains.setdefault(ind.value, ind)
    store = IntelStore(
        version=digest.hexdigest()[:12] if (v4 or v6 or domains) else "empty",
        _domains=domains,
        problems=problems or [],
    )
    store._v4 = _disjoint(v4)
    store._v4_starts = [r[0] for r in store._v4]
    store._v6 = _disjoint(v6)
    store._v6_starts = [r[0] for r in store._v6]
    return store


def _disjoint(ranges: list[tuple[int, int, Indicator]]) -> list[tuple[int, int, Indicator]]:
    """Sorted ranges with overlaps resolved so each address falls in at most one range.

    The most specific (narrowest) range wins where they overlap, so a listed host inside a listed
    network reports the host's own source.
    """
    if not ranges:
        return []
    # Split points: every start and every end+1.
    points = sorted({r[0] for r in ranges} | {r[1] + 1 for r in ranges})
    out: list[tuple[int, int, Indicator]] = []
    # For typical intel (mostly single addresses, few nets) the overlap set is tiny; resolve each
    # elementary interval against the ranges that start at or before it.
    starts_sorted = sorted(ranges)
    active: list[tuple[int, int, Indicator]] = []
    j = 0
    for k in range(len(points) - 1):
        lo, hi = points[k], points[k + 1] - 1
        while j < len(starts_sorted) and starts_sorted[j][0] <= lo:
            active.append(starts_sorted[j])
            j += 1
        active = [r for r in active if r[1] >= lo]
        if not active:
            continue
        best = min(active, key=lambda r: r[1] - r[0])
        if out and out[-1][1] + 1 == lo and out[-1][2] is best[2]:
            out[-1] = (out[-1][0], hi, best[2])
        else:
            out.append((lo, hi, best[2]))
    return out


def classify(token: str) -> str | None:
    """The indicator kind of one token from a plain list, or None if it is none."""
    try:
        ipaddress.ip_address(token)
        return "ip"
    except ValueError:
        pass
    if "/" in token and "://" not in token:
        try:
            ipaddress.ip_network(token, strict=False)
            return "cidr"
        except ValueError:
            return None
    if "://" in token:
        return "url"
    labels = token.rstrip(".").split(".")
    if len(labels) >= 2 and all(
        0 < len(lab) <= 63 and all(c.isalnum() or c in "-_" for c in lab) for lab in labels
    ):
        return "domain"
    return None


def load_files(paths: Iterable[str]) -> IntelStore:
    """Read plain list files: one indicator per line, `#` comments; bad lines are reported."""
    indicators: list[Indicator] = []
    problems: list[LoadProblem] = []
    for path in paths:
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            problems.append(LoadProblem(str(p), 0, f"cannot read: {e.strerror or e}"))
            continue
        source = p.stem
        for lineno, line in enumerate(lines, 1):
            token = line.split("#", 1)[0].strip()
            if not token:
                continue
            kind = classify(token)
            if kind is None:
                problems.append(LoadProblem(str(p), lineno, f"not an indicator: {token[:60]!r}"))
                continue
            value = token.lower().rstrip(".") if kind == "domain" else token
            indicators.append(Indicator(value, kind, source))
    return build(indicators, problems)
