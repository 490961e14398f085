"""Which rules can match at all: one Aho-Corasick automaton per buffer, and a port index.

Every rule with a (non-negated) content has one prefilter pattern: its ``fast_pattern``
content, else its longest. The patterns of all rules that look in one buffer go into ONE
automaton (pyahocorasick), matched lower-cased, so finding the candidate rules of a packet costs
one pass over its bytes whatever the number of rules; only candidates are checked in full.
Rules without a usable content (flags, dsize or only negated contents) go into a small
always-check list, indexed by IP protocol and port so a packet looks only at the few that name
its port (plus those for any port).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import ahocorasick

from appliance.detect.rules.matcher import Rule

ANY = -1


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

    def candidates(self, proto: int, sport: int, dport: int) -> list[Rule]:
        get = self._by.get
        out: list[Rule] = []
        for p in (proto, ANY):
            for port in (ANY, dport, sport) if sport != dport else (ANY, dport):
                got = get((p, port))
                if got:
                    out += got
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
        self.automata: dict[str, tuple[ahocorasick.Automaton, list[tuple[int, ...]]]] = {}
        for buf, pats in patterns.items():
            auto = ahocorasick.Automaton()
            groups: list[tuple[int, ...]] = []
            for pat, idxs in pats.items():
                auto.add_word(pat, len(groups))
                groups.append(tuple(idxs))
            auto.make_automaton()
            self.automata[buf] = (auto, groups)
        self.always = PortIndex(always)
        self.buffers = tuple(self.automata)

    def candidates(self, lowered: dict[str, str], pkt: object) -> list[int]:
        """Indexes (into the rule set) of rules whose prefilter pattern occurs in a buffer
        (`lowered`: buffer -> lower-case text, latin-1) or that are always checked."""
        out: set[int] = set()
        for buf, text in lowered.items():
            entry = self.automata.get(buf)
            if entry is None or not text:
                continue
            auto, groups = entry
            hit = {g for _, g in auto.iter(text)}
            for g in hit:
                out.update(groups[g])
        for r in self.always.candidates(pkt.proto, pkt.sport, pkt.dport):  # type: ignore[attr-defined]
            out.add(r.index)
        return sorted(out)
