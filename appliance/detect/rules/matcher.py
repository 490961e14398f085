"""A loaded rule and how it matches one packet (with the records dissected from it).

Contents and pcres are kept per buffer, in rule order, as Suricata does: a content with
``distance``/``within`` (or a pcre with ``R``) is relative to the end of the previous match *in
the same buffer*. When a relative item fails after an earlier one matched, the earlier one is
tried at its next occurrence (Suricata's backtracking), with at most MATCH_STEPS attempts per
buffer so a rule of many short contents over a repetitive payload stays bounded.

Windows (offsets are bytes of the buffer, ``prev`` the end of the previous match):

- ``offset o``, ``depth d``: the match lies wholly in ``[o, o + d)`` (no depth: to the end);
- ``distance x``, ``within w``: the match lies wholly in ``[prev + x, prev + x + w)`` (no
  within: to the end); ``x`` may be negative;
- a negated content (``content:!"..."``) matches when the pattern is *not* in its window; it
  does not move ``prev``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.detect.rules.pcre import Pcre

MATCH_STEPS = 256  # content placements tried per buffer and rule (backtracking bound)

# Buffers (where a content or pcre looks). PKT is the packet's transport payload.
PKT = "pkt_data"
HTTP_BUFFERS = (
    "http.method",
    "http.uri",
    "http.uri.raw",
    "http.host",
    "http.host.raw",
    "http.user_agent",
    "http.header",
    "http.header.raw",
)
TLS_BUFFERS = ("tls.sni", "ja3.hash", "ja3.string", "ja4.hash")
DNS_BUFFERS = ("dns.query",)
BUFFERS = (PKT, *HTTP_BUFFERS, *TLS_BUFFERS, *DNS_BUFFERS)

# Where a rule is evaluated: on every queued packet, or with the record a dissector made.
HOOK_PACKET, HOOK_HTTP, HOOK_TLS, HOOK_DNS = "packet", "http", "tls", "dns"
BUFFER_HOOK = {
    PKT: HOOK_PACKET,
    **dict.fromkeys(HTTP_BUFFERS, HOOK_HTTP),
    **dict.fromkeys(TLS_BUFFERS, HOOK_TLS),
    **dict.fromkeys(DNS_BUFFERS, HOOK_DNS),
}

# TCP flag bits as the flags keyword names them.
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
             "C": 0x80, "2": 0x40, "1": 0x80}  # fmt: skip

FLOW_TO_SERVER, FLOW_TO_CLIENT = 1, 2
STATE_ESTABLISHED, STATE_NOT_ESTABLISHED, STATE_STATELESS = 1, 2, 3


@dataclass(slots=True)
class Content:
    pattern: bytes  # lower case when nocase
    nocase: bool = False
    negated: bool = False
    offset: int | None = None
    depth: int | None = None
    distance: int | None = None
    within: int | None = None
    fast_pattern: bool = False
    buffer: str = PKT

    @property
    def relative(self) -> bool:
        return self.distance is not None or self.within is not None


@dataclass(slots=True)
class PcreItem:
    pcre: Pcre
    buffer: str = PKT

    @property
    def relative(self) -> bool:
        return self.pcre.relative

    @property
    def negated(self) -> bool:
        return self.pcre.negated


Item = Content | PcreItem


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MATCH_STEPS


def match_chain(items: tuple[Item, ...], buf: bytes, lower: bytes) -> bool:
    """Whether every item of one buffer's chain matches `buf` (`lower` = buf.lower(), made
    once per buffer for the prefilter and the nocase contents)."""
    if len(items) == 1:  # the common case: one plain content, no window
        it = items[0]
        if type(it) is Content and it.offset is None and it.depth is None and not it.relative:
            found = (lower if it.nocase else buf).find(it.pattern) >= 0
            return found != it.negated
    return _match(items, 0, buf, lower, 0, _Budget())


def _match(
    items: tuple[Item, ...], i: int, buf: bytes, lower: bytes, prev: int, budget: _Budget
) -> bool:
    n = len(items)
    while i < n:
        it = items[i]
        if isinstance(it, PcreItem):
            p = it.pcre
            hit = p.search(buf, prev if p.relative else 0)
            if p.negated:
                if hit is not None:
                    return False
                i += 1
                continue
            if hit is None:
                return False
            prev = hit[1]
            i += 1
            continue
        hay = lower if it.nocase else buf
        size = len(buf)
        if it.distance is not None or it.within is not None:
            base = prev + (it.distance or 0)
            end = size if it.within is None else min(size, base + it.within)
            start = base if base > 0 else 0
        else:
            start = it.offset or 0
            end = size if it.depth is None else min(size, start + it.depth)
        pat = it.pattern
        pos = hay.find(pat, start, end) if end - start >= len(pat) else -1
        if it.negated:
            if pos >= 0:
                return False
            i += 1
            continue
        if pos < 0:
            return False
        # Retrying this item at a later occurrence only helps when the next item is relative.
        if i + 1 < n and items[i + 1].relative:
            while pos >= 0:
                budget.left -= 1
                if budget.left < 0:
                    return False
                if _match(items, i + 1, buf, lower, pos + len(pat), budget):
                    return True
                pos = hay.find(pat, pos + 1, end)
            return False
        prev = pos + len(pat)
        i += 1
    return True


@dataclass(slots=True)
class Threshold:
    """``threshold`` (kind limit/threshold/both) or ``detection_filter`` (kind "detection")."""

    kind: str
    track: str  # by_src | by_dst | by_rule | by_both
    count: int
    seconds: int


@dataclass(slots=True)
class Rule:
    action: str  # alert | drop | pass
    proto: str  # as written
    ipprotos: frozenset[int] | None  # None = any IP protocol
    app: str  # "" | http | tls | dns: the rule needs that dissected protocol
    src: Any  # AddrSet | None (any)
    sport: Any  # PortSet | None
    dst: Any
    dport: Any
    bidirectional: bool
    sid: int
    gid: int = 1
    rev: int = 0
    msg: str = ""
    classtype: str = ""
    category: str = ""
    severity: int = 3
    references: tuple[tuple[str, str], ...] = ()
    metadata: tuple[str, ...] = ()
    flow_dir: int = 0
    flow_state: int = 0
    flags: tuple[str, int, int] | None = None  # (modifier, bits, ignore mask)
    dsize: tuple[str, int, int] | None = None  # (op, a, b)
    chains: dict[str, tuple[Item, ...]] = field(default_factory=dict)
    hook: str = HOOK_PACKET
    fast: tuple[str, bytes] | None = None  # (buffer, lower-case pattern) for the prefilter
    threshold: Threshold | None = None
    detection_filter: Threshold | None = None
    source: str = ""  # file:line
    index: int = 0  # load order, for a stable evaluation order

    @property
    def key(self) -> tuple[int, int]:
        return (self.gid, self.sid)

    def header_matches(self, pkt: Any, memo: dict[Any, bool] | None = None) -> bool:
        """Protocol, addresses and ports (either way round for ``<>``). With `memo` (one per
        packet), rules whose header names the same lists (compiled once, shared) share one
        answer."""
        protos = self.ipprotos
        if protos is not None and pkt.proto not in protos:
            return False
        if memo is not None:
            key = (self.src, self.dst, self.sport, self.dport, self.bidirectional)
            got = memo.get(key)
            if got is None:
                got = memo[key] = self._either_way(pkt)
            return got
        return self._either_way(pkt)

    def _either_way(self, pkt: Any) -> bool:
        if self._one_way(pkt.src, pkt.sport, pkt.dst, pkt.dport):
            return True
        return self.bidirectional and self._one_way(pkt.dst, pkt.dport, pkt.src, pkt.sport)

    def _one_way(self, src: bytes, sport: int, dst: bytes, dport: int) -> bool:
        s, d = self.src, self.dst
        if s is not None and src not in s:
            return False
        if d is not None and dst not in d:
            return False
        if self.sport is not None and sport not in self.sport:
            return False
        return self.dport is None or dport in self.dport

    def state_matches(self, pkt: Any, flow: Any, from_client: bool) -> bool:
        """flow, flags and dsize."""
        fd = self.flow_dir
        if fd:
            if fd == FLOW_TO_SERVER and not from_client:
                return False
            if fd == FLOW_TO_CLIENT and from_client:
                return False
        fs = self.flow_state
        if fs:
            est = _established(flow)
            if fs == STATE_ESTABLISHED and not est:
                return False
            if fs == STATE_NOT_ESTABLISHED and est:
                return False
        fl = self.flags
        if fl is not None:
            if pkt.proto != 6:
                return False
            mod, bits, ignore = fl
            f = pkt.flags & ~ignore & 0xFF
            if mod == "":
                if f != bits:
                    return False
            elif mod == "+":
                if f & bits != bits:
                    return False
            elif mod == "*":
                if not f & bits:
                    return False
            elif f & bits == bits:  # "!": not all of these set
                return False
        ds = self.dsize
        if ds is not None:
            op, a, b = ds
            n = pkt.payload_len
            if not (
                (op == "=" and n == a)
                or (op == "!" and n != a)
                or (op == "<" and n < a)
                or (op == ">" and n > a)
                or (op == "<=" and n <= a)
                or (op == ">=" and n >= a)
                or (op == "<>" and a < n < b)
            ):
                return False
        return True

    def content_matches(self, buffers: Any, memo: dict[int, bool] | None = None) -> bool:
        """Every buffer's chain; `buffers.get(name)` gives (bytes, lower) or None (absent).
        With `memo` (one per packet and record), a chain shared by several rules (the rule set
        gives equal chains of one buffer one tuple, `intern_chains`) is matched once."""
        for name, items in self.chains.items():
            if memo is not None:
                done = memo.get(id(items))
                if done is not None:
                    if not done:
                        return False
                    continue
            got = buffers.get(name)
            # as in Suricata: an absent buffer (no User-Agent) never matches
            ok = got is not None and match_chain(items, got[0], got[1])
            if memo is not None:
                memo[id(items)] = ok
            if not ok:
                return False
        return True


def _item_key(it: Item) -> tuple[Any, ...]:
    if isinstance(it, PcreItem):
        p = it.pcre
        return ("pcre", p.source, p.negated, p.relative, p.buffer)
    return ("content", it.pattern, it.nocase, it.negated, it.offset, it.depth, it.distance,
            it.within)  # fmt: skip


def intern_chains(rules: list[Rule]) -> int:
    """Give equal chains of one buffer (same items, in order) one tuple object, so a packet's
    `content_matches` memo matches each once; returns how many distinct chains there are."""
    canon: dict[tuple[Any, ...], tuple[Item, ...]] = {}
    for r in rules:
        for name, items in r.chains.items():
            key = (name, tuple(_item_key(it) for it in items))
            r.chains[name] = canon.setdefault(key, items)
    return len(canon)


def _established(flow: Any) -> bool:
    if flow.proto == 6:
        return flow.established
    # UDP and others: Suricata calls a flow established once both sides have sent.
    return flow.pkts_c > 0 and flow.pkts_s > 0
