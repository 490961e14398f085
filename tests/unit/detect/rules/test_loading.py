"""Loading rule files: loaded / skipped with a reason / syntax error at file:line; never half
loaded; `watchpost rules check` reports counts and exits non-zero on syntax errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.detect.rules.addresses import SpecError, Specs, default_vars
from appliance.detect.rules.ruleset import RulesError, load_files

DATA = Path(__file__).parents[3] / "data" / "rules"
SAMPLE = DATA / "watchpost-sample.rules"
BAD = DATA / "bad.rules"
VARS = default_vars(["198.18.0.0/24"])

# Every keyword of the subset (docs/rules.md); the sample file must use each one.
_SUBSET = """
    msg sid rev gid classtype priority reference metadata flow flags dsize content nocase
    depth offset distance within fast_pattern rawbytes pcre threshold detection_filter
    pkt_data http.method http.uri http.uri.raw http.host http.host.raw http.user_agent
    http.header http.header.raw tls.sni ja3.hash ja3.string ja4.hash dns.query http_method
    http_uri http_raw_uri http_host http_raw_host http_user_agent http_header http_raw_header
    tls_sni ja3_hash dns_query
    """
SUBSET = tuple(_SUBSET.split())


def load_text(tmp_path: Path, text: str):
    p = tmp_path / "t.rules"
    p.write_text(text)
    return load_files([p], VARS)


def test_sample_file_loads_with_every_keyword_and_skips_with_reasons() -> None:
    rs = load_files([SAMPLE], VARS)
    rep = rs.report
    assert rep.error_count == 0, rep.errors
    assert rep.loaded + rep.skipped_total >= 300
    assert rep.loaded >= 300
    assert rep.disabled == 3
    text = SAMPLE.read_text()
    used = set(re.findall(r"[;(]\s*([a-z][a-z0-9_.]*)\s*[:;]", text))
    assert set(SUBSET) - used == set()
    # each skipped kind shows up with its reason
    reasons = " | ".join(rep.skipped)
    for why in (
        "unsupported keyword: flowbits", "unsupported keyword: byte_test",
        "unsupported keyword: file_data", "unsupported keyword: http.cookie",
        "unsupported keyword: isdataat", "unsupported action: reject",
        "unsupported protocol: smb", "pcre needs backtracking (lookahead)",
        "pcre needs backtracking (backreference)", "unknown variable $SMB_SERVERS",
        "flow: only_stream", "buffers of two protocols", "duplicate sid 1:1000804",
        "pcre flag C", "matches every packet",
    ):  # fmt: skip
        assert why in reasons, why
    # the duplicate keeps the higher rev
    dup = [r for r in rs.rules if r.sid == 1000804]
    assert len(dup) == 1 and dup[0].rev == 2


def test_syntax_errors_name_file_and_line() -> None:
    rep = load_files([BAD], VARS).report
    assert rep.loaded == 1
    assert rep.error_count == 16
    lines = [e.split(": ", 1)[0] for e in rep.errors]
    assert lines == [f"{BAD}:{n}" for n in range(3, 19)]
    assert any("depth: expected a number, got 'abc'" in e for e in rep.errors)


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ('alert tcp any any -> any any (msg:"x"; content:"a"; byte_test:1,>,2,0; sid:1;)',
         "unsupported keyword: byte_test"),
        # an unsupported keyword after valid ones: nothing of the rule is loaded
        ('alert http any any -> any any (msg:"x"; http.uri; content:"/a"; bsize:2; sid:1;)',
         "unsupported keyword: bsize"),
        ('alert krb5 any any -> any any (msg:"x"; sid:1;)', "unsupported protocol: krb5"),
        ('rejectboth tcp any any -> any 1 (msg:"x"; flags:S; sid:1;)', "unsupported action"),
        ('alert tcp any any -> any any (msg:"x"; content:"a"; pcre:"/a(?=b)/"; sid:1;)',
         "lookahead"),
        ('alert tcp $NOPE any -> any any (msg:"x"; flags:S; sid:1;)', "unknown variable $NOPE"),
    ],
)  # fmt: skip
def test_outside_the_subset_is_skipped_whole(tmp_path: Path, rule: str, why: str) -> None:
    rs = load_text(tmp_path, rule + "\n")
    assert len(rs) == 0
    assert rs.report.error_count == 0
    assert any(why in k for k in rs.report.skipped), rs.report.skipped


def test_continuation_lines_and_comments(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        "# a comment\n\n"
        'alert tcp any any -> any any (msg:"two lines"; \\\n  content:"x"; sid:5;)\n'
        '# alert tcp any any -> any any (msg:"off"; content:"y"; sid:6;)\n',
    )
    assert [r.sid for r in rs.rules] == [5]
    assert rs.rules[0].source.endswith("t.rules:3")
    assert rs.report.disabled == 1


def test_classtype_gives_severity_and_category(tmp_path: Path) -> None:
    rs = load_text(
        tmp_path,
        'alert tcp any any -> any any (msg:"a"; content:"x"; classtype:trojan-activity; sid:1;)\n'
        'alert tcp any any -> any any (msg:"b"; content:"x"; classtype:misc-activity; sid:2;)\n'
        'alert tcp any any -> any any (msg:"c"; content:"x"; classtype:tcp-connection; sid:3;)\n'
        'alert tcp any any -> any any (msg:"d"; content:"x"; classtype:misc-activity; priority:1; sid:4;)\n',  # noqa: E501
    )
    got = {r.sid: (r.severity, r.category) for r in rs.rules}
    assert got[1] == (1, "A Network Trojan was detected")
    assert got[2] == (3, "Misc activity")
    assert got[3] == (3, "A TCP connection was detected")  # priority 4 is reported as 3
    assert got[4][0] == 1


def test_own_classification_file(tmp_path: Path) -> None:
    cls = tmp_path / "classification.config"
    cls.write_text("config classification: office-policy,Office policy,2\n")
    p = tmp_path / "t.rules"
    p.write_text(
        'alert tcp any any -> any any (msg:"a"; content:"x"; classtype:office-policy; sid:1;)\n'
    )
    rs = load_files([p], VARS, cls)
    assert rs.rules[0].severity == 2
    cls.write_text("config classification: broken\n")
    with pytest.raises(RulesError, match=r"classification.config:1"):
        load_files([p], VARS, cls)


def test_binary_or_unreadable_file_is_refused_whole(tmp_path: Path) -> None:
    b = tmp_path / "b.rules"
    b.write_bytes(b'alert tcp any any -> any any (msg:"x"; sid:1;)\n\x00\x01\x02')
    with pytest.raises(RulesError, match="binary"):
        load_files([b], VARS)
    with pytest.raises(RulesError, match="No such file"):
        load_files([tmp_path / "missing.rules"], VARS)


def test_address_lists() -> None:
    specs = Specs({**VARS, "DMZ": "[203.0.113.0/28,203.0.113.100]"})
    ext = specs.address("$EXTERNAL_NET")
    assert ext is not None
    assert bytes([198, 18, 0, 5]) not in ext and bytes([203, 0, 113, 5]) in ext
    grp = specs.address("[$DMZ,![203.0.113.3,203.0.113.4]]")
    assert grp is not None
    assert [bytes([203, 0, 113, i]) in grp for i in (2, 3, 4, 15, 16, 100)] == [
        True, False, False, True, False, True,
    ]  # fmt: skip
    v6 = specs.address("[2001:db8::/32,!2001:db8::1]")
    assert v6 is not None and bytes.fromhex("20010db8" + "0" * 23 + "2") in v6
    assert bytes.fromhex("20010db8" + "0" * 23 + "1") not in v6
    assert specs.address("any") is None
    for bad in ("[1.2.3.4", "1.2.3.4/33", "!any", "[1.2.3.4,,5.6.7.8]", "10.0.0.9-10.0.0.1"):
        with pytest.raises(SpecError):
            specs.address(bad)
    ports = specs.port("[1:1024,!80,8080]")
    assert ports is not None and 79 in ports and 80 not in ports and 8080 in ports
    assert 1025 not in ports
    for bad in ("70000", "[80", "90:80", "x"):
        with pytest.raises(SpecError):
            specs.port(bad)


def test_variables_refer_to_themselves(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="itself"):
        Specs({"A": "$B", "B": "$A"}).address("$A")


# -- the command ---------------------------------------------------------------------------------


def test_rules_check_reports_counts_and_reasons() -> None:
    res = CliRunner().invoke(main, ["rules", "check", str(SAMPLE)])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    m = re.match(
        r"(\d+) rules in 1 file: (\d+) loaded, (\d+) skipped, 0 with syntax errors; 3 commented out",  # noqa: E501
        first,
    )
    assert m, first
    assert int(m.group(1)) == int(m.group(2)) + int(m.group(3))
    assert "skipped by reason:" in res.output
    assert re.search(r"^\s+2\s+unsupported keyword: flowbits", res.output, re.M)


def test_rules_check_exits_non_zero_on_syntax_errors() -> None:
    res = CliRunner().invoke(main, ["rules", "check", str(SAMPLE), str(BAD)])
    assert res.exit_code == 1
    assert f"{BAD}:4: depth: expected a number, got 'abc'" in res.output
    assert "syntax errors (16):" in res.output


def test_rules_check_refused_file_and_bad_var(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "none.rules")])
    assert res.exit_code == 2 and "error:" in res.output
    res = CliRunner().invoke(main, ["rules", "check", "--var", "HTTP_PORTS=[80", str(SAMPLE)])
    assert res.exit_code == 2 and "HTTP_PORTS" in res.output


def test_rules_are_grouped_by_ip_protocol(tmp_path: Path) -> None:
    """A packet consults only its protocol's prefilter: no rule for UDP, no UDP group."""
    p = tmp_path / "g.rules"
    p.write_text(
        'alert tcp any any -> any any (msg:"t"; content:"zap"; sid:1;)\n'
        'alert tcp any any -> any 81 (msg:"s"; flags:S; sid:2;)\n'
        'alert icmp any any -> any any (msg:"c"; content:"ping"; sid:3;)\n'
        'alert ip any any -> any any (msg:"i"; content:"every"; sid:4;)\n'
        'alert dns any any -> any any (msg:"d"; dns.query; content:"x.test"; sid:5;)\n'
    )
    rs = load_files([p], VARS)

    def sids(hook: str, proto: int) -> list[int]:
        pf = rs.group(hook, proto)
        return [] if pf is None else sorted(r.sid for r in pf.rules)

    assert sids("packet", 6) == [1, 2, 4]
    assert sids("packet", 17) == [4]
    assert sids("packet", 1) == sids("packet", 58) == [3, 4]
    assert sids("packet", 47) == [4]  # any other protocol: the rules for any protocol
    assert rs.group("packet", 47) is rs.group("packet", 17)  # the same rules share one
    assert sids("dns", 17) == sids("dns", 6) == [5]
    assert rs.group("dns", 1) is None and rs.group("http", 6) is None


@pytest.mark.parametrize(
    ("options", "want"),
    [
        ("", "flow"),
        ("threshold:type limit, track by_src, count 1, seconds 60; ", "global"),
        ("detection_filter:track by_src, count 3, seconds 60; ", "global"),
    ],
)
def test_rules_counted_across_flows_keep_replay_in_one_process(
    tmp_path: Path, options: str, want: str
) -> None:
    """threshold and detection_filter count matches across flows: replay --workers must not
    split them (Detector.partition "global"; detection_filter was once left "flow")."""
    from appliance.replay.parallel import split_problems

    from .kit import Rules

    r = Rules(tmp_path, f'alert tcp any any -> any any (msg:"t"; content:"zap"; {options}sid:1;)\n')
    r.run([])
    assert r.harness is not None
    engine = r.harness.engine
    det = next(d for d in engine.detectors if d.name == "rules")
    assert det.partition == want
    problems = split_problems(engine.detectors, r.config)
    assert (want == "global") == any("detector rules" in p for p in problems), problems


PORT_RULES = """\
alert tcp any any -> any 80 (msg:"to 80"; content:"zap80"; sid:1;)
alert tcp any any -> any [8080,8000] (msg:"to 8080/8000"; content:"zap8k"; sid:2;)
alert tcp any any -> any any (msg:"any port"; content:"zapany"; sid:3;)
alert tcp any 80 -> any any (msg:"from 80"; content:"zapfrom"; sid:4;)
alert tcp any any <> any 81 (msg:"either way 81"; content:"zapboth"; sid:5;)
alert tcp any any -> any 1024: (msg:"wide range"; content:"zapwide"; sid:6;)
alert tcp any any -> any !80 (msg:"not 80"; content:"zapnot"; sid:7;)
alert tcp any any -> any 80 (msg:"syn to 80"; flags:S; sid:8;)
alert tcp any [1000:3000] -> any 25 (msg:"wide source, to 25"; content:"zap25"; sid:9;)
"""


def test_rules_are_grouped_by_port(tmp_path: Path) -> None:
    """Suricata-style port groups: a rule with a port list is in each listed port's group, a
    rule for any (or too wide a list of) ports in the "any" group; a packet consults the "any"
    group and its two ports' groups only, so a packet to 443 never meets the rules for 80."""
    rs = load_text(tmp_path, PORT_RULES)
    pg = rs.group("packet", 6)
    assert pg is not None

    def sids(sport: int, dport: int) -> list[int]:
        return sorted({r.sid for pf in pg.lookup(sport, dport) for r in pf.rules})

    anywhere = [3, 6, 7]
    assert sids(50000, 443) == anywhere
    assert sids(50000, 80) == sorted([*anywhere, 1, 8])
    assert sids(50000, 8080) == sids(50000, 8000) == sorted([*anywhere, 2])
    assert sids(80, 50000) == sorted([*anywhere, 4])  # the server's answer: "from 80" rules
    assert sids(50000, 81) == sids(81, 50000) == sorted([*anywhere, 5])
    assert sids(2000, 25) == sorted([*anywhere, 9])  # wide source list: under its dest port
    # same rules, one group; merged with the "any" group: one prefilter, one automaton pass
    assert pg.lookup(50000, 8080) == pg.lookup(50000, 8000)
    assert len(pg.lookup(50000, 80)) == len(pg.lookup(50000, 8080)) == 1
    assert len(pg.lookup(80, 81)) == 2  # both ports grouped: the source port's own group too
    assert rs.group("packet", 17) is None


def test_rules_are_grouped_by_flow_direction(tmp_path: Path) -> None:
    """As Suricata's toserver / toclient groups: a packet from the server never meets the
    flow:to_server rules, one from the client never the flow:to_client ones."""
    rs = load_text(
        tmp_path,
        'alert tcp any any -> any any (msg:"c"; flow:to_server; content:"zapc"; sid:1;)\n'
        'alert tcp any any -> any any (msg:"s"; flow:established,to_client; content:"zaps"; '
        "sid:2;)\n"
        'alert tcp any any -> any any (msg:"b"; flow:established; content:"zapb"; sid:3;)\n'
        'alert tcp any 80 -> any any (msg:"s80"; flow:from_server; content:"zap8"; sid:4;)\n',
    )
    pg = rs.group("packet", 6)
    assert pg is not None

    def sids(sport: int, dport: int, from_client: bool) -> list[int]:
        return sorted({r.sid for pf in pg.lookup(sport, dport, from_client) for r in pf.rules})

    assert sids(50000, 80, True) == [1, 3]
    assert sids(80, 50000, False) == [2, 3, 4]
    assert sids(443, 50000, False) == [2, 3]


@pytest.mark.parametrize("seed", range(3))
def test_port_groups_hold_every_rule_whose_header_can_match(tmp_path: Path, seed: int) -> None:
    """For random port lists (single, lists, ranges, negations, variables, both directions),
    flow directions and random packets from either side, the groups a packet consults hold
    every rule whose header and flow direction match it: grouping only leaves out rules that
    cannot match."""
    import random
    from types import SimpleNamespace

    rng = random.Random(seed)
    specs = ["any", "80", "443", "[80,443,8080]", "1024:", ":1023", "!80", "[!80,!443]",
             "8000:8010", "$HTTP_PORTS", "[25,110:111]", "53"]  # fmt: skip
    lines = []
    for sid in range(1, 201):
        arrow = rng.choice(["->", "->", "<>"])
        flow = rng.choice(["", "", "flow:to_server; ", "flow:to_client; "])
        lines.append(
            f"alert tcp any {rng.choice(specs)} {arrow} any {rng.choice(specs)} "
            f'(msg:"r"; {flow}content:"z{sid}"; sid:{sid};)'
        )
    rs = load_text(tmp_path, "\n".join(lines) + "\n")
    pg = rs.group("packet", 6)
    assert pg is not None
    ports = [25, 53, 80, 81, 110, 443, 1023, 1024, 8005, 8080, 40000, 65535]
    flow = SimpleNamespace(proto=6, established=True, pkts_c=1, pkts_s=1)
    for _ in range(400):
        pkt = SimpleNamespace(proto=6, src=b"\xc6\x12\x00\x0b", dst=b"\xcb\x00\x71\x0a",
                              sport=rng.choice(ports), dport=rng.choice(ports))  # fmt: skip
        side = rng.random() < 0.5
        consulted = {r.sid for pf in pg.lookup(pkt.sport, pkt.dport, side) for r in pf.rules}
        can = {
            r.sid for r in rs.rules if r.header_matches(pkt) and r.state_matches(pkt, flow, side)
        }
        assert can <= consulted, (pkt.sport, pkt.dport, side, sorted(can - consulted))


def test_the_largest_port_groups_are_merged_with_the_any_group(tmp_path: Path) -> None:
    """One automaton pass for a packet to one of the MERGED_GROUPS port groups with the most
    patterns (its rules and the "any" group's in one prefilter); two for the other groups; a
    group of rules without content is never merged (it makes no pass)."""
    from appliance.detect.rules.prefilter import MERGED_GROUPS

    ports = list(range(7001, 7001 + MERGED_GROUPS + 2))
    lines = ['alert tcp any any -> any any (msg:"a"; content:"zapany"; sid:1;)']
    sid = 10
    for n, port in enumerate(ports):
        for _ in range(len(ports) - n):  # 7001 has the most rules, the last port the fewest
            sid += 1
            lines.append(f'alert tcp any any -> any {port} (msg:"p"; content:"z{sid}"; sid:{sid};)')
    lines.append('alert tcp any any -> any 6000 (msg:"f"; flags:S; sid:2;)')
    rs = load_text(tmp_path, "\n".join(lines) + "\n")
    pg = rs.group("packet", 6)
    assert pg is not None
    passes = [len(pg.lookup(50000, port)) for port in ports]
    assert passes == [1] * MERGED_GROUPS + [2, 2]
    assert len(pg.lookup(50000, 6000)) == 2 and len(pg.lookup(50000, 443)) == 1
    for port in ports:  # merged or not, the same rules are consulted
        got = {r.sid for pf in pg.lookup(50000, port) for r in pf.rules}
        assert got == {1} | {r.sid for r in rs.rules if r.dport is not None and port in r.dport}
