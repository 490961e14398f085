"""Which rules can match at all: one Aho-Corasick automaton per buffer, and a port index.

Every rule with a (non-negated) content has one prefilter pattern: its ``fast_pattern``
content, else its longest. The patterns of all rules that look in one buffer go into ONE
automaton (pyahocorasick), matched lower-cased, so finding the candidate rules of a packet costs
one pass over its bytes whatever the number of rules; only candidates are checked in full.
Rules without a usable content (flags, dsize or only negated contents) go into a small
always-check list, indexed by IP protocol and port so a packet looks only at the few that name
its port (plus those for any port).

An automaton reports every occurrence, so a pattern that repeats itself with a short period
(``aaaa``, ``|00 00 00 00|``) would be reported at nearly every byte of a run of that byte (a
zero-padded QUIC Initial, or a crafted payload). Such patterns (period <= PERIODIC) are looked
for with one substring search each instead; every other pattern occurs at most once per
PERIODIC + 1 bytes, which bounds the automaton's reports per packet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import ahocorasick

from appliance.detect.rules.matcher import Rule

_second = itemgetter(1)
ANY = -1
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


class PortIndex:
    """Rules by (IP protocol, port): a packet gets those naming its source or destination
    port, and those for any port, of its protocol and of "any protocol"."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        by: defaultdict[tuple[int, int], list[Rule]] = defaultdict(list)
        for r in rules:
            protos = sorted(r.ipprotos) if r.ipprotos is not None else [ANY]
            ports = _index_ports(r)
            for p in protos:
                for port in ports:
                    by[(p, port)].append(r)
        self._by = {k: tuple(v) for k, v in by.items()}
        self.size = sum(len(v) for v in self._by.values())
        # IP protocols with rules at all ("any protocol" rules are listed under each of the
        # protocols packets come with, so a packet makes at most three lookups)
        any_proto = {k[1]: v for k, v in self._by.items() if k[0] == ANY}
        merged: defaultdict[tuple[int, int], list[Rule]] = defaultdict(list)
        for (p, port), rs in self._by.items():
            if p != ANY:
                merged[(p, port)] += rs
        for proto in (1, 6, 17, 58, *{k[0] for k in self._by if k[0] != ANY}):
            for port, rs in any_proto.items():
                merged[(proto, port)] += rs
        self._merged = {
            k: tuple(sorted({r.index: r for r in v}.values(), key=lambda r: r.index))
            for k, v in merged.items()
        }
        self._any_proto = {port: tuple(rs) for port, rs in any_proto.items()}

    def candidates(self, proto: int, sport: int, dport: int) -> list[Rule]:
        get = self._merged.get
        if (proto, ANY) not in self._merged and proto not in (1, 6, 17, 58):
            by_port = self._any_proto
            out = list(by_port.get(ANY, ()))
            out += by_port.get(dport, ())
            if sport != dport:
                out += by_port.get(sport, ())
            return out
        out = list(get((proto, ANY), ()))
        out += get((proto, dport), ())
        if sport != dport:
            out += get((proto, sport), ())
        return out


def _index_ports(r: Rule) -> list[int]:
    """The ports a rule can be found under; [ANY] when its ports are wide or unknown."""
    if r.bidirectional:
        a = r.dport.ports if r.dport is not None else None
        b = r.sport.ports if r.sport is not None else None
        return sorted(a | b) if a is not None and b is not None else [ANY]
    for spec in (r.dport, r.sport):
        if spec is not None and spec.ports is not None:
            return sorted(spec.ports)
    return [ANY]


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
        self.always = PortIndex(always)
        self.buffers = tuple(self.automata)

    def candidates(self, lowered: dict[str, str], pkt: object) -> list[int]:
        """Indexes (into the rule set) of rules whose prefilter pattern occurs in a buffer
        (`lowered`: buffer -> lower-case text, latin-1) or that are always checked."""
        out: set[int] = set()
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
        for r in self.always.candidates(pkt.proto, pkt.sport, pkt.dport):  # type: ignore[attr-defined]
            out.add(r.index)
        return sorted(out)

    def header_only(self, pkt: Any) -> list[int]:
        """Candidates of a packet without payload: only the always-checked rules can match."""
        got = self.always.candidates(pkt.proto, pkt.sport, pkt.dport)
        if len(got) < 2:
            return [r.index for r in got]
        return sorted({r.index for r in got})
