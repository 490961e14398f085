"""`make soak` (``python -m bench.soak``): a bounded soak run; NOT part of `make test`.

Phase 1, inline (about 60 % of ``SOAK_SECONDS``, default 600): the daemon in the namespace lab,
reporting to the lab hub (mosquitto with TLS and the hub's collector with its store), under
office traffic from pc1 (DNS lookups, listed names now and then, HTTP requests in a bounded
loop), an nmap SYN scan of pc2 from atk every 60 s, two bounded SYN floods (hping3, 20 000
packets each) at 10 % and 70 % of the phase, a config reload (SIGHUP) every 30 s, and a HUB
OUTAGE: the broker is stopped from 25 % to 45 % of the phase (a scan runs meanwhile, so alerts
wait in the device's outbox), then started again. Sampled every 2 s: the daemon's RSS and
packets/s reaching the queue (kernel counters), fail-open events (queue and user drops), the
daemon log's tracebacks. At the end the daemon is stopped (which reports every open aggregation
window) and started once more, so its outbox drains: ``alerts_lost`` counts the alerts the
device made (the seqs in its EVE log) that are not in the hub's store within 60 s (must be 0),
``hub_seq_gaps`` the store's open gaps.

Phase 2, fuzz (at least ``SOAK_FUZZ`` packets, default 1 000 000, bounded by the rest of the
time): the honest office mix, truncated at random lengths, with random bytes flipped and headers
spliced, through decode + engine + all detectors, with 500 ET-style rules loaded
(`bench.rules`), in this process, on an engine whose state dir is a temp dir (removed only once
the engine's background loads are done). Each pass over the mix moves its office hosts to
198.18.<pass>.x and the mix runs at 2x its rate, so every pass is new flows and hosts: the flow
table (``SOAK_MAX_FLOWS``, default the config's ``inline.max_flows``) reaches its bound and
evicts. Exceptions escaping decode or the engine and detector hook errors are counted; RSS,
packets/s, flows and the size of every part's state (flows, names, each detector's containers,
the aggregator) sampled.

Warm-up and flatness. Inline: warm-up is the first 25 % of the phase (start-up, intel and rules,
the first scans and reloads); the outage, the flood and the restarts come after it. Fuzz:
warm-up ends at the first sample where the flow table is evicting, at least 10 % of
``SOAK_FUZZ`` is done and no part's state peak grew by more than 5 % over the last 25 % of the
packets (each part at its count or time bound); the phase then runs on until as many packets
followed warm-up as preceded it (at most 3x ``SOAK_FUZZ`` and the time left). Per phase,
``<phase>_rss_growth_after_warmup_mb`` is the median RSS of the last 10 % of the samples after
warm-up minus that of the first 10 %; ``rss_flat`` says every phase's growth is at most its
``<phase>_rss_growth_limit_mb`` (inline 4 MB, fuzz 8 MB); a phase whose warm-up never ended is
not judged and is not flat (``fuzz_state_still_growing`` names the parts that kept growing).
``SOAK_TRACEMALLOC=1``: traces allocations from warm-up on and lists in
``fuzz_tracemalloc_growth`` what grew from half-way after warm-up to the end (where a leak is);
tracing grows the RSS itself, so such a run's fuzz RSS is not judged (not flat).
``SOAK_PHASES=fuzz`` runs the fuzz phase only (no lab, no root).

Writes ``soak.json`` and ``soak.png`` (RSS, packets/s and the fuzz engine's flows over the run,
each phase's warm-up shaded) into ``SOAK_OUT`` (default ``./soak-out``, with the inline
daemon's log), prints the JSON and exits 1 unless ``ok``: flat, no exception or traceback, no
alert lost. Only lab addresses; every loop bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

TRAFFIC = r"""
import socket, sys, time, urllib.request
end = time.monotonic() + float(sys.argv[1])
names = ["www.example.com", "files.example.com", "example.com", "nx%d.example.com"]
listed = ["c2.example.net", "login-update.example.org"]
i = 0
while time.monotonic() < end and i < 1_000_000:
    i += 1
    try:
        socket.getaddrinfo(names[i % 4].replace("%d", str(i)), 80)
        if i % 50 == 0:
            socket.getaddrinfo(listed[i // 50 % 2], 80)
    except OSError:
        pass
    try:
        urllib.request.urlopen("http://203.0.113.10/", timeout=2).read()
    except Exception:
        pass
    time.sleep(0.02)
"""


def _log(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _eve_seqs(path: Path) -> list[int]:
    """The seqs of the alerts in a daemon's EVE log (numbered by its outbox)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.append(int(json.loads(line)["watchpost"]["seq"]))
    return out


def _broker_restart(lab: Any, hub: Any) -> None:
    """Start the lab hub's mosquitto again with its config (persistent sessions survive)."""
    conf = next(Path(hub.conf_dir).glob("*.conf"))
    with open(hub.log, "ab") as out:
        hub.proc = lab.popen("hub", "mosquitto", "-c", str(conf), stdout=out, stderr=out)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        res = lab.exec("hub", "ss", "-Hltn", f"sport = :{hub.port}", check=False)
        if res.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError("the lab hub's broker did not come back")


def inline_phase(
    seconds: float, samples: list[dict[str, Any]], t0: float, out_dir: Path
) -> dict[str, Any]:
    from lab.hub import start_lab_hub
    from lab.netns import Lab, LabDaemon, lab_config, stop

    lab = Lab(f"wps{os.getpid() % 100000}")
    tmp = tempfile.mkdtemp(prefix="watchpost-soak-")
    procs = []
    out: dict[str, Any] = {}
    hub = None
    daemon = None
    try:
        lab.up()
        procs.append(lab.start_http("web", 80))
        hub = start_lab_hub(lab, tmp)
        state = Path(tmp) / "state"
        config = lab_config(tmp, hub={**hub.hub_table, "outbox": str(state / "outbox.sqlite")},
                            alerts={"rate_per_minute": 10_000, "burst": 10_000})  # fmt: skip
        daemon = LabDaemon(lab, config).start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        procs.append(lab.popen("pc1", sys.executable, "-c", TRAFFIC, str(seconds),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        start = time.monotonic()
        end = start + seconds
        out["inline_warmup_end_t"] = round(start - t0 + seconds * INLINE_WARMUP_SHARE, 1)
        outage = (start + seconds * 0.25, start + seconds * 0.45)
        last_q, last_t = 0, time.monotonic()
        next_scan = next_reload = time.monotonic() + 10
        floods = 0
        hub_down = False
        reloads = scans = outages = 0

        def scan() -> None:
            procs.append(lab.popen("atk", "nmap", "-n", "-Pn", "-sS", "-p", "1-300",
                                   "--max-rate", "300", lab.addr("pc2"),
                                   stdout=subprocess.DEVNULL))  # fmt: skip

        while time.monotonic() < end and daemon.alive():
            now = time.monotonic()
            if now >= next_reload:
                os.kill(pid, signal.SIGHUP)
                reloads += 1
                next_reload = now + 30
            if now >= next_scan:
                scan()
                scans += 1
                next_scan = now + 60
            if not hub_down and not outages and now >= outage[0]:
                _log("hub outage: broker stopped")
                stop(hub.proc, 10)
                hub_down, outages = True, 1
                scan()  # alerts made while the hub is away
                scans += 1
            if hub_down and now >= outage[1]:
                _broker_restart(lab, hub)
                hub_down = False
                _log("hub outage over: broker started")
            if floods < len(FLOOD_AT) and now >= start + seconds * FLOOD_AT[floods]:
                procs.append(lab.popen("atk", "hping3", "-q", "-S", "-p", "80", "-i", "u200",
                                       "-c", "20000", lab.addr("pc2"), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))  # fmt: skip
                floods += 1
            qs = daemon.queues()
            q = sum(x["id_sequence"] for x in qs)
            t = time.monotonic()
            samples.append({"t": round(t - t0, 1), "phase": "inline", "rss_mb": _rss_mb(pid),
                            "pps": (q - last_q) / max(1e-3, t - last_t)})  # fmt: skip
            last_q, last_t = q, t
            out["fail_open_events"] = sum(x["queue_dropped"] + x["user_dropped"] for x in qs)
            time.sleep(2.0)
        if hub_down:
            _broker_restart(lab, hub)
        out["daemon_alive_at_end"] = daemon.alive()
        daemon.stop()  # reports every open aggregation window into the outbox
        log = Path(tmp) / "daemon.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        eve = Path(tmp) / "eve.json"
        made = set(_eve_seqs(eve))
        # Once more, so what the stop reported leaves the outbox too.
        daemon = LabDaemon(lab, config).start()
        deadline = time.monotonic() + 60
        stored: set[int] = set()
        while time.monotonic() < deadline:
            stored = set(hub.stored()[1])
            if made <= stored:
                break
            time.sleep(1.0)
        daemon.stop()
        out.update({
            "reloads": reloads, "scans": scans,
            "syn_floods": floods, "syn_flood_packets": 20000 * floods,
            "hub_outages": outages, "hub_outage_seconds": round(outage[1] - outage[0], 1),
            "daemon_tracebacks": text.count("Traceback"),
            "alerts_eve_lines": len(made), "alerts_made": len(made),
            "alerts_stored_at_hub": len(made & stored), "alerts_lost": len(made - stored),
            "hub_seq_gaps": len(hub.stored()[2]), "queued_packets": last_q,
        })  # fmt: skip
    finally:
        # Teardown in order: the daemon (stopped above, or by lab.down) and everything that
        # writes into the temp dir first, the dir last (its daemon log kept in SOAK_OUT).
        if daemon is not None and daemon.alive():
            daemon.stop()
        for p in procs:
            if p.poll() is None:
                stop(p, 3)
        if hub is not None:
            hub.stop()
        lab.down()
        with contextlib.suppress(OSError):
            shutil.copy(Path(tmp) / "daemon.log", out_dir / "daemon.log")
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# Fuzz phase shape: see the module docstring.
FUZZ_TIME_SCALE = 0.5  # the office mix at 2x its rate: a pass over it is ~10 s of packet time
FUZZ_MAX_FACTOR = 3  # the phase goes past SOAK_FUZZ packets to at most 3x, to run past warm-up
WARMUP_MIN_SHARE = 0.10  # warm-up lasts at least the first 10 % of a phase
# Fuzz warm-up is over once the flow table is at its bound (evicting) and the state of every
# part (flows, names, each detector, the aggregator) has grown by at most STATE_PLATEAU over
# the last STATE_LOOKBACK of the packets so far (each at its count or time bound).
STATE_PLATEAU = 0.05
STATE_LOOKBACK = 0.25
INLINE_WARMUP_SHARE = 0.25  # inline: start-up, intel and rules, the first scans and reloads
# and a SYN flood (the flow table and the scan state at their peak); the same flood again after
# warm-up must not grow the daemon
FLOOD_AT = (0.10, 0.70)
# RSS growth after warm-up allowed per phase (median of the last 10 % of the samples after
# warm-up minus that of the first 10 %): inline, the daemon (~70 MB); fuzz, the fuzzing process
# at 65 536 flows (~160 MB; about 5 %: one-off steps as tables settle, while a leak of 8 bytes
# a packet over the >= 1 M packets after warm-up passes it).
RSS_GROWTH_LIMIT_MB = {"inline": 4.0, "fuzz": 8.0}
OFFICE = b"\xc6\x12\x00"  # 198.18.0.x: the office hosts of the mix


def _spread(raw: bytes, k: int) -> bytes:
    """`raw` with its office address 198.18.0.x moved to 198.18.k.x: each pass over the mix is
    a new set of flows (and office hosts), so the flow table and per-host state fill up."""
    if len(raw) < 20 or (raw[12:15] != OFFICE and raw[16:19] != OFFICE):
        return raw
    b = bytearray(raw)
    if b[12:15] == OFFICE:
        b[14] = k
    if b[16:19] == OFFICE:
        b[18] = k
    return bytes(b)


def _table_mb(flows: Any) -> float:
    """The flow table's own hash tables (not the flows): they settle at their final capacity."""
    return round(sum(sys.getsizeof(d) for d, _ in flows._classes) / 2**20, 2)


def state_sizes(engine: Any, pipeline: Any) -> dict[str, int]:
    """How much state each part holds: the flow table's flows, the name cache's names, and per
    detector (and the aggregator) the entries of its containers (one level deep)."""
    out = {"flows": len(engine.flows), "names": len(engine.names._names)}
    parts = [(d.name, d) for d in engine.detectors] + [("aggregator", pipeline.aggregator)]
    for name, obj in parts:
        total = 0
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, dict | list | set | deque):
                total += len(value)
        out[name] = total
    return out


def _grown(history: list[tuple[int, dict[str, int]]]) -> list[str]:
    """The parts whose state peak grew by more than STATE_PLATEAU over the last
    STATE_LOOKBACK of the packets (peaks, so a cache that is cleared when full counts as
    bounded)."""
    if len(history) < 2:
        return sorted(history[-1][1]) if history else []
    done = history[-1][0]
    before = [sz for at, sz in history if at < done * (1 - STATE_LOOKBACK)] or [history[0][1]]
    out = []
    for k in history[-1][1]:
        then = max(sz.get(k, 0) for sz in before)
        now = max(sz.get(k, 0) for _, sz in history)
        if now > then * (1 + STATE_PLATEAU) + 8:
            out.append(k)
    return sorted(out)


def _mutate(rng: random.Random, raw: bytes, other: bytes) -> bytes:
    r = rng.random()
    if r < 0.35:
        return raw[: rng.randrange(len(raw) + 1)]
    b = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    if r > 0.85:
        cut = rng.randrange(len(b) + 1)
        b = b[:cut] + other[rng.randrange(len(other) + 1) :]
    return bytes(b)


def fuzz_phase(
    n: int,
    seconds: float,
    samples: list[dict[str, Any]],
    t0: float,
    *,
    max_flows: int = 0,
    trace: bool = False,
) -> dict[str, Any]:
    """The fuzz phase on a fresh engine whose state dir is a temp dir; `max_flows` (0: the
    config's default) is the flow table's bound; `trace`: tracemalloc, the allocations that
    grew after warm-up in ``fuzz_tracemalloc_growth``."""
    from appliance.alerts.pipeline import AlertPipeline
    from appliance.config import from_dict
    from appliance.detect.engine import Engine
    from bench.engine import _intel
    from bench.rules import generate

    d = tempfile.mkdtemp(prefix="watchpost-soak-fuzz-")
    engine = None
    try:
        store = _intel(Path(d))
        rules = Path(d) / "soak.rules"
        rules.write_text(generate(500))
        inline: dict[str, Any] = {"home_nets": ["198.18.0.0/16"]}
        if max_flows:
            inline["max_flows"] = max_flows
        # The state dir is ours: the rules detector looks there for the hub's bundles.
        config = from_dict({"device": {"id": "soak", "site": "soak", "state_dir": d},
                            "inline": inline,
                            "detect": {"rules": {"paths": [str(rules)]}}})  # fmt: skip
        pipeline = AlertPipeline(config, [])
        engine = Engine(config, store, pipeline)
        engine.tickers.append(pipeline.tick)
        return _fuzz(engine, pipeline, n, seconds, samples, t0, trace)
    finally:
        # Teardown in order: what loads from the directory is done before it goes.
        if engine is not None:
            quiesce(engine)
        shutil.rmtree(d, ignore_errors=True)


def quiesce(engine: Any, timeout: float = 30.0) -> None:
    """Wait for the engine's background loads (the rules detector's hub-bundle reload)."""
    for det in engine.detectors:
        wait = getattr(det, "_wait_reload", None)
        if wait is not None:
            wait(timeout)


def _fuzz(
    engine: Any,
    pipeline: Any,
    n: int,
    seconds: float,
    samples: list[dict[str, Any]],
    t0: float,
    trace: bool,
) -> dict[str, Any]:
    from appliance.packet.decode import DecodeStats, decode_ip
    from bench.mix import office_mix_timed

    base = office_mix_timed(40_000, seed=5)
    base0 = base[0][0]
    span = base[-1][0] - base0 + 1
    stats = DecodeStats()
    rng = random.Random(1)
    escaped = 0
    first_error = ""
    end = time.monotonic() + seconds
    most = n * FUZZ_MAX_FACTOR
    step = max(1000, min(10_000, n // 50))  # packets between samples (and stop checks)
    done = 0
    warm_at = 0  # packets at the end of warm-up (0: not reached)
    warm_t = 0.0
    at_warmup: dict[str, int] = {}
    history: list[tuple[int, dict[str, int]]] = []  # (packets, state sizes) per sample
    snap = None
    last_t, last_done = time.monotonic(), 0
    k = 0
    running = True
    while running:
        spread = k % 256
        shift = k * span
        k += 1
        for ts, raw in base:
            other = base[rng.randrange(len(base))][1]
            when = base0 + (ts - base0 + shift) * FUZZ_TIME_SCALE
            try:
                pkt = decode_ip(_mutate(rng, _spread(raw, spread), other), when, stats)
                if pkt is not None:
                    engine.process(pkt)
            except Exception as e:  # must never happen: counted, the first one shown
                escaped += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
            done += 1
            if done % step and done < most:
                continue
            t = time.monotonic()
            flows = engine.flows
            samples.append({"t": round(t - t0, 1), "phase": "fuzz",
                            "rss_mb": _rss_mb(os.getpid()),
                            "pps": (done - last_done) / max(1e-3, t - last_t),
                            "flows": len(flows),
                            "flow_table_mb": _table_mb(flows)})  # fmt: skip
            last_t, last_done = t, done
            sizes = state_sizes(engine, pipeline)
            history.append((done, sizes))
            samples[-1]["state"] = sizes
            warm = done >= n * WARMUP_MIN_SHARE and flows.evicted and not _grown(history)
            if not warm_at and warm:
                warm_at, warm_t, at_warmup = done, samples[-1]["t"], sizes
                if trace:
                    tracemalloc.start(3)
            if trace and warm_at and snap is None and done >= warm_at * 1.5:
                # Tracing since warm-up; by now the state has been replaced at least once, so
                # what grows from here to the end is growth, not churn.
                snap = tracemalloc.take_snapshot()
            past = done >= n and warm_at and done - warm_at >= warm_at
            if past or done >= most or t >= end:
                running = False
                break
    out: dict[str, Any] = {
        "fuzz_packets": done,
        "fuzz_packets_warmup": warm_at,
        "fuzz_packets_after_warmup": done - warm_at if warm_at else 0,
        "fuzz_warmup": f"at least {WARMUP_MIN_SHARE:.0%} of SOAK_FUZZ, the flow table at its "
        f"bound (evicting), every part's state grown <= {STATE_PLATEAU:.0%} over the last "
        f"{STATE_LOOKBACK:.0%} of the packets",
        "fuzz_warmup_end_t": warm_t if warm_at else None,
        "fuzz_max_flows": engine.flows.max_flows,
        "fuzz_flows_evicted": engine.flows.evicted,
        "fuzz_flows_expired": engine.flows.expired,
        "fuzz_state_at_warmup": at_warmup,
        "fuzz_state_at_end": state_sizes(engine, pipeline),
        "fuzz_state_still_growing": _grown(history),
        "fuzz_decoded": stats.ok,
        "fuzz_malformed": stats.malformed,
        "fuzz_exceptions": escaped,
        "fuzz_first_exception": first_error,
        "fuzz_hook_errors": sum(engine.stats.hook_errors.values()),
        "fuzz_hook_errors_by_hook": dict(engine.stats.hook_errors),
        "fuzz_alerts": pipeline.emitted,
        "fuzz_rules_loaded": len(engine_rules(engine)),
    }
    if trace:
        if snap is not None and tracemalloc.is_tracing():
            diff = tracemalloc.take_snapshot().compare_to(snap, "traceback")
            out["fuzz_tracemalloc_growth"] = [
                {"kb": round(s.size_diff / 1024, 1), "blocks": s.count_diff,
                 "where": [f"{f.filename}:{f.lineno}" for f in s.traceback]}
                for s in diff[:15]
            ]  # fmt: skip
        tracemalloc.stop()
    return out


def engine_rules(engine: Any) -> list[Any]:
    det = next(d for d in engine.detectors if d.name == "rules")
    return list(det.ruleset.rules) if det.ruleset is not None else []


def plot(samples: list[dict[str, Any]], warmup: dict[str, float | None], path: Path) -> None:
    """RSS, packets/s and the fuzz engine's flows over the run; each phase's warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for phase, colour in (("inline", "tab:blue"), ("fuzz", "tab:orange")):
        rows = [s for s in samples if s["phase"] == phase]
        if not rows:
            continue
        xs = [s["t"] for s in rows]
        ax1.plot(xs, [s["rss_mb"] for s in rows], colour, label=phase)
        ax2.plot(xs, [s["pps"] for s in rows], colour, label=phase)
        if phase == "fuzz":
            ax3.plot(xs, [s.get("flows", 0) for s in rows], colour, label="fuzz engine flows")
        warm = warmup.get(phase)
        end = warm if warm is not None else xs[-1]
        for ax in (ax1, ax2, ax3):
            ax.axvspan(xs[0], end, color=colour, alpha=0.12, lw=0)
            if warm is not None:
                ax.axvline(warm, color=colour, ls="--", lw=1)
    ax1.set_ylabel("RSS (MB)")
    ax1.set_title("watchpost soak: daemon RSS (inline), fuzzing process RSS (fuzz);\n"
                  "shaded: warm-up (dashed: its end; all shaded: bound never reached)")  # fmt: skip
    ax2.set_ylabel("packets/s")
    ax3.set_ylabel("flows")
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def judge_rss(samples: list[dict[str, Any]], phase: str, warm_t: float | None) -> dict[str, Any]:
    """RSS growth of `phase` after its warm-up (which ends at run time `warm_t`; None: never):
    the median of the last 10 % of the samples after warm-up minus that of the first 10 %."""
    post = [s["rss_mb"] for s in samples if s["phase"] == phase and warm_t is not None
            and s["t"] >= warm_t]  # fmt: skip
    out: dict[str, Any] = {
        f"{phase}_warmup_end_t": warm_t,
        f"{phase}_samples_after_warmup": len(post),
        f"{phase}_rss_growth_after_warmup_mb": None,
    }
    if len(post) >= 4:
        w = max(1, len(post) // 10)
        out[f"{phase}_rss_mb_at_warmup"] = round(statistics.median(post[:w]), 1)
        out[f"{phase}_rss_mb_last"] = round(statistics.median(post[-w:]), 1)
        out[f"{phase}_rss_mb_max"] = round(max(post), 1)
        growth = statistics.median(post[-w:]) - statistics.median(post[:w])
        out[f"{phase}_rss_growth_after_warmup_mb"] = round(growth, 1)
    return out


def run(
    total: float,
    n_fuzz: int,
    out_dir: Path,
    *,
    phases: tuple[str, ...] = ("inline", "fuzz"),
    max_flows: int = 0,
    trace: bool = False,
) -> dict[str, Any]:
    """The soak: the phases asked for, the judgement, ``soak.json`` and ``soak.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    result: dict[str, Any] = {"soak_seconds": total, "phases": list(phases)}
    if "inline" in phases:
        _log(f"inline phase: {total * 0.6:.0f} s")
        result.update(inline_phase(total * 0.6, samples, t0, out_dir))
    if "fuzz" in phases:
        left = max(10.0, total - (time.monotonic() - t0))
        _log(f"fuzz phase: {n_fuzz} packets (up to {n_fuzz * FUZZ_MAX_FACTOR} to run past "
             f"warm-up), at most {left:.0f} s")  # fmt: skip
        result.update(fuzz_phase(n_fuzz, left, samples, t0, max_flows=max_flows, trace=trace))
    warmup = {p: result.get(f"{p}_warmup_end_t") for p in phases}
    flat = []
    for p in phases:
        result.update(judge_rss(samples, p, warmup[p]))
        growth = result[f"{p}_rss_growth_after_warmup_mb"]
        result[f"{p}_rss_growth_limit_mb"] = RSS_GROWTH_LIMIT_MB[p]
        result[f"{p}_rss_flat"] = growth is not None and growth <= RSS_GROWTH_LIMIT_MB[p]
        if trace and p == "fuzz":  # tracemalloc's own tables grow the RSS: no judgement
            result["fuzz_rss_flat"] = False
            result["fuzz_rss_note"] = "traced (SOAK_TRACEMALLOC=1): RSS not judged"
        flat.append(result[f"{p}_rss_flat"])
    growths = [result[f"{p}_rss_growth_after_warmup_mb"] for p in phases]
    judged = all(g is not None for g in growths)
    result["rss_growth_after_warmup_mb"] = max(growths) if judged and growths else None
    result["rss_flat"] = bool(flat) and all(flat)
    if result.get("fuzz_packets_after_warmup") and growths and judged and "fuzz" in phases:
        per = (
            result["fuzz_rss_growth_after_warmup_mb"] * 2**20 / result["fuzz_packets_after_warmup"]
        )
        result["fuzz_rss_growth_bytes_per_packet"] = round(per, 2)
    result["ok"] = bool(
        result["rss_flat"]
        and result.get("fuzz_exceptions", 0) == 0
        and result.get("daemon_tracebacks", 0) == 0
        and result.get("alerts_lost", 0) == 0
    )
    result["samples"] = samples
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1))
    plot(samples, warmup, out_dir / "soak.png")
    return result


def main() -> int:
    result = run(
        float(os.environ.get("SOAK_SECONDS", "600")),
        int(os.environ.get("SOAK_FUZZ", "1000000")),
        Path(os.environ.get("SOAK_OUT", "soak-out")),
        phases=tuple(os.environ.get("SOAK_PHASES", "inline,fuzz").split(",")),
        max_flows=int(os.environ.get("SOAK_MAX_FLOWS", "0")),
        trace=os.environ.get("SOAK_TRACEMALLOC", "") == "1",
    )
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
