"""Fail-open: a full queue lets packets through instead of dropping them, so a slow or stuck
daemon under a flood never takes the office offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from inlinekit import Daemons, kernel, ping, wait_for

from lab.netns import Lab, stop

pytestmark = pytest.mark.root

# A consumer that binds queue 7 (max 16 packets) and never reads: the queue fills and stays full.
STUCK = """
import sys, time
if sys.argv[1] == "fail-open":
    from appliance.config import from_dict
    from appliance.inline.queue import QueueWorker
    cfg = from_dict({"inline": {"queue": 7, "queue_maxlen": 16, "office": "lo", "uplink": "lo"}})
    QueueWorker(cfg, None, 7).open()
else:
    from netfilterqueue import NetfilterQueue
    q = NetfilterQueue()
    q.bind(7, lambda p: None, max_len=16)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"wpq{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run = ["ip", "netns", "exec", name]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*run, "iptables", "-w", "-A", "OUTPUT", "-p", "icmp", "-j", "NFQUEUE",
             "--queue-num", "7"],
            check=True,
        )  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def queue_full_pings(ns: str, mode: str) -> tuple[int, dict[str, int]]:
    """Pings answered on loopback while queue 7 is full, and the kernel's queue counters."""
    run = ["ip", "netns", "exec", ns]
    consumer = subprocess.Popen(
        [*run, sys.executable, "-c", STUCK, mode], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == "ready"
        res = subprocess.run(
            [*run, "ping", "-n", "-q", "-S", "1000000", "-c", "40", "-i", "0.01", "-W", "0.3",
             "127.0.0.1"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        line = subprocess.run(
            [*run, "cat", "/proc/net/netfilter/nfnetlink_queue"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        q = {"total": int(line[2]), "dropped": int(line[5]), "user_dropped": int(line[6])}
    finally:
        stop(consumer)
    received = int(res.stdout.split(" received")[0].rsplit(",", 1)[1])
    return received, q


def test_a_full_queue_accepts_with_fail_open_and_drops_without(netns: str) -> None:
    received, q = queue_full_pings(netns, "plain")
    assert received == 0  # the binding alone: a full queue drops everything after it
    assert q["total"] == 16 and q["dropped"] > 0
    received, q = queue_full_pings(netns, "fail-open")
    # With our NFQA_CFG_F_FAIL_OPEN: the first 16 requests wait in the full queue, every
    # later request and reply is let through by the kernel.
    assert received >= 20
    assert q["total"] == 16 and q["dropped"] == 0


def queue_waiting(lab: Lab) -> int:
    """Packets waiting in queue 0 of the appliance (0 when it is not bound)."""
    for line in lab.exec("app", "cat", "/proc/net/netfilter/nfnetlink_queue").stdout.splitlines():
        w = line.split()
        if w and w[0] == "0":
            return int(w[2])
    return 0


def flood_ping_loss(lab: Lab, queue_maxlen: int | None = None) -> float:
    """Office ping loss (%) to the internet while an internet host SYN-floods an office host.

    The ping starts once the flood has filled the daemon's queue (`queue_maxlen`), or after the
    same time without a daemon, so both runs measure a flood in full swing.
    """
    flood = lab.popen(
        "atk", "timeout", "12", "hping3", "-q", "-S", "-p", "80", "-i", "u100", "-c", "60000",
        lab.addr("pc2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if queue_maxlen is None:
            time.sleep(1.5)
        else:
            wait_for(lambda: queue_waiting(lab) >= queue_maxlen, 8.0, "the queue to fill")
        sent = 100
        received = ping(lab, "pc1", lab.addr("web"), count=sent, interval=0.02)
    finally:
        stop(flood)
    return 100.0 * (sent - received) / sent


def test_slow_daemon_under_syn_flood_keeps_the_office_online(lab: Lab, daemons: Daemons) -> None:
    baseline = flood_ping_loss(lab)
    daemons.start(inline={"debug_delay_ms": 200, "queue_maxlen": 1024})
    loss = flood_ping_loss(lab, queue_maxlen=1024)
    k = kernel(lab)
    assert loss <= baseline + 1.0, f"ping loss {loss}% with the daemon, {baseline}% without"
    # The daemon saw a trickle; the kernel let the rest through (fail-open), none dropped.
    delivered = k["queues"][0]["id_sequence"]
    assert k["counters"]["queued"] > 5 * max(delivered, 1)
    assert k["queues"][0]["dropped"] == 0 and k["queues"][0]["user_dropped"] == 0
