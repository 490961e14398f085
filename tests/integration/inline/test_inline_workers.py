"""inline.workers > 1: one process per queue of a --queue-balance range."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from inlinekit import Daemons, eve, kernel, nothing_of_ours, ping, ruleset, wait_for

from lab.netns import Lab

pytestmark = pytest.mark.root


def workers_of(pid: int) -> list[int]:
    """Queue worker processes (multiprocessing spawn children) of the daemon `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def test_two_workers_share_the_traffic_and_report_to_the_main_process(
    lab: Lab, serve, daemons: Daemons
) -> None:
    serve.http("web")
    d = daemons.start(mode="block", inline={"queue": 3, "workers": 2})
    assert d.proc is not None
    k = kernel(lab)
    assert sorted(k["queues"]) == [3, 4]
    assert "--queue-balance 3:4 --queue-bypass" in ruleset(lab)["ipt4"]
    # Traffic from several office hosts to several internet hosts lands on both queues.
    # (The kernel hashes each address pair to a queue: 16 pairs all on one queue would be a
    # 1 in 32768 chance.)
    targets = [lab.addr(h) for h in ("web", "dns", "hub", "atk", "rtr")]
    targets += ["203.0.113.1", "198.51.100.1", "192.0.2.1"]
    for src in ("pc1", "pc2"):
        for dst in targets:
            assert ping(lab, src, dst, count=1) == 1
    lab.exec("pc1", "curl", "-sS", "-m", "5", "-o", "/dev/null", "http://www.example.com/")
    k = kernel(lab)
    assert all(q["id_sequence"] > 0 for q in k["queues"].values()), k["queues"]
    # A worker's alert reaches the main process's EVE file; its block request the drop set.
    assert ping(lab, "pc1", lab.addr("evil")) == 0
    hits = wait_for(
        lambda: [a for a in eve(d.config.parent / "eve.json") if a["dest_ip"] == lab.addr("evil")],
        10, "the worker's alert",
    )  # fmt: skip
    assert hits[0]["alert"]["action"] == "blocked"
    assert list(kernel(lab)["blocked"]) == [lab.addr("evil")]
    assert len(workers_of(d.proc.pid)) == 2
    d.stop()
    assert nothing_of_ours(ruleset(lab))
    assert kernel(lab)["queues"] == {}


def test_kill9_of_the_main_process_takes_its_workers_along(lab: Lab, daemons: Daemons) -> None:
    d = daemons.start(inline={"queue": 3, "workers": 2})
    assert d.proc is not None
    workers = workers_of(d.proc.pid)
    assert len(workers) == 2
    daemons.kill9(d)
    # The workers die with their parent, so the queues are free for the next daemon.
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), 10, "workers")
    wait_for(lambda: kernel(lab)["queues"] == {}, 10, "the queues to be released")
    assert ping(lab, "pc1", lab.addr("web")) == 3
    daemons.start(inline={"queue": 3, "workers": 2})
    assert sorted(kernel(lab)["queues"]) == [3, 4]


def test_a_dead_worker_is_restarted(lab: Lab, daemons: Daemons) -> None:
    d = daemons.start(inline={"queue": 3, "workers": 2})
    assert d.proc is not None
    victim = workers_of(d.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.2)
    assert ping(lab, "pc1", lab.addr("web")) == 3  # bypass while the queue has no listener
    log = d.config.parent / "watchpost.log"
    wait_for(lambda: "died: restarting it" in log.read_text(), 15, "the restart")
    wait_for(lambda: sorted(kernel(lab)["queues"]) == [3, 4], 30, "both queues bound again")
