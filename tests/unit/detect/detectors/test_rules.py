"""rules detector: rule matches become EVE alerts with the rule's gid/sid/rev/msg/classtype;
drop rules block only in block mode (and never a never_block address); replay says what the
bridge would; bad options are refused naming their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError
from appliance.packet.flows import VERDICT_BLOCK
from tests.helpers import Harness, alert_key, make_config, replay_alerts, write_pcap
from tests.unit.detect.rules.kit import (
    ATK,
    EVIL,
    PC1,
    PC2,
    Rules,
    dns_query,
    http_request,
    syn,
    tcp_flow,
)

SAMPLE = Path(__file__).parents[3] / "data" / "rules" / "watchpost-sample.rules"

RULE = (
    'alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"ET TEST stage2 download"; '
    'flow:established,to_server; http.method; content:"GET"; http.uri; content:"/stage2.ps1"; '
    "reference:url,www.example.com/a; metadata:signature_severity Major; "
    "classtype:trojan-activity; gid:1; sid:2000001; rev:4;)\n"
)


def test_alert_carries_the_rule(tmp_path: Path) -> None:
    r = Rules(tmp_path, RULE)
    (a,) = r.run(http_request("/files/stage2.ps1?k=secret", host="dl.example"))
    assert a["alert"] == {
        "action": "allowed",
        "gid": 1,
        "signature_id": 2000001,
        "rev": 4,
        "signature": "ET TEST stage2 download",
        "category": "A Network Trojan was detected",
        "severity": 1,
    }
    assert a["watchpost"]["detector"] == "rules"
    assert a["http"]["hostname"] == "dl.example"
    assert a["http"]["url"] == "/files/stage2.ps1?k="  # query values never leave
    d = a["watchpost"]["details"]
    assert d["rule"].endswith(".rules:1")
    assert d["classtype"] == "trojan-activity"
    assert d["references"] == ["url,www.example.com/a"]
    assert d["metadata"] == ["signature_severity Major"]
    assert (a["src_ip"], a["dest_port"]) == (PC1, 80)


def test_dns_and_tls_alerts_carry_their_records(tmp_path: Path) -> None:
    from bench.engine import tls_client_hello

    r = Rules(
        tmp_path,
        'alert dns any any -> any any (msg:"q"; dns.query; content:"wp-c2.example"; sid:1;)\n'
        'alert tls any any -> any any (msg:"s"; tls.sni; content:"wp-c2.example"; sid:2;)\n',
    )
    got = r.run(dns_query("wp-c2.example") + tcp_flow(tls_client_hello("wp-c2.example"), dport=443))
    by = {a["alert"]["signature_id"]: a for a in got}
    assert by[1]["dns"]["rrname"] == "wp-c2.example"
    assert by[2]["tls"]["sni"] == "wp-c2.example"
    # a DNS answer is not a query: dns.query looks at queries only
    assert next(a for a in got if a["alert"]["signature_id"] == 1)["dns"]["type"] == "query"


DROP = f'drop tcp any any -> {EVIL} 31337 (msg:"drop it"; flags:S; sid:3;)\n'


def test_drop_rule_blocks_only_in_block_mode(tmp_path: Path) -> None:
    mon = Rules(tmp_path, DROP)
    (a,) = mon.run(syn(src=PC1, dst=EVIL, dport=31337))
    assert a["alert"]["action"] == "allowed"
    assert mon.harness is not None and VERDICT_BLOCK not in mon.harness.verdicts

    blk = Rules(tmp_path, DROP, mode="block")
    blocked: list[tuple[str, int]] = []
    h = Harness(blk.config)
    h.engine.blocker = type("B", (), {"block": lambda self, a, t: blocked.append((a, t))})()
    verdicts = h.feed(syn(src=PC1, dst=EVIL, dport=31337))
    h.finish()
    assert verdicts == [VERDICT_BLOCK]
    assert blocked == [(EVIL, 3600)]
    assert h.by_detector("rules")[0]["alert"]["action"] == "blocked"


def test_drop_rule_respects_never_block(tmp_path: Path) -> None:
    p = tmp_path / "d.rules"
    p.write_text(DROP)
    cfg = make_config(
        inline={"mode": "block", "never_block": [f"{EVIL}/32"]},
        detect={"rules": {"paths": [str(p)]}},
    )
    h = Harness(cfg)
    verdicts = h.feed(syn(src=PC1, dst=EVIL, dport=31337))
    h.finish()
    assert VERDICT_BLOCK not in verdicts
    assert h.by_detector("rules")[0]["alert"]["action"] == "allowed"


def test_drop_rule_never_blocks_an_office_to_office_flow(tmp_path: Path) -> None:
    r = Rules(tmp_path, 'drop tcp any any -> any 445 (msg:"smb"; flags:S; sid:4;)\n', mode="block")
    (a,) = r.run(syn(src=PC1, dst=PC2, dport=445))
    assert a["alert"]["action"] == "allowed"


def test_packets_the_bridge_would_not_queue_are_not_inspected(tmp_path: Path) -> None:
    r = Rules(tmp_path, 'alert tcp any any -> any 7000 (msg:"x"; content:"SECOND"; sid:1;)\n')
    flow = tcp_flow(b"FIRST")
    later = flow[-1].copy()
    later.payload.load = b"SECOND"  # after the first client payload the flow is judged
    assert r.sids([*flow, later]) == []
    assert r.sids(tcp_flow(b"SECOND")) == [1]


def test_replay_gives_the_same_alerts(tmp_path: Path) -> None:
    r = Rules(tmp_path, RULE + DROP)
    pkts = http_request("/stage2.ps1", host="dl.example") + syn(src=ATK, dst=EVIL, dport=31337)
    inline = r.run(pkts)
    pcap = write_pcap(pkts, tmp_path / "t.pcap")
    replayed = replay_alerts(pcap, "rules", r.config)
    assert sorted(alert_key(a) for a in replayed) == sorted(alert_key(a) for a in inline)
    assert len(inline) == 2


def _sid(msg: str) -> int:
    line = next(ln for ln in SAMPLE.read_text().splitlines() if f'msg:"{msg}"' in ln)
    return int(line.split("sid:")[1].split(";")[0])


def test_sample_rules_fire_on_office_traffic() -> None:
    cfg = make_config(detect={"rules": {"paths": [str(SAMPLE)]}})
    h = Harness(cfg)
    h.feed(
        http_request("/api", ua="sqlmap/1.8#stable", host="office.example", src=ATK, dst=PC2)
        + http_request("/x", ua="SQLMAP/1.8", sport=40001)  # from the office, any case
        + dns_query("wp-beacon-host.test")
        + dns_query("wp-beacon-host.example", sport=40054)  # the rule wants .test
        + [p for i in range(5) for p in syn(src=ATK, dst=PC2, dport=23, sport=51000 + i)]
    )
    h.finish()
    assert not h.engine.stats.hook_errors
    assert set(h.sids("rules")) == {
        _sid("WP SAMPLE sqlmap user agent"),
        _sid("WP FAMILY UA sqlmap"),
        _sid("WP FAMILY DNS wp-beacon-host.test lookup (legacy)"),
        _sid("WP SAMPLE inbound telnet attempt"),
        _sid("WP FAMILY inbound Telnet connection attempt"),
    }


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        ({"paths": ["/nonexistent/x.rules"]}, "detect.rules.paths"),
        ({"vars": ["HTTP_PORTS"]}, "detect.rules.vars"),
        ({"vars": ["HTTP_PORTS=[80"]}, "detect.rules.vars"),
        ({"classification": "/nonexistent/classification.config"}, "detect.rules.classification"),
    ],
)
def test_bad_options_are_refused_naming_the_key(opts: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(detect={"rules": opts})
    assert str(e.value).startswith(key)
