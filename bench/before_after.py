"""Engine throughput before and after a change, on the same workload, alternated.

    python -m bench.before_after [--rev 217c4b7] [--rounds 3] [--seconds 3]

Checks out `--rev` (default 217c4b7, the last commit before the architecture change of issue
7) into a git worktree under /tmp (made once, reused), builds the honest office mix
(bench/mix.py) once in THIS tree and hands the same packets to both trees. Each measurement runs
in its own process whose `appliance` package comes from that tree (PYTHONPATH), alternated
(A B, B A, A B, ...) so drift on a shared machine hits both alike. Figures: ``engine_pps``
(the intel detector only) and ``engine_pps_all_detectors`` (every detector the tree has) as in
bench/engine.py, plus ``engine_pps_common_detectors`` (only the detectors both trees have),
each as the median of the rounds with every value, over wall-clock time (as `make bench`) and
per CPU second of the measuring process (``*_per_cpu_s``: less disturbed by other load on a
shared machine; each measurement runs for `--seconds` of CPU time), and the load average
before and after. One JSON object
on stdout; progress on stderr.

The old tree's APIs differ (the decoder lived in appliance.inline.decode); the adaptation is in
the child script below, never in the old code.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the tree under test: `appliance` comes from that tree.
CHILD = r"""
import json, pickle, sys, time
from pathlib import Path
try:
    from appliance.packet.decode import DecodeStats, decode_ip
except ImportError:  # before the layout change
    from appliance.inline.decode import DecodeStats, decode_ip
from appliance.alerts.pipeline import AlertPipeline
from appliance.config import from_dict
from appliance.detect import intel as intel_mod
from appliance.detect.engine import Engine
from appliance.detect.registry import create_detectors

mix_path, intel_path, mode, seconds, names = sys.argv[1:6]
import appliance
assert str(Path(appliance.__file__).resolve()).startswith(sys.argv[6]), appliance.__file__
if mode == "names":
    print(json.dumps([d.name for d in create_detectors()]))
    sys.exit(0)
with open(mix_path, "rb") as f:
    packets = pickle.load(f)
store = intel_mod.load_files([intel_path])
config = from_dict(
    {"device": {"id": "bench", "site": "bench"}, "inline": {"home_nets": ["198.18.0.0/24"]}}
)
sink = AlertPipeline(config, [])
dets = create_detectors()
if mode == "intel":
    dets = [d for d in dets if d.name == "intel"]
elif mode == "common":
    dets = [d for d in dets if d.name in names.split(",")]
engine = Engine(config, store, sink, detectors=dets)
engine.tickers.append(sink.tick)
stats = DecodeStats()
process = engine.process
span = packets[-1][0] - packets[0][0] + 1.0
shift = 0.0
done = 0
# a short warm-up pass, then the timed passes (the mix again, later: time keeps going forward)
for ts, raw in packets[:5000]:
    pkt = decode_ip(raw, ts, stats)
    if pkt is not None:
        process(pkt)
shift += span
start, cpu_start = time.perf_counter(), time.process_time()
deadline = cpu_start + float(seconds)
while time.process_time() < deadline:
    for ts, raw in packets:
        pkt = decode_ip(raw, ts + shift, stats)
        if pkt is not None:
            process(pkt)
    done += len(packets)
    shift += span
wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({"pps": done / wall, "cpu_pps": done / cpu, "detectors": [d.name for d in dets]}))
"""

MODES = (
    ("intel", "engine_pps"),
    ("all", "engine_pps_all_detectors"),
    ("common", "engine_pps_common_detectors"),
)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def checkout(rev: str) -> Path:
    """A worktree of `rev` under /tmp (made once; an existing one at the same commit is kept)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    where = Path(tempfile.gettempdir()) / f"watchpost-before-{sha[:12]}"
    if not (where / "appliance").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), sha],
            check=True,
            capture_output=True,
        )
    return where


def _child(tree: Path, mix: Path, intel: Path, mode: str, seconds: float, names: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            *map(str, (mix, intel, mode, seconds, names, tree.resolve())),
        ],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.before_after", description=__doc__)
    ap.add_argument("--rev", default="217c4b7", help="the 'before' commit (default 217c4b7)")
    ap.add_argument("--after", default="", help="an 'after' commit (default: this tree)")
    ap.add_argument("--rounds", type=int, default=3, help="A/B pairs per figure (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--packets", type=int, default=60_000, help="packets in the mix")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.packets < 1000:
        ap.error("--rounds >= 1, --seconds > 0 and --packets >= 1000")

    from bench.engine import _intel
    from bench.mix import office_mix_timed

    before = checkout(args.rev)
    after = checkout(args.after) if args.after else ROOT
    trees = {"before": before, "after": after}
    load_start = _loadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mix = tmp / "mix.pickle"
        with open(mix, "wb") as f:
            pickle.dump(office_mix_timed(args.packets), f)
        _intel(tmp)  # writes tmp/bench-intel.txt: the same indicators for both
        intel = tmp / "bench-intel.txt"
        have = {k: set(_child(t, mix, intel, "names", 0, "")) for k, t in trees.items()}
        common = ",".join(sorted(have["before"] & have["after"]))
        result: dict[str, Any] = {
            "before_rev": args.rev,
            "after_rev": args.after or "working tree",
            "packets_in_mix": args.packets,
            "detectors_before": sorted(have["before"]),
            "detectors_after": sorted(have["after"]),
        }
        for mode, figure in MODES:
            runs: dict[str, list[float]] = {"before": [], "after": []}
            cpu_runs: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.rounds):
                for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    r = _child(trees[side], mix, intel, mode, args.seconds, common)
                    runs[side].append(round(r["pps"]))
                    cpu_runs[side].append(round(r["cpu_pps"]))
                    print(f"bench.before_after: {figure} {side} {r['pps']:,.0f} pps, "
                          f"{r['cpu_pps']:,.0f} per CPU second (load {_loadavg()})",
                          file=sys.stderr, flush=True)  # fmt: skip
            for suffix, got in (("", runs), ("_per_cpu_s", cpu_runs)):
                b, a = statistics.median(got["before"]), statistics.median(got["after"])
                result[f"{figure}{suffix}_before"] = round(b)
                result[f"{figure}{suffix}_after"] = round(a)
                result[f"{figure}{suffix}_after_vs_before"] = round(a / b, 2)
                result[f"{figure}{suffix}_runs"] = got
    result["loadavg_start"] = load_start
    result["loadavg_end"] = _loadavg()
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
