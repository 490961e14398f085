"""The daemon inline versus a plain bridge, in the lab, side by side in the same run.

Figures (each with its baseline):
- ``inline_throughput_ratio``: iperf3 pc1 → web through the appliance's bridge, with the daemon
  over without. Segmentation and receive offloads are off on every lab interface, so frames are
  1 500 bytes as on a Pi's NIC (with offloads on, 64 KB super-packets would hide per-packet cost).
- ``rtt_added_p99_ms``: p99 of ``ping -i 0.01`` pc1 → web with the daemon minus without.
- ``new_conns_per_s``: TCP connections opened and completed per second through the bridge by a
  closed-loop client (bounded concurrency and duration) against an accept-and-close server on
  web, with the daemon; reported with the baseline and the fail-open count of that run (queue
  rule hits the kernel counted minus packets it handed to the queue: a full queue that fails open
  does not number the packet). Every packet of these short connections is a flow head, so this is
  the daemon's worst case.

Order: baseline, daemon, daemon, baseline (ABBA) in the full run so that drift of a shared
machine affects both sides alike; the medians are reported. The full run also measures iperf3
after the daemon was killed with SIGKILL (``inline_mbps_after_crash``): its ruleset stays, the
queue rules' bypass lets everything through, and as no flow gets a verdict mark every packet
walks all the queue rules. BENCH_QUICK: one of each, shorter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lab.netns import Lab, LabDaemon, LabError, lab_config, stop

SINK_PORT = 9000
IPERF_PORT = 5201

# Runs inside pc1 (stdlib only). Opens connections with at most `conc` in flight, counts the
# ones whose handshake completes within `seconds`, closes each with RST (no TIME_WAIT, so ports
# recycle), and gives up on a connection after 1 s (counted as failed). Bounded by time and count.
CONN_CLIENT = r"""
import errno, json, selectors, socket, struct, sys, time
host, port, conc, seconds, limit = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                    float(sys.argv[4]), int(sys.argv[5]))
sel = selectors.DefaultSelector()
linger = struct.pack("ii", 1, 0)
ok = failed = started = 0
t0 = time.monotonic()
end = t0 + seconds
next_sweep = t0 + 0.1
while True:
    now = time.monotonic()
    if now >= end:
        break
    while len(sel.get_map()) < conc and started < limit:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        rc = s.connect_ex((host, port))
        started += 1
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            failed += 1
            continue
        sel.register(s, selectors.EVENT_WRITE, now)
    if started >= limit and not sel.get_map():
        break
    for key, _ in sel.select(0.05):
        s = key.fileobj
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sel.unregister(s)
        s.close()
        if err in (0, errno.ECONNRESET):  # reset after the handshake: the sink was quicker
            ok += 1
        else:
            failed += 1
    if now >= next_sweep:
        next_sweep = now + 0.1
        for key in [k for k in sel.get_map().values() if now - k.data > 1.0]:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            failed += 1
elapsed = time.monotonic() - t0
for key in list(sel.get_map().values()):
    sel.unregister(key.fileobj)
    key.fileobj.close()
print(json.dumps({"ok": ok, "failed": failed, "seconds": elapsed}))
"""


def _log(msg: str) -> None:
    print(f"bench.inline: {msg}", file=sys.stderr, flush=True)


def iperf(lab: Lab, seconds: int) -> float:
    """Mbit/s received by web from pc1."""
    dst = lab.addr("web")
    argv = ("iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1", "-J")
    for attempt in range(3):
        res = lab.exec("pc1", *argv, check=False, timeout=seconds + 20)
        try:
            data = json.loads(res.stdout)
        except ValueError:
            data = {"error": (res.stderr or res.stdout).strip()[-200:]}
        if "error" not in data:
            return data["end"]["sum_received"]["bits_per_second"] / 1e6
        if "busy" not in str(data["error"]) or attempt == 2:
            raise RuntimeError(f"iperf3 failed: {data['error']}")
        time.sleep(1.0)
    raise AssertionError("unreachable")


@contextmanager
def iperf_lab(prefix: str, tmp_prefix: str) -> Iterator[tuple[Lab, str, list[Any]]]:
    """A lab for iperf3 through the bridge: up, offloads off (1 500-byte frames, as on a Pi's
    NIC), iperf3 listening on web; yields (lab, a temp dir, the server list to add to). Every
    server is stopped, the lab taken down and the temp dir removed on the way out; a LabError
    becomes a RuntimeError."""
    lab = Lab(prefix)
    tmp = tempfile.mkdtemp(prefix=tmp_prefix)
    servers: list[Any] = []
    try:
        lab.up()
        lab.set_offloads(False)
        servers.append(lab.start_iperf3("web", IPERF_PORT))
        yield lab, tmp, servers
    except LabError as e:
        raise RuntimeError(str(e)) from None
    finally:
        for p in servers:
            stop(p, 3)
        try:
            lab.down()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def ping_rtts(lab: Lab, count: int) -> tuple[list[float], int]:
    """Round-trip times (ms) of `count` pings 10 ms apart, and how many were lost."""
    res = lab.exec("pc1", "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1",
                   lab.addr("web"), check=False, timeout=count * 0.05 + 15)  # fmt: skip
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", res.stdout)]
    return rtts, count - len(rtts)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def new_conns(lab: Lab, seconds: float, conc: int = 32, limit: int = 500_000) -> dict[str, Any]:
    res = lab.exec("pc1", sys.executable, "-c", CONN_CLIENT, lab.addr("web"), str(SINK_PORT),
                   str(conc), str(seconds), str(limit), timeout=seconds + 30)  # fmt: skip
    out = json.loads(res.stdout)
    out["per_s"] = out["ok"] / out["seconds"] if out["seconds"] > 0 else 0.0
    return out


def measure(lab: Lab, quick: bool, daemon: LabDaemon | None) -> dict[str, Any]:
    side = "daemon" if daemon else "baseline"
    t = 1 if quick else 5
    mbps = iperf(lab, t)
    _log(f"{side}: iperf3 {mbps:.0f} Mbit/s")
    rtts, lost = ping_rtts(lab, 200 if quick else 1000)
    _log(f"{side}: ping p50 {pct(rtts, 50):.3f} ms, p99 {pct(rtts, 99):.3f} ms, lost {lost}")
    before = _kernel(daemon)
    conns = new_conns(lab, 1.0 if quick else 4.0)
    after = _kernel(daemon)
    hits = after["hits"] - before["hits"]
    delivered = after["delivered"] - before["delivered"]
    _log(f"{side}: {conns['per_s']:.0f} new conns/s ({conns['failed']} failed), "
         f"queue rule hits {hits}, delivered {delivered}")  # fmt: skip
    return {
        "mbps": mbps,
        "rtt_p50": pct(rtts, 50),
        "rtt_p99": pct(rtts, 99),
        "ping_lost": lost,
        "conns_per_s": conns["per_s"],
        "conns_failed": conns["failed"],
        "queue_hits": hits,
        "queue_delivered": delivered,
        "fail_open": max(0, hits - delivered),
    }


def _kernel(daemon: LabDaemon | None) -> dict[str, int]:
    if daemon is None:
        return {"hits": 0, "delivered": 0}
    return {
        "hits": daemon.queue_rule_packets() or 0,
        "delivered": sum(q["id_sequence"] for q in daemon.queues()),
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def run(quick: bool) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("bench.inline needs root (network namespaces, netfilter)")
    for tool, pkg in (("iperf3", "iperf3"), ("ethtool", "ethtool"), ("ping", "iputils-ping")):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(f"bench.inline needs `{tool}`: apt install {pkg}")
    _log("lab up, offloads off")
    with iperf_lab(f"wpb{os.getpid()}", "watchpost-bench-") as (lab, tmp, servers):
        # Short connections recycle ports fast: give the client the whole range.
        lab.exec("pc1", "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65000")
        servers.append(lab.start_sink("web", SINK_PORT, threads=2))
        config = lab_config(tmp)
        order = ["baseline", "daemon"] if quick else ["baseline", "daemon", "daemon", "baseline"]
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "daemon": []}
        rules_only: float | None = None
        daemon: LabDaemon | None = None
        try:
            for side in order:
                if side == "daemon" and daemon is None:
                    _log("starting the daemon in the appliance namespace")
                    daemon = LabDaemon(lab, config).start()
                if side == "baseline" and daemon is not None:
                    daemon.stop()
                    daemon = None
                runs[side].append(measure(lab, quick, daemon))
                if daemon is not None and not daemon.alive():
                    raise RuntimeError(f"the daemon died during the run: {daemon.log_tail()}")
            if not quick:
                # A crashed daemon: its ruleset stays and bypass must keep traffic flowing.
                daemon = LabDaemon(lab, config).start()
                daemon.kill()
                daemon = None
                rules_only = iperf(lab, 5)
                _log(f"daemon killed (-9), ruleset left: iperf3 {rules_only:.0f} Mbit/s")
        finally:
            if daemon is not None:
                daemon.stop()
    b, d = runs["baseline"], runs["daemon"]
    base_mbps, d_mbps = _median(b, "mbps"), _median(d, "mbps")
    base_p99, d_p99 = _median(b, "rtt_p99"), _median(d, "rtt_p99")
    base_conns, d_conns = _median(b, "conns_per_s"), _median(d, "conns_per_s")
    out: dict[str, Any] = {
        "inline_throughput_ratio": round(d_mbps / base_mbps, 3) if base_mbps else 0.0,
        "inline_mbps_daemon": round(d_mbps, 1),
        "inline_mbps_baseline": round(base_mbps, 1),
        "rtt_added_p99_ms": round(d_p99 - base_p99, 3),
        "rtt_p99_ms_daemon": round(d_p99, 3),
        "rtt_p99_ms_baseline": round(base_p99, 3),
        "rtt_p50_ms_daemon": round(_median(d, "rtt_p50"), 3),
        "rtt_p50_ms_baseline": round(_median(b, "rtt_p50"), 3),
        "ping_lost_daemon": sum(r["ping_lost"] for r in d),
        "ping_lost_baseline": sum(r["ping_lost"] for r in b),
        "new_conns_per_s": round(d_conns),
        "new_conns_per_s_baseline": round(base_conns),
        "new_conns_ratio": round(d_conns / base_conns, 3) if base_conns else 0.0,
        "new_conns_failed_daemon": sum(r["conns_failed"] for r in d),
        "new_conns_failed_baseline": sum(r["conns_failed"] for r in b),
        "new_conns_fail_open_events": sum(r["fail_open"] for r in d),
        "new_conns_queued_packets": sum(r["queue_delivered"] for r in d),
    }
    if rules_only is not None:
        out["inline_mbps_after_crash"] = round(rules_only, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("BENCH_QUICK") == "1"), indent=1))
