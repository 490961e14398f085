"""Ruleset text and the Firewall's use of nft/iptables (with a recording fake runner)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.inline.firewall import (
    CHAIN,
    JUMPS,
    MARK_BLOCK,
    MARK_MASK,
    MARK_PASS,
    Firewall,
    FirewallError,
    RulesetSpec,
    parse_set_elements,
    render_iptables,
    render_iptables_removal,
    render_iptables_rules,
    render_nft,
)
from tests.helpers import make_config

LAB = {"bridge": "br0", "uplink": "uplink", "office": "office"}


def spec(**kw) -> RulesetSpec:
    base = dict(
        bridge="br0",
        uplink="uplink",
        office="office",
        queue_first=0,
        queue_last=0,
        head_packets=8,
        block_mode=False,
        native_queue=False,
    )
    base.update(kw)
    return RulesetSpec(**base)


def test_marks_are_distinct_bits_inside_the_mask() -> None:
    assert MARK_PASS & MARK_MASK == MARK_PASS
    assert MARK_BLOCK & MARK_MASK == MARK_BLOCK
    assert MARK_PASS & MARK_BLOCK == 0


def test_spec_from_config_takes_queue_range_heads_and_deep_ports() -> None:
    cfg = make_config(inline={**LAB, "queue": 3, "workers": 4, "head_packets": 6, "mode": "block"})
    s = RulesetSpec.from_config(cfg, native_queue=False, deep_ports={21: 30, 23: 30, 443: 2})
    assert (s.queue_first, s.queue_last) == (3, 6)
    assert s.block_mode and s.head_packets == 6
    # A "deep" port asking for fewer packets than every flow gets anyway adds no rule.
    assert s.deep == ((21, 30), (23, 30))


@pytest.mark.parametrize(
    "field,value", [("bridge", "br 0"), ("office", ""), ("uplink", "x" * 16), ("bridge", 'a"b')]
)
def test_bad_interface_names_are_refused_naming_the_key(field: str, value: str) -> None:
    with pytest.raises(FirewallError, match=f"inline.{field}"):
        spec(**{field: value})


def test_monitor_mode_table_has_no_drop_rule() -> None:
    text = render_nft(spec())
    assert "drop" not in text
    assert "chain block" not in text
    # The verdict chain saves the daemon's packet-mark verdict into the connection.
    assert "ct mark set ct mark & 0xf3ffffff | 0x04000000" in text
    assert "ct mark set ct mark & 0xf3ffffff | 0x08000000" in text
    assert "type filter hook forward priority 10;" in text
    # Fallback mode: no nft queue statement at all.
    assert "queue" not in text


def test_block_mode_table_drops_sets_and_blocked_connections_of_bridged_traffic_only() -> None:
    text = render_nft(spec(block_mode=True))
    block = text.split("chain block {", 1)[1].split("}", 1)[0]
    assert "priority -10;" in block
    assert block.index('iifname != "br0" return') < block.index("drop")
    assert 'oifname != "br0" return' in block
    for rule in (
        "ct mark & 0x0c000000 == 0x08000000 counter drop",
        "ip saddr @block4 counter drop",
        "ip daddr @block4 counter drop",
        "ip6 saddr @block6 counter drop",
        "ip6 daddr @block6 counter drop",
    ):
        assert rule in block
    verdict = text.split("chain verdict {", 1)[1].split("}", 1)[0]
    assert verdict.strip().endswith("ct mark & 0x0c000000 == 0x08000000 counter drop")
    # Every packet without a fresh verdict mark (all of a judged flow's) leaves at rule one.
    first = verdict.split("policy accept;\n", 1)[1].splitlines()[0].strip()
    assert first == "meta mark & 0x0c000000 == 0x00000000 return"


def test_table_script_replaces_atomically_and_touches_only_our_table() -> None:
    text = render_nft(spec(block_mode=True, native_queue=True))
    lines = text.splitlines()
    assert lines[:3] == [
        "add table inet watchpost",
        "delete table inet watchpost",
        "table inet watchpost {",
    ]
    for line in lines:
        if line.startswith(("add ", "delete ", "table ")):
            assert "inet watchpost" in line


def test_native_queue_chain_queues_dns_deep_ports_and_heads_with_bypass() -> None:
    text = render_nft(spec(native_queue=True, queue_first=2, queue_last=3, deep=((21, 40),)))
    chain = text.split("chain heads {", 1)[1].split("}\n\tchain", 1)[0]
    queue_lines = [ln.strip() for ln in chain.splitlines() if " queue " in ln]
    assert all(ln.endswith("counter queue flags bypass to 2-3") for ln in queue_lines)
    assert "meta l4proto { tcp, udp } th dport 53 counter queue flags bypass to 2-3" in chain
    assert "meta l4proto { tcp, udp } th sport 53 counter queue flags bypass to 2-3" in chain
    assert "tcp dport { 21 } ct packets <= 40 counter" in chain
    assert "ct packets <= 8 counter queue flags bypass to 2-3" in chain
    # Flows with a verdict leave at the first rule; broadcast and multicast are skipped before
    # anything is queued.
    first = chain.split("policy accept;\n", 1)[1].splitlines()[0].strip()
    assert first == "ct mark & 0x0c000000 != 0x00000000 return"
    assert chain.index("meta pkttype != host return") < chain.index("queue flags")


def test_paused_queueing_has_no_queue_rule_but_keeps_blocking() -> None:
    text = render_nft(spec(native_queue=True, block_mode=True, queueing=False))
    assert "chain heads" not in text and "queue flags" not in text
    assert "ip daddr @block4 counter drop" in text


def test_carried_over_blocks_keep_their_family_and_timeout() -> None:
    s = spec(block_mode=True, blocked=(("203.0.113.66", 120), ("2001:db8::/64", 0)))
    text = render_nft(s)
    b4 = text.split("set block4 {", 1)[1].split("\t}\n", 1)[0]
    b6 = text.split("set block6 {", 1)[1].split("\t}\n", 1)[0]
    assert "elements = { 203.0.113.66 timeout 120s }" in b4
    assert "elements = { 2001:db8::/64 }" in b6


def test_iptables_rules_queue_both_directions_between_the_two_ports() -> None:
    rules = render_iptables_rules(spec(head_packets=5))
    # Broadcast and multicast are never queued: the bridge clones them (local delivery plus
    # forwarding), and the kernel drops a queued clone whose new connection is shared.
    assert rules[0] == f"-A {CHAIN} -m pkttype ! --pkt-type unicast -j RETURN"
    # Flows with a verdict never enter the chain: the jumps test the connmark (and stealth
    # probes, which have no connection).
    assert not any("connmark" in r for r in rules)
    assert JUMPS[0] == f"-A FORWARD -m connmark --mark 0x0/0xc000000 -j {CHAIN}"
    assert "--ctstate INVALID" in JUMPS[1] and "--tcp-flags SYN,RST,ACK NONE" in JUMPS[1]
    queued = [r for r in rules if "NFQUEUE" in r]
    assert all(r.endswith("-j NFQUEUE --queue-num 0 --queue-bypass") for r in queued)
    out = [r for r in queued if "--physdev-in office --physdev-out uplink" in r]
    back = [r for r in queued if "--physdev-in uplink --physdev-out office" in r]
    assert len(out) == len(back) == len(queued) // 2 == 4
    assert any("-p udp -m multiport --ports 53" in r for r in out)
    # FIN/NULL/Xmas probes have no connection (conntrack INVALID): queued at a bounded rate.
    assert any(
        "--tcp-flags SYN,ACK,RST NONE -m conntrack --ctstate INVALID -m limit" in r for r in out
    )
    assert any("-p tcp -m multiport --ports 53" in r for r in out)
    assert any(
        "-m connbytes --connbytes 0:5 --connbytes-dir both --connbytes-mode packets" in r
        for r in out
    )


def test_iptables_balance_and_deep_ports_in_chunks_of_fifteen() -> None:
    deep = tuple((p, 50) for p in range(1000, 1020))
    rules = render_iptables_rules(spec(queue_first=4, queue_last=7, deep=deep))
    assert all("--queue-balance 4:7 --queue-bypass" in r for r in rules if "NFQUEUE" in r)
    deep_rules = [r for r in rules if "--connbytes 0:50 " in r]
    assert len(deep_rules) == 4  # 20 ports → 15 + 5, in each direction
    ports = [r.split("--ports ")[1].split()[0].split(",") for r in deep_rules]
    assert sorted(len(p) for p in ports) == [5, 5, 15, 15]


def test_iptables_script_recreates_chain_and_replaces_stale_jumps() -> None:
    stale = ["-A FORWARD -j WATCHPOST", "-A FORWARD -i eth9 -j WATCHPOST"]
    script = render_iptables(spec(), stale).splitlines()
    assert script[0] == "*filter" and script[-1] == "COMMIT"
    assert script[1] == f":{CHAIN} - [0:0]"  # declaring the chain flushes it
    assert "-D FORWARD -j WATCHPOST" in script
    assert "-D FORWARD -i eth9 -j WATCHPOST" in script
    assert [line for line in script if line.startswith("-A FORWARD")] == list(JUMPS)
    assert script.index("-D FORWARD -i eth9 -j WATCHPOST") < script.index(JUMPS[0])


def test_iptables_removal_script() -> None:
    assert render_iptables_removal([], chain_exists=False) is None
    script = render_iptables_removal([JUMPS[0]], chain_exists=True)
    assert script == (f"*filter\n-D{JUMPS[0][2:]}\n-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n")


def test_parse_set_elements_json() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {
                "set": {
                    "name": "block4",
                    "elem": [
                        {"elem": {"val": "203.0.113.66", "timeout": 3600, "expires": 3590}},
                        {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}}},
                        "192.0.2.7",
                        {"prefix": {"addr": "192.0.2.128", "len": 25}},
                    ],
                }
            },
        ]
    }
    assert parse_set_elements(json.dumps(doc)) == {
        "203.0.113.66": 3590.0,
        "198.51.100.0/24": None,
        "192.0.2.7": None,
        "192.0.2.128/25": None,
    }
    assert parse_set_elements("not json") == {}


# -- the Firewall against a fake nft/iptables ----------------------------------------------------


class FakeTools:
    """Records commands; answers like nft/iptables on a kernel without nft's queue expression."""

    def __init__(self, native: bool = False) -> None:
        self.native = native
        self.calls: list[tuple[list[str], str | None]] = []
        self.sets: dict[str, dict] = {"block4": {}, "block6": {}}
        self.table = False

    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, stdin))
        out, rc, err = "", 0, ""
        if argv[:2] == ["nft", "--check"]:
            rc = 0 if self.native else 1
            err = "" if self.native else "Error: Could not process rule: No such file or directory"
        elif argv[:3] == ["nft", "-j", "list"] and argv[3] == "set":
            if self.table:
                elems = [
                    {"elem": {"val": a, "timeout": 100, "expires": 50}} if t else a
                    for a, t in self.sets[argv[-1]].items()
                ]
                out = json.dumps({"nftables": [{"set": {"name": argv[-1], "elem": elems}}]})
            else:
                rc = 1
        elif argv[:2] == ["nft", "-f"]:
            if "table inet watchpost {" in (stdin or ""):
                self.table = True
            elif (stdin or "").startswith("delete table inet watchpost"):
                self.table = False
        elif argv[:2] == ["nft", "list"] or argv[:3] == ["nft", "-j", "list"]:
            rc = 0 if self.table and "watchpost" in argv else 1
        elif argv[0] in ("iptables", "ip6tables") and "-S" in argv:
            rc = 1 if argv[-1] == CHAIN else 0
            out = "-P FORWARD ACCEPT\n"
        return subprocess.CompletedProcess(argv, rc, out, err)

    def scripts(self, tool: str) -> list[str]:
        return [stdin or "" for argv, stdin in self.calls if argv[0] == tool and stdin]


def fw(tools: FakeTools, tmp_path: Path, **inline) -> Firewall:
    sysctl = tmp_path / "sys"
    for key in ("net/netfilter/nf_conntrack_acct", "net/bridge/bridge-nf-call-iptables",
                "net/bridge/bridge-nf-call-ip6tables"):  # fmt: skip
        (sysctl / key).parent.mkdir(parents=True, exist_ok=True)
        (sysctl / key).write_text("0\n")
    cfg = make_config(inline={**LAB, **inline})
    return Firewall(cfg, runner=tools, sysctl_root=sysctl)


def test_apply_in_fallback_mode_puts_table_first_then_queue_rules(tmp_path: Path) -> None:
    tools = FakeTools(native=False)
    f = fw(tools, tmp_path)
    f.apply()
    assert f.applied
    writes = [argv[0] for argv, stdin in tools.calls if stdin and "--check" not in argv]
    assert writes.index("nft") < writes.index("iptables-restore")
    assert len(tools.scripts("iptables-restore")) == 1
    assert len(tools.scripts("ip6tables-restore")) == 1
    assert "NFQUEUE" in tools.scripts("ip6tables-restore")[0]
    # The kernel settings the ruleset needs were switched on.
    assert (tmp_path / "sys/net/netfilter/nf_conntrack_acct").read_text() == "1"
    assert (tmp_path / "sys/net/bridge/bridge-nf-call-iptables").read_text() == "1"


def test_apply_with_native_queue_uses_no_iptables(tmp_path: Path) -> None:
    tools = FakeTools(native=True)
    fw(tools, tmp_path).apply()
    assert not tools.scripts("iptables-restore")
    table = next(s for s in tools.scripts("nft") if "table inet watchpost {" in s)
    assert "queue flags bypass to 0" in table


def test_apply_with_queueing_paused_removes_the_iptables_chain(tmp_path: Path) -> None:
    tools = FakeTools(native=False)
    f = fw(tools, tmp_path)
    f.apply(queueing=False)
    assert not tools.scripts("iptables-restore")
    assert any(argv[:2] == ["iptables", "-w"] for argv, _ in tools.calls)  # looked for ours


def test_probe_uses_check_mode_only_once(tmp_path: Path) -> None:
    tools = FakeTools(native=False)
    f = fw(tools, tmp_path)
    assert f.native_queue() is False
    assert f.native_queue() is False
    probes = [c for c in tools.calls if c[0][:2] == ["nft", "--check"]]
    assert len(probes) == 1
    assert "queue flags bypass" in (probes[0][1] or "")


def test_block_respects_never_block_and_wider_blocks(tmp_path: Path) -> None:
    tools = FakeTools()
    f = fw(tools, tmp_path, never_block=["198.18.0.0/24", "2001:db8:1::1"])
    f.apply()
    n = len(tools.calls)
    assert f.block("198.18.0.11", 60) is False
    assert f.block("198.18.0.0/16", 60) is False  # would cover allow-listed addresses
    assert f.block("2001:db8:1::/64", 60) is False
    assert not any("add element" in (stdin or "") for _argv, stdin in tools.calls[n:]), (
        "nothing may reach the kernel for a never-block address"
    )
    assert f.block("203.0.113.66", 60) is True
    script = tools.scripts("nft")[-1]
    assert (
        script.splitlines()[-1] == "add element inet watchpost block4 { 203.0.113.66 timeout 60s }"
    )
    tools.sets["block4"]["203.0.113.0/24"] = 0
    before = len(tools.scripts("nft"))
    assert f.block("203.0.113.99", 60) is True  # covered already: no kernel change
    assert len(tools.scripts("nft")) == before


def test_block_of_a_wider_network_replaces_narrower_elements(tmp_path: Path) -> None:
    tools = FakeTools()
    f = fw(tools, tmp_path)
    f.apply()
    tools.sets["block4"]["198.51.100.7"] = 10
    assert f.block("198.51.100.0/24", 0)
    lines = tools.scripts("nft")[-1].splitlines()
    assert lines[0] == "delete element inet watchpost block4 { 198.51.100.7 }"
    assert lines[-1] == "add element inet watchpost block4 { 198.51.100.0/24 }"


def test_bad_addresses_are_refused(tmp_path: Path) -> None:
    f = fw(FakeTools(), tmp_path)
    with pytest.raises(FirewallError, match="not an IP address"):
        f.block("evil.example.net", 60)


def test_remove_with_nothing_there_does_nothing(tmp_path: Path) -> None:
    tools = FakeTools()
    f = fw(tools, tmp_path)
    f.remove()
    assert not any(stdin for _argv, stdin in tools.calls)


def test_a_failing_nft_names_the_step_and_the_error(tmp_path: Path) -> None:
    def runner(argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if argv[:2] == ["nft", "-f"]:
            return subprocess.CompletedProcess(argv, 1, "", "Error: Operation not permitted\n")
        return FakeTools()(argv, stdin)

    f = fw(FakeTools(), tmp_path)
    f.runner = runner
    with pytest.raises(FirewallError, match="apply the nftables ruleset: nft: Error: Operation"):
        f.apply()
    assert not f.applied


def test_apply_carries_blocks_but_not_never_block_or_nested_ones(tmp_path: Path) -> None:
    tools = FakeTools()
    f = fw(tools, tmp_path, never_block=["198.18.0.0/24"])
    f.apply(blocked={"203.0.113.66": 100.0, "203.0.113.0/24": None, "198.18.0.7": 5.0,
                     "2001:db8::1": 12.5, "junk": 1.0})  # fmt: skip
    table = next(s for s in tools.scripts("nft") if "table inet watchpost {" in s)
    b4 = table.split("set block4 {", 1)[1].split("\t}\n", 1)[0]
    b6 = table.split("set block6 {", 1)[1].split("\t}\n", 1)[0]
    assert "elements = { 203.0.113.0/24 }" in b4  # the wider block covers the single one
    assert "198.18.0.7" not in table
    assert "elements = { 2001:db8::1 timeout 12s }" in b6


def test_deep_flows_are_queued_to_the_engines_longest_head_on_both_paths() -> None:
    """Port 0 of `Engine.deep_ports` is the bound for flows the engine marks DEEP (found by
    content): queued before the "has a verdict" return, saved like PASS/BLOCK; none without."""
    s = RulesetSpec.from_config(
        make_config(inline=LAB), native_queue=True, deep_ports={0: 60, 21: 40}
    )
    assert (s.deep_any, s.deep) == (60, ((21, 40),))
    text = render_nft(s)
    chain = text.split("chain heads {", 1)[1].split("}\n\tchain", 1)[0]
    deep = "ct mark & 0x0c000000 == 0x0c000000 ct packets <= 60 counter queue"
    assert deep in chain
    assert chain.index(deep) < chain.index("ct mark & 0x0c000000 != 0x00000000 return")
    assert "meta mark & 0x0c000000 == 0x0c000000 ct mark set" in text.split("chain verdict", 1)[1]
    rules = render_iptables_rules(s)
    assert rules[1] == (
        f"-A {CHAIN} -m connmark --mark 0xc000000/0xc000000 -m connbytes --connbytes 0:60 "
        "--connbytes-dir both --connbytes-mode packets -j NFQUEUE --queue-num 0 --queue-bypass"
    )
    assert rules[2] == f"-A {CHAIN} -m connmark ! --mark 0x0/0xc000000 -j RETURN"
    # A bound below inline.head_packets still queues the whole ordinary head of a DEEP flow.
    low = RulesetSpec.from_config(make_config(inline=LAB), native_queue=False, deep_ports={0: 3})
    assert low.deep_any == 8
    none = RulesetSpec.from_config(make_config(inline=LAB), native_queue=True, deep_ports={})
    assert none.deep_any == 0 and "0x0c000000 ct packets" not in render_nft(none)
