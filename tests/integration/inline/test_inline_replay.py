"""`watchpost replay` of a pcap captured in the lab gives the alerts the inline run gave."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from inlinekit import Daemons, eve, ping, wait_for

from lab.netns import Lab, stop

pytestmark = pytest.mark.root


def key(alert: dict) -> tuple:
    return (
        alert["watchpost"]["detector"],
        alert["alert"]["signature_id"],
        alert["src_ip"],
        alert["dest_ip"],
        alert.get("src_port"),
        alert.get("dest_port"),
    )


def test_replay_of_a_lab_capture_matches_the_inline_alerts(
    lab: Lab, serve, daemons: Daemons, tmp_path
) -> None:
    serve.http("web")
    d = daemons.start(mode="monitor")
    pcap = tmp_path / "lab.pcap"
    # On the office port, not on br0: a capture on the bridge device makes it promiscuous, and
    # the daemon then pauses inspection (see test_capture_on_the_bridge_pauses_inspection).
    dump = lab.popen(
        "app", "tcpdump", "-i", "office", "--immediate-mode", "-n", "-U", "-Z", "root",
        "-w", str(pcap), "ip or ip6", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # The capture file's header is written once tcpdump listens.
    wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, 10, "tcpdump to listen")
    # Office traffic with something to find: a listed host, listed names, and plain traffic.
    assert ping(lab, "pc1", lab.addr("evil")) == 3
    lab.exec("pc1", "curl", "-sS", "-m", "5", "-o", "/dev/null", "http://www.example.com/")
    lab.exec(
        "pc2", "curl", "-sS", "-m", "2", "-o", "/dev/null", "http://203.0.113.66/", check=False
    )
    for name in ("c2.example.net", "login-update.example.org", "www.example.com"):
        lab.exec("pc1", "dig", "+short", "+time=2", "+tries=1", name)
    eve_path = d.config.parent / "eve.json"
    wait_for(lambda: len(eve(eve_path)) >= 2, 10, "inline alerts")
    time.sleep(0.5)  # the last packets reach the capture file (immediate mode, -U)
    stop(dump)
    d.stop()  # a clean stop reports every open aggregation window
    inline = {key(a) for a in eve(eve_path)}
    res = subprocess.run(
        [sys.executable, "-m", "appliance", "replay", str(pcap), "--config", str(d.config)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    replayed = {key(json.loads(line)) for line in res.stdout.splitlines() if line.strip()}
    assert any(k[0] == "intel" and k[3] == lab.addr("evil") for k in inline)
    assert replayed == inline
    # Flows spread over two processes: the same output, byte for byte.
    two = subprocess.run(
        [sys.executable, "-m", "appliance", "replay", str(pcap), "--config", str(d.config),
         "--workers", "2"], capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "2 workers" in two.stderr
    assert two.stdout == res.stdout


def test_capture_on_the_bridge_pauses_inspection(
    lab: Lab, serve, daemons: Daemons, tmp_path
) -> None:
    serve.http("web")
    d = daemons.start(mode="monitor")
    log = d.config.parent / "watchpost.log"
    dump = lab.popen(
        "app", "tcpdump", "-i", "br0", "-n", "-U", "-Z", "root", "-w", str(tmp_path / "br0.pcap"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: "inspection paused" in log.read_text(), 10, "the pause")
        # New connections work while the capture runs (unpaused, the kernel would drop the
        # queued first packets: every ping of a new ping flow was lost when this was measured).
        assert ping(lab, "pc1", lab.addr("evil")) == 3
        res = lab.exec("pc1", "curl", "-sS", "-m", "5", "http://www.example.com/captured")
        assert "lab page /captured" in res.stdout
        assert "WATCHPOST" not in lab.exec("app", "iptables", "-w", "-S").stdout
    finally:
        stop(dump)
        # The connections made while paused got no verdict (mark 0); their conntrack entries
        # (TIME_WAIT: up to 120 s) must not meet later tests that judge port-80 entries' marks.
        lab.exec("app", "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "80", check=False)
    wait_for(lambda: "inspection resumed" in log.read_text(), 10, "the resume")
    assert "-N WATCHPOST" in lab.exec("app", "iptables", "-w", "-S").stdout
    assert ping(lab, "pc1", lab.addr("evil")) == 3
    wait_for(lambda: [a for a in eve(d.config.parent / "eve.json")], 5, "an alert again")
