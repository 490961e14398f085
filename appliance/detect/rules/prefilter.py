"""Which rules can match at all: port groups, and in each one Aho-Corasick automaton per buffer.

Rules are grouped by port first (`PortGroups`, one per hook and IP protocol): a rule with a
port list is in the group of each port it lists, a rule for any port in the "any" group, and a
packet consults only the "any" group and the groups of its own two ports. In each group
(`Prefilter`), every rule with a (non-negated) content has one prefilter pattern: its
``fast_pattern`` content, else its longest. The patterns of the group's rules that look in one
buffer go into ONE automaton (pyahocorasick), matched lower-cased, so finding the candidate
rules of a packet costs one pass over its bytes per group whatever the number of rules; only
candidates are checked in full. Rules without a usable content (flags, dsize or only negated
contents) are the group's always-check list.

An automaton reports every occurrence, so a pattern that repeats itself with a short period
(``aaaa``, ``|00 00 00 00|``) would be reported at nearly every byte of a run of that byte (a
zero-padded QUIC Initial, or a crafted payload). Such patterns (period <= PERIODIC) are looked
for with one substring search each instead; every other pattern occurs at most once per
PERIODIC + 1 bytes, which bounds the automaton's reports per packet.
"""

from __future__ import annotations

from collections import defaultdict
from operator import itemgetter

import ahocorasick

from appliance.detect.rules.matcher import FLOW_TO_CLIENT, FLOW_TO_SERVER, Rule

_second = itemgetter(1)
PERIODIC = 2  # patterns whose smallest period is this or less are not put in the automaton


def period(word: str) -> int:
    """The smallest p such that word[i] == word[i + p] for all i (KMP failure function)."""
    n = len(word)
    fail = [0] * n
    k = 0
    for i in range(1, n):
        while k and word[i] != word[k]:
            k = fail[k - 1]
        if word[i] == word[k]:
            k += 1
        fail[i] = k
    return n - fail[-1] if n else 0


def index_ports(r: Rule) -> tuple[frozenset[int], frozenset[int]] | None:
    """The port groups a rule goes into: (destination ports, source ports) a packet must have
    one of for the rule's header to match it, or None (the "any" group) when its ports are any
    or too wide to list. A one-way rule goes under its destination ports, else under its source
    ports; a ``<>`` rule under its listed ports on both sides (either way round)."""
    d = r.dport.ports if r.dport is not None else None
    s = r.sport.ports if r.sport is not None else None
    if r.bidirectional:
        either = d or s
        return (either, either) if either else None
    if d:
        return d, frozenset()
    if s:
        return frozenset(), s
    return None


class PortGroups:
    """The rules of one hook and IP protocol by port, as Suricata's port groups: a rule with a
    port list is in the group of each port listed, a rule for any port in the "any" group.
    A packet looks up the "any" group, the group of its destination port and the group of its
    source port, nothing else: a packet to 443 never meets the rules for port 80. As Suricata's
    toserver / toclient groups, a rule with ``flow:to_server`` is only in the groups of packets
    from the client, one with ``flow:to_client`` only in those of packets from the server. Each
    group is a `Prefilter` over its own rules (groups with the same rules share one)."""

    __slots__ = ("_ways", "header_rules", "rules")

    def __init__(self, rules: list[Rule], made: dict[tuple[int, ...], Prefilter]) -> None:
        self.rules = rules
        self._ways = (
            _Ports([r for r in rules if r.flow_dir != FLOW_TO_SERVER], made),  # from the server
            _Ports([r for r in rules if r.flow_dir != FLOW_TO_CLIENT], made),  # from the client
        )
        # whether any rule here can match a packet without payload (one without content)
        self.header_rules = any(not r.chains for r in rules)

    def lookup(self, sport: int, dport: int, from_client: bool = True) -> tuple[Prefilter, ...]:
        """The groups a packet with these ports, from this side, consults (empty: no rule can
        match it)."""
        return self._ways[from_client].lookup(sport, dport)


MERGED_GROUPS = 4  # port groups per side and table merged with the "any" group (one pass)


class _Ports:
    """The port groups of rules for one direction. A packet with a port group meets that
    group's rules and the "any" group's: for the MERGED_GROUPS groups with the most patterns
    (ports with the same rules share one group) one prefilter holds both, so such a packet
    makes one automaton pass, not two; the others keep two (memory: each merge copies the
    "any" group's patterns)."""

    __slots__ = ("_any_only", "any", "dst_t", "src", "src_t")

    def __init__(self, rules: list[Rule], made: dict[tuple[int, ...], Prefilter]) -> None:
        anywhere: list[Rule] = []
        dst: defaultdict[int, list[Rule]] = defaultdict(list)
        src: defaultdict[int, list[Rule]] = defaultdict(list)
        for r in rules:
            where = index_ports(r)
            if where is None:
                anywhere.append(r)
                continue
            for port in where[0]:
                dst[port].append(r)
            for port in where[1]:
                src[port].append(r)
        self.any = _shared(anywhere, made) if anywhere else None
        self._any_only: tuple[Prefilter, ...] = (self.any,) if self.any is not None else ()
        # what a packet with only that port grouped consults; and the source ports' own groups
        # (added when both of a packet's ports are grouped)
        self.src = {port: _shared(rs, made) for port, rs in src.items()}
        self.dst_t = self._with_any(dst, anywhere, made)
        self.src_t = self._with_any(src, anywhere, made)

    def _with_any(
        self,
        by_port: dict[int, list[Rule]],
        anywhere: list[Rule],
        made: dict[tuple[int, ...], Prefilter],
    ) -> dict[int, tuple[Prefilter, ...]]:
        own = {port: tuple(r.index for r in rs) for port, rs in by_port.items()}
        # only groups with patterns of their own (a group of flags rules makes no pass), the
        # ones with the most first
        patterns = {port: sum(1 for r in rs if r.fast is not None) for port, rs in by_port.items()}
        sizes = {own[port]: n for port, n in patterns.items() if n}
        biggest = sorted(sizes, key=lambda k: (-sizes[k], k))[:MERGED_GROUPS]
        merged = set(biggest) if any(r.fast is not None for r in anywhere) else set()
        out: dict[int, tuple[Prefilter, ...]] = {}
        for port, rs in by_port.items():
            if own[port] in merged:
                both = sorted({r.index: r for r in (*rs, *anywhere)}.items())
                out[port] = (_shared([r for _, r in both], made),)
            else:
                out[port] = (*self._any_only, _shared(rs, made))
        return out

    def lookup(self, sport: int, dport: int) -> tuple[Prefilter, ...]:
        s = self.src.get(sport)
        if s is None:
            return self.dst_t.get(dport, self._any_only)
        d = self.dst_t.get(dport)
        if d is None:
            return self.src_t[sport]
        return d if s in d else (*d, s)  # both ports grouped (80 -> 80, <> rules): rare


def _shared(rules: list[Rule], made: dict[tuple[int, ...], Prefilter]) -> Prefilter:
    key = tuple(r.index for r in rules)
    pf = made.get(key)
    if pf is None:
        pf = made[key] = Prefilter(rules)
    return pf


class Prefilter:
    """The candidate rules of one hook (packet, http, tls, dns)."""

    def __init__(self, rules: list[Rule]) -> None:
        patterns: dict[str, dict[str, list[int]]] = defaultdict(dict)
        always: list[Rule] = []
        self.rules = rules
        for r in rules:
            if r.fast is None:
                always.append(r)
                continue
            buf, pat = r.fast
            patterns[buf].setdefault(pat.decode("latin-1"), []).append(r.index)
        self.automata: dict[str, tuple[ahocorasick.Automaton | None, list[tuple[int, ...]]]] = {}
        # buffer -> ((pattern, rule indexes), ...) searched one by one (short-period patterns)
        self.periodic: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        for buf, pats in patterns.items():
            auto = ahocorasick.Automaton()
            groups: list[tuple[int, ...]] = []
            direct = []
            for word, idxs in pats.items():
                if len(word) > 1 and period(word) <= PERIODIC:
                    direct.append((word, tuple(idxs)))
                    continue
                auto.add_word(word, len(groups))
                groups.append(tuple(idxs))
            if groups:
                auto.make_automaton()
            self.automata[buf] = (auto if groups else None, groups)
            if direct:
                self.periodic[buf] = tuple(direct)
        # rules checked on every packet of the group (no content to prefilter by)
        self.always = tuple(r.index for r in always)
        self.buffers = tuple(self.automata)

    def candidates(self, lowered: dict[str, str], out: set[int]) -> None:
        """Add to `out` the indexes (into the rule set) of rules whose prefilter pattern occurs
        in a buffer (`lowered`: buffer -> lower-case text, latin-1) or that are always
        checked."""
        periodic = self.periodic
        for buf, text in lowered.items():
            entry = self.automata.get(buf)
            if entry is None or not text:
                continue
            auto, groups = entry
            if auto is not None:
                for g in set(map(_second, auto.iter(text))):
                    out.update(groups[g])
            direct = periodic.get(buf)
            if direct:
                for word, idxs in direct:
                    if word in text:
                        out.update(idxs)
        out.update(self.always)
