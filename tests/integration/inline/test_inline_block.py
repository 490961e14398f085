"""Block mode drops an intel-listed host and nothing else; monitor mode drops nothing."""

from __future__ import annotations

import pytest
from inlinekit import Daemons, eve, kernel, ping, wait_for

from lab.netns import DEMO_INTEL, Lab

pytestmark = pytest.mark.root

# The lab intel plus the lab resolver, which the lab config puts on inline.never_block.
INTEL = DEMO_INTEL + "203.0.113.53\n"


def intel_alerts(path, dest: str) -> list[dict]:
    return [
        a
        for a in eve(path)
        if a["watchpost"]["detector"] == "intel" and dest in (a["dest_ip"], a["src_ip"])
    ]


def office_works(lab: Lab) -> None:
    """Everything the office does that involves no listed host still works."""
    assert ping(lab, "pc1", lab.addr("web")) == 3
    res = lab.exec("pc1", "curl", "-sS", "-m", "5", "http://www.example.com/ok")
    assert "lab page /ok" in res.stdout
    res = lab.exec("pc1", "dig", "+short", "+time=2", "+tries=1", "www.example.com")
    assert res.stdout.strip() == "203.0.113.10"
    assert ping(lab, "atk", lab.addr("pc2")) == 3  # inbound from an unlisted host
    assert ping(lab, "pc1", lab.addr("pc2")) == 3  # office-internal


def test_block_mode_drops_the_listed_host_and_nothing_else(
    lab: Lab, serve, daemons: Daemons
) -> None:
    serve.http("web")
    d = daemons.start(mode="block", intel=INTEL)
    evil = lab.addr("evil")
    assert ping(lab, "pc1", evil) == 0
    res = lab.exec("pc1", "curl", "-sS", "-m", "2", f"http://{evil}/", check=False)
    assert res.returncode != 0
    assert ping(lab, "pc2", evil) == 0  # every office host, not only the one that tried
    office_works(lab)
    k = kernel(lab)
    assert list(k["blocked"]) == [evil]
    assert k["counters"]["blocked"] > 0
    eve_path = d.config.parent / "eve.json"
    hits = wait_for(lambda: intel_alerts(eve_path, evil), 5.0, "the intel alert")
    assert hits[0]["alert"]["action"] == "blocked"
    assert hits[0]["alert"]["signature_id"] == 8100001
    # The listed resolver is on inline.never_block: reported, never blocked.
    resolver = wait_for(lambda: intel_alerts(eve_path, "203.0.113.53"), 5.0, "resolver alert")
    assert {a["alert"]["action"] for a in resolver} == {"allowed"}
    assert "203.0.113.53" not in k["blocked"]
    # A crashed daemon's blocks survive its restart (systemd restarts it after a watchdog kill).
    daemons.kill9(d)
    daemons.start(mode="block", intel=INTEL)
    assert list(kernel(lab)["blocked"]) == [evil]
    assert ping(lab, "pc1", evil, count=2) == 0
    assert ping(lab, "pc1", lab.addr("web"), count=2) == 2


def test_monitor_mode_drops_nothing(lab: Lab, serve, daemons: Daemons) -> None:
    serve.http("web")
    d = daemons.start(mode="monitor", intel=INTEL)
    evil = lab.addr("evil")
    assert ping(lab, "pc1", evil) == 3
    office_works(lab)
    k = kernel(lab)
    assert k["blocked"] == {} and k["counters"]["blocked"] == 0
    hits = wait_for(lambda: intel_alerts(d.config.parent / "eve.json", evil), 5.0, "alert")
    assert {a["alert"]["action"] for a in hits} == {"allowed"}
    table = lab.exec("app", "nft", "list", "table", "inet", "watchpost").stdout
    assert "drop" not in table
