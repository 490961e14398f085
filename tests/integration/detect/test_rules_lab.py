"""rules in the lab, monitor mode: real dig, curl and curl over TLS (openssl s_server) through
the bridge raise the rules' alerts inline (gid/sid/rev/msg from the rule), traffic the rules do
not name raises none, and `watchpost replay` of the uplink capture gives the same alerts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import RESOLVER, capture, dig_batch, python, sids, start_watch
from .test_intel_lab import curl, tls_server

pytestmark = pytest.mark.root

PC1, PC2 = "198.18.0.11", "198.18.0.12"
WEB, WEB2 = "203.0.113.10", "203.0.113.11"
RULES = """\
alert dns $HOME_NET any -> any any (msg:"LAB dns.query wp-rule-c2"; dns.query; \\
    content:"wp-rule-c2.example"; nocase; classtype:domain-c2; sid:4000001; rev:2;)
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"LAB UA and URI"; \\
    flow:established,to_server; http.user_agent; content:"wp-rule-agent/"; http.uri; \\
    content:"/stage2"; classtype:trojan-activity; sid:4000002; rev:1;)
alert tls $HOME_NET any -> $EXTERNAL_NET 443 (msg:"LAB tls.sni"; \\
    flow:established,to_server; tls.sni; content:"wp-rule-tls.example"; \\
    classtype:command-and-control; sid:4000003; rev:1;)
alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"LAB payload pcre"; \\
    flow:established,to_server; content:"GET "; depth:4; \\
    pcre:"/^GET \\/stage2\\?id=\\d{4}/"; classtype:bad-unknown; sid:4000004; rev:1;)
alert udp any any -> any 9999 (msg:"LAB catastrophic pcre"; content:"aaaa"; \\
    pcre:"/(a+)+$/"; sid:4000005; rev:1;)
alert udp any any -> any 9999 (msg:"LAB every 1000th flood packet"; content:"aaaa!"; \\
    threshold:type threshold, track by_rule, count 1000, seconds 3600; sid:4000006; rev:1;)
"""
# 3 000 datagrams, each a new flow (so each is queued), each a payload on which a backtracking
# engine would need ~2**1400 steps for the rule above.
FLOOD = """
import socket, sys
payload = b"a" * 1400 + b"!"
for i in range(3000):  # a new socket (source port) each time: each datagram is a new flow
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (sys.argv[1], 9999))
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    work = tmp_path_factory.mktemp("rules")
    rules = work / "lab.rules"
    rules.write_text(RULES)
    w = start_watch(lab, work, detect={"rules": {"paths": [str(rules)]}})
    yield w
    w.daemon.stop()


def test_rules_alert_inline_and_in_replay(watch: Watch, serve, tmp_path: Path) -> None:
    serve.http("web", 80)
    tls_server(serve, tmp_path)
    mark = watch.mark()
    with capture(watch, "rules") as pcap:
        dig_batch(watch, "pc1", ["wp-rule-c2.example", "www.example.com"])
        curl(watch, "pc1", "-A", "wp-rule-agent/2.0", f"http://{WEB}/stage2?id=1234")
        curl(watch, "pc2", "-A", "Mozilla/5.0", f"http://{WEB}/stage2")  # no rule: wrong agent
        curl(watch, "pc1", "--resolve", f"wp-rule-tls.example:443:{WEB2}",
             "https://wp-rule-tls.example/")  # fmt: skip
        curl(watch, "pc2", "--resolve", f"www.example.com:443:{WEB}", "https://www.example.com/")
    want = {4000001, 4000002, 4000003, 4000004}
    got = watch.wait(mark, lambda a: want <= sids(a), "rules")
    assert want <= sids(got), watch.daemon.log_tail()
    got = watch.settle(mark, "rules", quiet=3.0)
    t = totals(got, "rules")
    assert t == {
        (4000001, PC1, RESOLVER): 1,
        (4000002, PC1, WEB): 1,
        (4000003, PC1, WEB2): 1,
        (4000004, PC1, WEB): 1,
    }, t
    dns = next(a for a in got if a["alert"]["signature_id"] == 4000001)
    assert (dns["alert"]["gid"], dns["alert"]["rev"], dns["alert"]["severity"]) == (1, 2, 1)
    assert dns["alert"]["signature"] == "LAB dns.query wp-rule-c2"
    assert dns["alert"]["category"] == "Domain Observed Used for C2 Detected"
    assert dns["dns"]["rrname"] == "wp-rule-c2.example"
    tls = next(a for a in got if a["alert"]["signature_id"] == 4000003)
    assert tls["tls"]["sni"] == "wp-rule-tls.example"
    assert all(a["alert"]["action"] == "allowed" for a in got)
    assert totals(watch.replay(pcap), "rules") == t


def test_a_flood_of_catastrophic_pcre_packets_does_not_stall_the_bridge(watch: Watch) -> None:
    ping = watch.lab.popen(
        "pc2", "ping", "-c", "30", "-i", "0.1", "-W", "1", WEB, stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    res = python(watch, "pc1", FLOOD, WEB, timeout=120)
    assert res.returncode == 0, res.stderr
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert watch.daemon.alive()
    # the packets were inspected (the catastrophic rule ran on each), not passed by fail-open
    seen = watch.wait(
        0,
        lambda a: (
            sum(x["watchpost"]["count"] for x in a if x["alert"]["signature_id"] == 4000006) >= 2
        ),
        "rules",
    )
    assert sum(x["watchpost"]["count"] for x in seen if x["alert"]["signature_id"] == 4000006) >= 2
    mark = watch.mark()
    dig_batch(watch, "pc1", ["wp-rule-c2.example"], name="after-flood")
    got = watch.wait(mark, lambda a: 4000001 in sids(a), "rules")
    assert 4000001 in sids(got), watch.daemon.log_tail()
    assert 4000005 not in sids(watch.since(0, "rules"))  # the pattern cannot match "a...a!"
