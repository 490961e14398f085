"""The ruleset against the real nft/iptables, in a private namespace (no lab needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from appliance.inline.firewall import JUMPS, RulesetSpec, render_nft

pytestmark = pytest.mark.root


@pytest.fixture
def netns() -> Iterator[list[str]]:
    name = f"wpr{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_in(ns: list[str], code: str) -> dict:
    res = subprocess.run(
        [*ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_native_queue_ruleset_is_valid_nft(netns: list[str]) -> None:
    """Where the kernel has nft's queue expression the native table loads; here (no such
    expression) nft must object to the queue statements only, never to our syntax."""
    spec = RulesetSpec(
        bridge="br0", uplink="uplink", office="office", queue_first=0, queue_last=3,
        head_packets=8, block_mode=True, native_queue=True, deep=((21, 40), (23, 40)),
        blocked=(("203.0.113.66", 60), ("2001:db8::/64", 0)),
    )  # fmt: skip
    res = subprocess.run(
        [*netns, "nft", "--check", "-f", "-"], input=render_nft(spec), capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    if res.returncode == 0:
        return  # a kernel with the native queue expression
    errors = [ln for ln in res.stderr.splitlines() if "Error:" in ln]
    assert errors
    assert all("No such file or directory" in e for e in errors), res.stderr
    marked = res.stderr.count("queue flags bypass")
    assert marked == len(errors)


FIREWALL = """
import json
from appliance.config import from_dict
from appliance.inline.firewall import Firewall
cfg = from_dict({"inline": {"bridge": "br0", "uplink": "uplink", "office": "office",
                            "mode": "block", "never_block": ["198.18.0.0/24"]}})
fw = Firewall(cfg)
out = {"native": fw.native_queue()}
fw.apply()
fw.apply()  # again: replaces, never duplicates
out["blocks"] = [fw.block("203.0.113.66", 30), fw.block("203.0.113.66", 300)]
out["refreshed"] = fw.blocked()["203.0.113.66"]
out["blocks"] += [fw.block("198.18.0.1", 300),
                 fw.block("2001:db8::7", 0), fw.block("203.0.113.0/24", 300)]
fw.apply()  # a reload keeps the drop set
out["blocked"] = fw.blocked()
out["present"] = fw.present()
out["unblock"] = [fw.unblock("203.0.113.0/24"), fw.unblock("203.0.113.0/24")]
fw.remove()
fw.remove()  # nothing left to remove: no error
out["after"] = fw.present()
print(json.dumps(out))
"""


def test_apply_block_reload_remove_in_the_kernel(netns: list[str]) -> None:
    out = run_in(netns, FIREWALL)
    assert out["blocks"] == [True, True, False, True, True]
    assert out["refreshed"] > 250  # blocking again restarted the timeout
    # The /24 replaced the single address inside it; the IPv6 block has no timeout.
    assert set(out["blocked"]) == {"203.0.113.0/24", "2001:db8::7"}
    assert out["blocked"]["2001:db8::7"] is None
    assert 250 < out["blocked"]["203.0.113.0/24"] <= 300
    p = out["present"]
    assert p["table"] is not None and "chain block" in p["table"]
    if not out["native"]:
        for family in (4, 6):
            assert p[f"iptables{family}_jumps"] == list(JUMPS)
            # per direction: DNS over UDP and TCP, connection heads, stealth probes
            assert sum("NFQUEUE" in r for r in p[f"iptables{family}_chain"]) == 8
    assert out["unblock"] == [True, False]
    assert out["after"] == {
        "table": None,
        "iptables4_jumps": [],
        "iptables4_chain": None,
        "iptables6_jumps": [],
        "iptables6_chain": None,
    }
    left = subprocess.run([*netns, "nft", "list", "ruleset"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # not even an empty iptables filter table
