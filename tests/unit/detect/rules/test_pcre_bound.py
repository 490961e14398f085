"""pcre cannot stall the packet loop: RE2 (linear time) over at most PCRE_CAP bytes.

`(a+)+$` against a run of "a"s ending in "b" is the textbook catastrophic pattern: Python's `re`
(a backtracking engine, as PCRE is) needs about 2**n steps for n "a"s, so the 1 400 below would
never finish. Here every packet completes; the time per packet is measured in `make bench`
(``rules_pcre_worst_us``), not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.detect.rules.pcre import PCRE_CAP, PcreUnsupported, compile_pcre
from tests.unit.detect.rules.kit import Rules, tcp_flow

CATASTROPHIC = [
    '"/(a+)+$/"',
    '"/(a|aa)+$/"',
    '"/(a|a?)+b/"',
    '"/^(\\w+\\s?)*$/"',
    '"/(a*)*b/"',
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_finish_on_crafted_payloads(tmp_path: Path, pattern: str) -> None:
    r = Rules(
        tmp_path,
        f'alert tcp any any -> any any (msg:"cat"; content:"aaaa"; pcre:{pattern}; sid:1;)\n',
    )
    payload = b"a" * 1400 + b"!"  # no match possible at the end: a backtracker tries everything
    pkts = [p for i in range(50) for p in tcp_flow(payload, sport=30000 + i)]
    assert r.sids(pkts) == []
    assert r.harness is not None and r.harness.engine.stats.packets == len(pkts)


def test_the_pattern_still_matches_what_it_should(tmp_path: Path) -> None:
    r = Rules(
        tmp_path,
        'alert tcp any any -> any any (msg:"cat"; content:"aaaa"; pcre:"/(a+)+$/"; sid:1;)\n',
    )
    assert r.sids(tcp_flow(b"a" * 1400)) == [1]


def test_pcre_sees_at_most_the_cap() -> None:
    p = compile_pcre('"/NEEDLE/"')
    assert p.search(b"x" * (PCRE_CAP - 6) + b"NEEDLE") is not None
    assert p.search(b"x" * (PCRE_CAP - 5) + b"NEEDLE") is None  # ends past the cap
    # relative: the cap counts from the previous match
    assert p.search(b"x" * 5000 + b"NEEDLE", start=5000 - PCRE_CAP + 6) is not None
    assert p.search(b"x" * 5000 + b"NEEDLE", start=5000 - PCRE_CAP + 5) is None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ('"/a(?=b)/"', "lookahead"),
        ('"/a(?!b)/"', "negative lookahead"),
        ('"/(?<=a)b/"', "lookbehind"),
        ('"/(?<!a)b/"', "negative lookbehind"),
        ('"/(a)\\1/"', "backreference"),
        ('"/a++/"', "possessive"),
        ('"/(?>a)/"', "atomic"),
    ],
)
def test_backtracking_constructs_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(PcreUnsupported, match=why):
        compile_pcre(pattern)
