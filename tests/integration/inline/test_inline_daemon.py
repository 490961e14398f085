"""The daemon inline in the lab: traffic flows, verdicts reach conntrack, crashes and restarts
leave the office online, and a clean stop leaves a plain bridge."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from inlinekit import Daemons, kernel, nothing_of_ours, ping, ruleset, wait_for

from appliance.inline.firewall import JUMPS, MARK_DEEP, MARK_MASK, MARK_PASS
from lab.netns import Lab

pytestmark = pytest.mark.root
HTTP_PORTS = (47080, 47089)  # the client ports of the HTTP connection whose mark is checked


def conntrack(lab: Lab) -> list[str]:
    return lab.exec("app", "cat", "/proc/net/nf_conntrack").stdout.splitlines()


def test_ping_and_tcp_through_the_daemon_with_verdicts_in_conntrack(
    lab: Lab, serve, daemons: Daemons
) -> None:
    serve.http("web")
    d = daemons.start()
    assert ping(lab, "pc1", lab.addr("web")) == 3
    # From its own source ports: earlier tests of the session leave port-80 entries of their
    # own in conntrack (TIME_WAIT, up to 120 s), with other marks (none, when inspection was
    # paused); only this connection's entry is judged here.
    ports = f"{HTTP_PORTS[0]}-{HTTP_PORTS[1]}"
    res = lab.exec("pc1", "curl", "-sS", "-m", "5", "--local-port", ports,
                   "http://www.example.com/inline")  # fmt: skip
    assert "lab page /inline" in res.stdout
    k = kernel(lab)
    # The heads went through the daemon: the kernel handed packets to our queue.
    assert k["queues"][0]["id_sequence"] > 0
    assert k["counters"]["queued"] >= k["queues"][0]["id_sequence"]
    # The HTTP connection was judged after its request: PASS (or DEEP: HTTP is followed for
    # detect.cleartext.http_head_packets, and this one closed first) is in its conntrack mark.
    http = [
        ln
        for ln in conntrack(lab)
        if "src=198.18.0.11" in ln
        and (m := re.search(r" sport=(\d+) dport=80 ", ln))
        and HTTP_PORTS[0] <= int(m.group(1)) <= HTTP_PORTS[1]
    ]
    assert http, "no conntrack entry for the HTTP connection"
    marks = [int(re.search(r" mark=(\d+)", ln).group(1)) for ln in http]
    assert all(m & MARK_MASK in (MARK_PASS, MARK_DEEP) for m in marks)
    assert k["counters"]["verdicts"] >= 1
    # Stealth probes (FIN: no connection, so no ct mark) still take the second jump and reach
    # the daemon.
    before = k["queues"][0]["id_sequence"]
    lab.exec("atk", "hping3", "-q", "-F", "-p", "81", "-c", "5", "-i", "u20000",
             lab.addr("pc2"), check=False, timeout=20)  # fmt: skip
    assert kernel(lab)["queues"][0]["id_sequence"] >= before + 5
    d.stop()
    assert nothing_of_ours(ruleset(lab))
    assert ping(lab, "pc1", lab.addr("web")) == 3


def _normal(text: str | None) -> str:
    """Ruleset text without counters and timers, to compare rulesets."""
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text or "")
    return re.sub(r" expires \S+", "", text)


def test_kill9_loses_no_ping_and_a_restart_replaces_the_leftovers(
    lab: Lab, serve, daemons: Daemons
) -> None:
    serve.http("web")
    web = lab.addr("web")
    d = daemons.start()
    before = ruleset(lab)
    fast = lab.popen(
        "pc1", "ping", "-n", "-q", "-i", "0.002", "-c", "1500", "-W", "1", web,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    daemons.kill9(d)
    out, _ = fast.communicate(timeout=30)
    assert "1500 packets transmitted, 1500 received" in out, out
    # No daemon: the leftover rules bypass (nobody listens), traffic keeps flowing.
    assert ping(lab, "pc1", web, count=5, interval=0.05) == 5
    res = lab.exec("pc1", "curl", "-sS", "-m", "5", "http://www.example.com/after-kill")
    assert "lab page /after-kill" in res.stdout
    left = ruleset(lab)
    assert left["table"] is not None and "-N WATCHPOST" in left["ipt4"]
    # A new daemon replaces what the dead one left: the same ruleset, nothing twice.
    daemons.start()
    after = ruleset(lab)
    for key in ("table", "ipt4", "ipt6"):
        assert _normal(after[key]) == _normal(before[key])
    for text in (after["ipt4"], after["ipt6"]):
        assert text.count("-j WATCHPOST") == len(JUMPS)  # our jumps, each once
        assert text.count("-N WATCHPOST") == 1
    assert after["all"].count("table inet watchpost {") == 1
    # A clean stop leaves nothing of ours: a plain bridge.
    daemons.started[-1].stop()
    assert nothing_of_ours(ruleset(lab))
    assert ping(lab, "pc1", web) == 3


def test_a_second_daemon_is_refused_and_leaves_the_first_alone(lab: Lab, daemons: Daemons) -> None:
    first = daemons.start()
    cfg = daemons.config()
    res = lab.exec("app", sys.executable, "-m", "appliance", "run", "--config", str(cfg),
                   check=False, timeout=60)  # fmt: skip
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if "ERROR" in ln]
    assert len(lines) == 1 and "NFQUEUE 0 is already bound" in lines[0], res.stderr
    assert first.alive()
    assert ruleset(lab)["table"] is not None
    assert ping(lab, "pc1", lab.addr("web")) == 3
    assert kernel(lab)["queues"][0]["id_sequence"] > 0


def test_bad_config_exits_nonzero_naming_the_key(lab: Lab, daemons: Daemons) -> None:
    cfg = daemons.config()
    cfg.write_text(cfg.read_text().replace('mode = "monitor"', 'mode = "drop-all"'))
    res = lab.exec("app", sys.executable, "-m", "appliance", "run", "--config", str(cfg),
                   check=False, timeout=60)  # fmt: skip
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "error: inline.mode: expected 'monitor' or 'block', got 'drop-all'"
    ]
    assert nothing_of_ours(ruleset(lab))


RECEIVE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9999))
s.settimeout(5)
print("ready", flush=True)
print(s.recv(100).decode(), flush=True)
"""
SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("", 6868))
s.sendto(b"first", ("255.255.255.255", 9999))
s.sendto(b"second", ("255.255.255.255", 9999))
"""


def test_the_first_broadcast_of_a_flow_crosses_the_bridge(lab: Lab, daemons: Daemons) -> None:
    """DHCP and friends: a queued broadcast is a bridge clone the kernel would drop."""
    daemons.start()
    rx = lab.popen("rtr", sys.executable, "-c", RECEIVE, stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        lab.exec("pc1", sys.executable, "-c", SEND)
        out, _ = rx.communicate(timeout=10)
    finally:
        if rx.poll() is None:
            rx.kill()
    assert out.strip() == "first"


def test_systemd_notify_ready_and_a_stuck_loop_stops_the_watchdog(
    lab: Lab, daemons: Daemons, monkeypatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # ping every 0.2 s while healthy
    d = daemons.start(inline={"debug_delay_ms": 2500})
    wait_for(lambda: any(n.startswith("READY=1") for n in d.notices), 10, "READY=1")

    def pings() -> int:
        return sum(n == "WATCHDOG=1" for n in d.notices)

    wait_for(lambda: pings() >= 3, 5, "watchdog pings")
    before = kernel(lab)["queues"][0]["id_sequence"]
    probe = lab.popen("pc1", "ping", "-c", "1", "-W", "1", lab.addr("web"),
                      stdout=subprocess.DEVNULL)  # fmt: skip

    def delivered() -> bool:
        out = lab.exec("app", "cat", "/proc/net/netfilter/nfnetlink_queue").stdout.split()
        return int(out[7]) > before

    wait_for(delivered, 5, "the packet to reach the daemon")
    # The callback now sleeps 2.5 s (the test-only stuck consumer): no pings meanwhile.
    stuck = pings()
    time.sleep(1.0)
    assert pings() == stuck
    probe.wait(10)
    wait_for(lambda: pings() > stuck, 10, "pings after the stall")
    d.stop()
    assert "STOPPING=1" in d.notices
