"""SIGHUP: a bad config is refused with a one-line reason and the old one keeps running; a good
one (mode, intel) takes effect without a restart."""

from __future__ import annotations

import signal

import pytest
from inlinekit import Daemons, eve, kernel, ping, wait_for

from lab.netns import DEMO_INTEL, Lab

pytestmark = pytest.mark.root


def test_sighup_refuses_a_bad_config_and_applies_a_good_one(lab: Lab, daemons: Daemons) -> None:
    d = daemons.start(mode="monitor")
    assert d.proc is not None
    log = d.config.parent / "watchpost.log"
    eve_path = d.config.parent / "eve.json"
    good = d.config.read_text()
    pid, portid = d.proc.pid, kernel(lab)["queues"][0]["portid"]

    d.config.write_text(good.replace("[inline]\n", "[inline]\nfrobnicate = 1\n"))
    d.proc.send_signal(signal.SIGHUP)
    refused = wait_for(
        lambda: [ln for ln in log.read_text().splitlines() if "reload refused" in ln], 10, "refusal"
    )
    assert len(refused) == 1 and "inline.frobnicate: unknown key" in refused[0]
    # Still the same daemon, same queue, same mode: the listed host is reported, not blocked.
    assert d.alive() and d.proc.pid == pid
    assert kernel(lab)["queues"][0]["portid"] == portid
    assert ping(lab, "pc1", lab.addr("evil")) == 3
    wait_for(lambda: [a for a in eve(eve_path) if a["dest_ip"] == lab.addr("evil")], 5, "alert")

    # A good config: block mode, and intel that now also lists the attacker.
    (d.config.parent / "intel.txt").write_text(DEMO_INTEL + lab.addr("atk") + "\n")
    d.config.write_text(good.replace('mode = "monitor"', 'mode = "block"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in log.read_text(), 10, "the reload")
    wait_for(lambda: ": 4 indicators" in log.read_text(), 10, "the intel reload")
    assert ping(lab, "pc1", lab.addr("evil")) == 0
    wait_for(lambda: ping(lab, "pc1", lab.addr("atk"), count=1) == 0, 10, "atk to be blocked")
    blocked = kernel(lab)["blocked"]
    assert set(blocked) == {lab.addr("evil"), lab.addr("atk")}
    assert d.alive() and d.proc.pid == pid
    assert ping(lab, "pc1", lab.addr("web")) == 3
