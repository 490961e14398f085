"""The kernel path, piece by piece: iperf3 pc1 -> web through the lab bridge with the ruleset
built up one stage at a time, each as a ratio to the plain bridge (no netfilter on bridged
traffic). ``python -m bench kernelpath``; also part of ``make bench`` (needs root).

Stages (cumulative):

1. ``br_netfilter``: bridged frames go through the IP hooks (bridge-nf-call-iptables=1), no rules;
2. ``conntrack``: one nft rule that needs conntrack (``ct state new counter``): every packet is
   tracked;
3. ``nft_table``: our ``inet watchpost`` table as rendered by the firewall module (drop sets,
   the verdict-save chain with its bridged checks), monitor mode;
4. ``queue_chain_unjudged``: plus the iptables-nft ``WATCHPOST`` queue chain (pkttype, connmark,
   physdev + connbytes, NFQUEUE with bypass) and no daemon: no flow ever gets a verdict, so every
   packet walks the queue rules (the "daemon crashed" case);
5. ``daemon_before``: the daemon (monitor mode) with the rule order used before the judged
   flow's fast path moved to the first rule (an unconditional jump to the queue chain, whose
   second rule returns judged flows; the verdict chain's bridged checks before its mark test):
   the baseline of the next stage, measured in the same run;
6. ``daemon``: the daemon itself (monitor mode), rules as the firewall module renders them: a
   judged flow's packets leave at the first rule of each chain (FORWARD's connmark test, the
   verdict chain's mark test);
7. ``daemon_block``: block mode: the block chain and drop-set lookups on every packet too.

Order: the stages forward, then backward (ABBA), `rounds` times; each figure is the median of
its runs divided by the median of the plain bridge, and the spread (min-max) of each is reported
so noise is visible. Offloads are off (1 500-byte frames, as on a Pi's NIC).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from typing import Any

from appliance.config import from_dict
from appliance.inline.firewall import (
    CHAIN,
    JUMPS,
    MARK_BLOCK,
    MARK_MASK,
    MARK_PASS,
    TABLE,
    RulesetSpec,
    render_iptables,
    render_nft,
)
from bench.inline import iperf, iperf_lab
from lab.netns import INLINE_CONFIG, Lab, LabDaemon, lab_config

STAGES = ("plain", "br_netfilter", "conntrack", "nft_table", "queue_chain_unjudged",
          "daemon_before", "daemon", "daemon_block")  # fmt: skip


def _log(msg: str) -> None:
    print(f"bench.kernelpath: {msg}", file=sys.stderr, flush=True)


def _clear(lab: Lab) -> None:
    lab.exec("app", "sh", "-c", "nft delete table inet wpkp 2>/dev/null; "
             "nft delete table inet watchpost 2>/dev/null; "
             "iptables -F FORWARD 2>/dev/null; iptables -F WATCHPOST 2>/dev/null; "
             "iptables -X WATCHPOST 2>/dev/null; true", check=False)  # fmt: skip


def _hooks(lab: Lab, on: bool) -> None:
    v = "1" if on else "0"
    lab.exec("app", "sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-iptables={v}",
             f"net.bridge.bridge-nf-call-ip6tables={v}")  # fmt: skip


def _apply(lab: Lab, stage: str, tmp: str) -> LabDaemon | None:
    _clear(lab)
    _hooks(lab, stage != "plain")
    if stage in ("plain", "br_netfilter"):
        return None
    if stage == "conntrack":
        lab.exec("app", "nft", "-f", "-", input="table inet wpkp {\n chain kp {\n"
                 "  type filter hook forward priority 0; policy accept;\n"
                 "  ct state new counter\n }\n}\n")  # fmt: skip
        return None
    if stage in ("nft_table", "queue_chain_unjudged"):
        cfg = from_dict({"inline": dict(INLINE_CONFIG)})
        spec = RulesetSpec.from_config(cfg, native_queue=False)
        lab.exec("app", "nft", "-f", "-", input=render_nft(spec))
        if stage == "queue_chain_unjudged":
            lab.exec("app", "iptables-restore", "--noflush", input=render_iptables(spec))
        return None
    mode = "block" if stage == "daemon_block" else "monitor"
    config = lab_config(os.path.join(tmp, stage), mode=mode)
    daemon = LabDaemon(lab, config).start()
    if stage == "daemon_before":
        _order_before(lab)
    return daemon


def _order_before(lab: Lab) -> None:
    """Put the daemon's rules back in the order they had before the fast path moved first."""
    mask = f"0x{MARK_MASK:x}"
    for tool in ("iptables", "ip6tables"):
        old = [f"-D{j[2:]}" for j in JUMPS]
        old += [f"-I {CHAIN} 2 -m connmark ! --mark 0x0/{mask} -j RETURN", f"-A FORWARD -j {CHAIN}"]
        lab.exec("app", f"{tool}-restore", "--noflush", input="*filter\n" + "\n".join(old)
                 + "\nCOMMIT\n")  # fmt: skip
    m = f"0x{MARK_MASK:08x}"
    keep = f"0x{~MARK_MASK & 0xFFFFFFFF:08x}"
    rules = ['iifname != "br0" return', 'oifname != "br0" return', f"meta mark & {m} == 0 return"]
    rules += [f"meta mark & {m} == {v:#010x} ct mark set ct mark & {keep} | {v:#010x} counter"
              for v in (MARK_PASS, MARK_BLOCK)]  # fmt: skip
    script = f"flush chain inet {TABLE} verdict\n"
    script += "".join(f"add rule inet {TABLE} verdict {r}\n" for r in rules)
    lab.exec("app", "nft", "-f", "-", input=script)


def run(quick: bool) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("bench.kernelpath needs root (network namespaces, netfilter)")
    if not shutil.which("iperf3"):
        raise RuntimeError("bench.kernelpath needs `iperf3`: apt install iperf3")
    seconds = 1 if quick else 3
    rounds = 1 if quick else 2
    mbps: dict[str, list[float]] = {s: [] for s in STAGES}
    with iperf_lab(f"wpk{os.getpid() % 100000}", "watchpost-kpath-") as (lab, tmp, _servers):
        order = [s for _ in range(rounds) for s in (*STAGES, *reversed(STAGES))]
        for stage in order:
            daemon = _apply(lab, stage, tmp)
            try:
                mbps[stage].append(iperf(lab, seconds))
            finally:
                if daemon is not None:
                    daemon.stop()
            _log(f"{stage}: {mbps[stage][-1]:.0f} Mbit/s")
    base = statistics.median(mbps["plain"])
    table = {
        s: {
            "ratio": round(statistics.median(v) / base, 3),
            "min": round(min(v) / base, 3),
            "max": round(max(v) / base, 3),
            "mbps": round(statistics.median(v)),
            "runs": len(v),
        }
        for s, v in mbps.items()
    }
    out: dict[str, Any] = {"kernelpath": table, "kernelpath_plain_mbps": round(base)}
    for s in STAGES[1:]:
        out[f"kernelpath_{s}_ratio"] = table[s]["ratio"]
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("BENCH_QUICK") == "1"), indent=1))
