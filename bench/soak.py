"""`make soak` (``python -m bench.soak``): a bounded soak run; NOT part of `make test`.

Phase 1, inline (about 60 % of ``SOAK_SECONDS``, default 600): the daemon in the namespace lab,
reporting to the lab hub (mosquitto with TLS and the hub's collector with its store), under
office traffic from pc1 (DNS lookups, listed names now and then, HTTP requests in a bounded
loop), an nmap SYN scan of pc2 from atk every 60 s, one bounded SYN flood (hping3, 20 000
packets) half-way, a config reload (SIGHUP) every 30 s, and a HUB OUTAGE: the broker is stopped
from 25 % to 45 % of the phase (a scan runs meanwhile, so alerts wait in the device's outbox),
then started again. Sampled every 2 s: the daemon's RSS and packets/s reaching the queue (kernel
counters), fail-open events (queue and user drops), the daemon log's tracebacks. At the end the
daemon is stopped (which reports every open aggregation window) and started once more, so its
outbox drains: ``alerts_lost`` counts the alerts the device made (the seqs in its EVE log) that
are not in the hub's store within 60 s (must be 0), ``hub_seq_gaps`` the store's open gaps.

Phase 2, fuzz (``SOAK_FUZZ`` packets, default 1 000 000, bounded by the rest of the time): the
honest office mix, truncated at random lengths, with random bytes flipped and headers spliced,
through decode + engine + all detectors, with 500 ET-style rules loaded (`bench.rules`), in this
process; exceptions escaping decode or the engine and detector hook errors are counted; RSS and
packets/s sampled.

Writes ``soak.json`` and ``soak.png`` (RSS and packets/s over the run) into ``SOAK_OUT`` (default
``./soak-out``) and prints the JSON. Only lab addresses; every loop bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def inline_phase(seconds: float, samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    from lab.hub import start_lab_hub
    from lab.netns import Lab, LabDaemon, lab_config, stop

    lab = Lab(f"wps{os.getpid() % 100000}")
    tmp = tempfile.mkdtemp(prefix="watchpost-soak-")
    procs = []
    out: dict[str, Any] = {}
    hub = None
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
        outage = (start + seconds * 0.25, start + seconds * 0.45)
        last_q, last_t = 0, time.monotonic()
        next_scan = next_reload = time.monotonic() + 10
        flooded = hub_down = False
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
            if not flooded and now >= end - seconds / 2:
                procs.append(lab.popen("atk", "hping3", "-q", "-S", "-p", "80", "-i", "u200",
                                       "-c", "20000", lab.addr("pc2"), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))  # fmt: skip
                flooded = True
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
            "reloads": reloads, "scans": scans, "syn_flood_packets": 20000 if flooded else 0,
            "hub_outages": outages, "hub_outage_seconds": round(outage[1] - outage[0], 1),
            "daemon_tracebacks": text.count("Traceback"),
            "alerts_eve_lines": len(made), "alerts_made": len(made),
            "alerts_stored_at_hub": len(made & stored), "alerts_lost": len(made - stored),
            "hub_seq_gaps": len(hub.stored()[2]), "queued_packets": last_q,
        })  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p, 3)
        if hub is not None:
            hub.stop()
        lab.down()
    return out


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


def fuzz_phase(n: int, seconds: float, samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    from appliance.alerts.pipeline import AlertPipeline
    from appliance.config import from_dict
    from appliance.detect.engine import Engine
    from appliance.packet.decode import DecodeStats, decode_ip
    from bench.engine import _intel
    from bench.mix import office_mix_timed
    from bench.rules import generate

    d = tempfile.mkdtemp(prefix="watchpost-soak-fuzz-")
    try:
        store = _intel(Path(d))
        rules = Path(d) / "soak.rules"
        rules.write_text(generate(500))
        config = from_dict({"device": {"id": "soak", "site": "soak"},
                            "inline": {"home_nets": ["198.18.0.0/24"]},
                            "detect": {"rules": {"paths": [str(rules)]}}})  # fmt: skip
        pipeline = AlertPipeline(config, [])
        engine = Engine(config, store, pipeline)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    base = office_mix_timed(40_000, seed=5)
    engine.tickers.append(pipeline.tick)
    stats = DecodeStats()
    rng = random.Random(1)
    escaped = 0
    first_error = ""
    end = time.monotonic() + seconds
    done = 0
    shift = 0.0
    span = base[-1][0] - base[0][0] + 1
    last_t, last_done = time.monotonic(), 0
    while done < n and time.monotonic() < end:
        for ts, raw in base:
            other = base[rng.randrange(len(base))][1]
            try:
                pkt = decode_ip(_mutate(rng, raw, other), ts + shift, stats)
                if pkt is not None:
                    engine.process(pkt)
            except Exception as e:  # must never happen: counted, the first one shown
                escaped += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
            done += 1
            if done % 1000 == 0 and time.monotonic() >= end:
                break
            if done % 10_000 == 0:
                t = time.monotonic()
                samples.append({"t": round(t - t0, 1), "phase": "fuzz",
                                "rss_mb": _rss_mb(os.getpid()),
                                "pps": (done - last_done) / max(1e-3, t - last_t)})  # fmt: skip
                last_t, last_done = t, done
            if done >= n:
                break
        shift += span
    return {
        "fuzz_packets": done,
        "fuzz_decoded": stats.ok,
        "fuzz_malformed": stats.malformed,
        "fuzz_exceptions": escaped,
        "fuzz_first_exception": first_error,
        "fuzz_hook_errors": sum(engine.stats.hook_errors.values()),
        "fuzz_hook_errors_by_hook": dict(engine.stats.hook_errors),
        "fuzz_alerts": pipeline.emitted,
        "fuzz_rules_loaded": len(engine_rules(engine)),
    }


def engine_rules(engine: Any) -> list[Any]:
    det = next(d for d in engine.detectors if d.name == "rules")
    return list(det.ruleset.rules) if det.ruleset is not None else []


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for phase, colour in (("inline", "tab:blue"), ("fuzz", "tab:orange")):
        xs = [s["t"] for s in samples if s["phase"] == phase]
        ax1.plot(xs, [s["rss_mb"] for s in samples if s["phase"] == phase], colour, label=phase)
        ax2.plot(xs, [s["pps"] for s in samples if s["phase"] == phase], colour, label=phase)
    ax1.set_ylabel("RSS (MB)")
    ax1.set_title("watchpost soak: daemon RSS (inline), fuzzing process RSS (fuzz)")
    ax2.set_ylabel("packets/s")
    ax2.set_xlabel("seconds")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def flat_after_warmup(samples: list[dict[str, Any]], phase: str) -> dict[str, float]:
    rss = [s["rss_mb"] for s in samples if s["phase"] == phase]
    if len(rss) < 4:
        return {}
    warm = rss[len(rss) // 4 :]
    return {f"{phase}_rss_mb_after_warmup_first": round(warm[0], 1),
            f"{phase}_rss_mb_last": round(warm[-1], 1),
            f"{phase}_rss_mb_growth_after_warmup": round(warm[-1] - warm[0], 1)}  # fmt: skip


def main() -> int:
    total = float(os.environ.get("SOAK_SECONDS", "600"))
    n_fuzz = int(os.environ.get("SOAK_FUZZ", "1000000"))
    out_dir = Path(os.environ.get("SOAK_OUT", "soak-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    result: dict[str, Any] = {"soak_seconds": total}
    _log(f"inline phase: {total * 0.6:.0f} s")
    result.update(inline_phase(total * 0.6, samples, t0))
    _log(f"fuzz phase: {n_fuzz} packets, at most {total - (time.monotonic() - t0):.0f} s")
    result.update(fuzz_phase(n_fuzz, max(10.0, total - (time.monotonic() - t0)), samples, t0))
    result.update(flat_after_warmup(samples, "inline"))
    result.update(flat_after_warmup(samples, "fuzz"))
    result["samples"] = samples
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1))
    plot(samples, out_dir / "soak.png")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, sort_keys=True))
    ok = (
        result["fuzz_exceptions"] == 0
        and result.get("daemon_tracebacks", 0) == 0
        and result.get("alerts_lost", 0) == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
