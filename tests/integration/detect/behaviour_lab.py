"""Shared lab set-up for the behaviour detectors' integration tests (portscan, bruteforce,
exposure, beacon): the daemon inline in the lab with windows short enough for tests, its EVE
alerts, and a capture of the uplink port for checking that `watchpost replay` agrees.

Each test module gets its own daemon (module fixture `watch`); the lab is the session's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lab.netns import Lab, LabDaemon, lab_config, stop

WATCHPOST = [sys.executable, "-m", "appliance"]

# Windows of seconds instead of minutes, so an episode ends (and its closing alert with the
# full count is written) within a test.
DETECT = {
    "portscan": {"window": 4.0, "probe_timeout": 1.5},
    "bruteforce": {"window": 6.0},
    "exposure": {"repeat": 5.0},
    "beacon": {
        "min_calls": 8,
        "min_period": 0.3,
        "max_period": 10.0,
        "min_span": 3.0,
        "burst": 0.15,
    },
}
ALERTS = {"window": 2.0, "rate_per_minute": 10_000, "burst": 1000}

Alert = dict[str, Any]


class Watch:
    """The daemon running in the lab, and ways to read what it reported."""

    def __init__(self, lab: Lab, daemon: LabDaemon, config: Path, workdir: Path) -> None:
        self.lab = lab
        self.daemon = daemon
        self.config = config
        self.workdir = workdir
        self.eve_path = workdir / "eve.json"

    def alerts(self) -> list[Alert]:
        try:
            lines = self.eve_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def mark(self) -> int:
        return len(self.alerts())

    def since(self, mark: int, detector: str | None = None) -> list[Alert]:
        out = self.alerts()[mark:]
        return [a for a in out if detector is None or a["watchpost"]["detector"] == detector]

    def wait(
        self,
        mark: int,
        done: Callable[[list[Alert]], bool],
        detector: str | None = None,
        timeout: float = 20.0,
    ) -> list[Alert]:
        """Alerts since `mark` once `done(alerts)` holds (or whatever came within `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.since(mark, detector)
            if done(got) or time.monotonic() > deadline:
                return got
            assert self.daemon.alive(), f"the daemon died: {self.daemon.log_tail()}"
            time.sleep(0.25)

    def settle(self, mark: int, detector: str, quiet: float = 8.0, timeout: float = 30.0):
        """Alerts since `mark` once no new one came for `quiet` seconds (episodes closed)."""
        deadline = time.monotonic() + timeout
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.since(mark, detector)
            if len(got) != last_n:
                last_n, last_change = len(got), time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                break
            time.sleep(0.25)
        return self.since(mark, detector)

    @contextlib.contextmanager
    def capture(self, name: str) -> Iterator[Path]:
        """tcpdump on the appliance's uplink port for the duration of the block."""
        pcap = self.workdir / f"{name}.pcap"
        proc = self.lab.popen(
            "app",
            "tcpdump",
            "-i",
            "uplink",
            "-U",
            "--immediate-mode",  # else packets in the last ring block are lost at the stop
            "-n",
            "-s",
            "256",
            "-B",
            "32768",  # KiB: a fast scan must not overrun the capture buffer
            "-w",
            str(pcap),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            proc.stderr.readline()  # "listening on uplink ..." once the capture runs
            yield pcap
            time.sleep(0.5)  # the last answers
        finally:
            stop(proc)

    def replay(self, pcap: Path) -> list[Alert]:
        res = subprocess.run(
            [*WATCHPOST, "replay", str(pcap), "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def ended(src: str, dst: str) -> Callable[[list[Alert]], bool]:
    """`Watch.wait` condition: an episode from `src` to `dst` was closed (its count is final)."""

    def done(alerts: list[Alert]) -> bool:
        return any(
            a["src_ip"] == src
            and a["dest_ip"] == dst
            and a["watchpost"].get("details", {}).get("status") == "ended"
            for a in alerts
        )

    return done


def totals(alerts: list[Alert], detector: str) -> Counter[tuple]:
    """Sum of counts per signature/source/destination: what must agree inline and in replay
    (how the counts split into alerts depends on when the aggregation windows closed)."""
    out: Counter[tuple] = Counter()
    for a in alerts:
        if a["watchpost"]["detector"] == detector:
            out[a["alert"]["signature_id"], a["src_ip"], a["dest_ip"]] += a["watchpost"]["count"]
    return out


def start_watch(lab: Lab, workdir: Path, **detect_overrides: dict[str, Any]) -> Watch:
    detect = {name: {**opts, **detect_overrides.get(name, {})} for name, opts in DETECT.items()}
    cfg = lab_config(workdir, alerts=ALERTS, detect=detect)
    daemon = LabDaemon(lab, cfg).start()
    return Watch(lab, daemon, cfg, workdir)
