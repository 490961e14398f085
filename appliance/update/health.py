"""The health check after a switch: a pure judgement over samples, and the probes that take them.

`judge(before, sample)` says what is still wrong with one sample (None when healthy):

- the daemon's unit is `active` (systemd's ActiveState; `Type=notify`, so active means READY);
  `failed`, or a restart counter that moved since the switch, means it crashed on start;
- it judges packets: the packet counter grows (when it grew before the update; a quiet office
  with no traffic is not held against the release);
- the hub link is in the state it was in before the update (connected before -> connected now);
- it is a new start of the daemon (the restart is asked without waiting: until then the old
  process answers), when the probe tells starts apart (systemd's main PID start time).

`wait_healthy` samples until every check passes or the deadline passes, and returns the reason
of the last failing check. A crash is final at once: there is no point in waiting it out.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNIT = "watchpost.service"
DEFAULT_DEADLINE_S = 120.0
DEFAULT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Sample:
    """One look at the daemon: unit state, restarts, packets seen, hub link up."""

    active_state: str
    restarts: int = 0
    packets: int | None = None
    hub_connected: bool | None = None
    started: str | None = None  # which start of the unit this is (its main PID's start time)


@dataclass(frozen=True)
class Baseline:
    """What held before the update (taken from two samples a few seconds apart)."""

    restarts: int = 0
    packets: int | None = None
    packets_growing: bool = False
    hub_connected: bool | None = None
    started: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "restarts": self.restarts,
            "packets": self.packets,
            "packets_growing": self.packets_growing,
            "hub_connected": self.hub_connected,
            "started": self.started,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        return cls(
            restarts=int(d.get("restarts") or 0),
            packets=d.get("packets"),
            packets_growing=bool(d.get("packets_growing")),
            hub_connected=d.get("hub_connected"),
            started=d.get("started"),
        )


def baseline(first: Sample, second: Sample) -> Baseline:
    growing = (
        first.packets is not None and second.packets is not None and second.packets > first.packets
    )
    return Baseline(second.restarts, second.packets, growing, second.hub_connected, second.started)


class Crashed(Exception):
    """The daemon failed on start: roll back now."""


def judge(before: Baseline, first: Sample | None, sample: Sample) -> str | None:
    """What is wrong with `sample` (None: healthy). Raises Crashed for a crash on start.
    `first` is the first sample after the switch (packet growth is measured from it)."""
    if sample.active_state == "failed":
        raise Crashed("the daemon crashed on start (systemd ActiveState=failed)")
    if sample.restarts > before.restarts:
        raise Crashed(
            f"the daemon crashed on start (restarted {sample.restarts - before.restarts} times)"
        )
    if sample.active_state != "active":
        return f"the daemon is not ready (systemd ActiveState={sample.active_state})"
    if before.started is not None and sample.started == before.started:
        # A restart is asked without waiting: until the new process runs, the old one answers.
        return "the daemon has not restarted yet (the old process still runs)"
    if before.packets_growing:
        start = first.packets if first is not None else None
        if sample.packets is None:
            return "the daemon reports no packet count"
        if start is None or sample.packets <= start:
            return "the daemon judges no packets (its packet count does not grow)"
    if before.hub_connected and not sample.hub_connected:
        return "the daemon never reached the hub (the link was up before the update)"
    return None


def wait_healthy(
    before: Baseline,
    probe: Callable[[], Sample],
    deadline_s: float = DEFAULT_DEADLINE_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None when healthy within the deadline, else the reason (crash or last failing check)."""
    end = clock() + deadline_s
    first: Sample | None = None
    reason = "no sample was taken"
    while True:
        try:
            sample = probe()
        except OSError as e:
            sample = None
            reason = f"the health probe failed: {e}"
        if sample is not None:
            if first is None:
                first = sample
            try:
                problem = judge(before, first, sample)
            except Crashed as e:
                return str(e)
            if problem is None and (not before.packets_growing or sample is not first):
                return None
            reason = problem or "the daemon judges no packets (its packet count does not grow)"
        if clock() >= end:
            return f"{reason}; deadline {deadline_s:g} s passed"
        sleep(interval_s)


# --- probes ------------------------------------------------------------------------------------

_METRIC = re.compile(r"^(watchpost_[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


def parse_metrics(text: str) -> tuple[int | None, bool | None]:
    """(packets, hub connected) from the status page's /metrics text."""
    values = {m.group(1): float(m.group(2)) for m in _METRIC.finditer(text)}
    packets = values.get("watchpost_packets_total", values.get("watchpost_packets"))
    hub = values.get("watchpost_hub_connected")
    enabled = values.get("watchpost_hub_enabled")
    return (
        None if packets is None else int(packets),
        None if hub is None or not enabled else bool(hub),
    )


def _loopback_tls() -> ssl.SSLContext:
    """The page's certificate is self-signed and its name is the device's: on loopback (the
    device asking itself) there is no one in between to authenticate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_LOOPBACK_TLS = _loopback_tls()


class SystemdProbe:
    """ActiveState and NRestarts from `systemctl show`; packets and the hub link from the status
    page's /metrics, asked from the device itself (loopback needs no login)."""

    def __init__(self, unit: str = UNIT, metrics_url: str = "https://127.0.0.1:8080/metrics"):
        self.unit = unit
        self.metrics_url = metrics_url

    def __call__(self) -> Sample:
        res = subprocess.run(
            ["systemctl", "show", "-p", "ActiveState", "-p", "NRestarts", "-p",
             "ExecMainStartTimestampMonotonic", self.unit],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise OSError(f"systemctl show {self.unit}: {res.stderr.strip()}")
        props = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        packets: int | None = None
        hub: bool | None = None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5, context=_LOOPBACK_TLS) as r:
                packets, hub = parse_metrics(r.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass  # not up yet: the checks say what is missing
        started = props.get("ExecMainStartTimestampMonotonic") or None
        return Sample(
            props.get("ActiveState", "unknown"),
            int(props.get("NRestarts") or 0),
            packets,
            hub,
            None if started in (None, "0") else started,
        )

    def restart(self) -> None:
        res = subprocess.run(
            ["systemctl", "restart", "--no-block", self.unit],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise OSError(f"systemctl restart {self.unit}: {res.stderr.strip()}")


class FileProbe:
    """Lab and test probe: each sample is the JSON object in a file ({"active_state", "restarts",
    "packets", "hub_connected"}); a restart is logged to `<file>.restarts`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self) -> Sample:
        d = json.loads(self.path.read_text())
        return Sample(
            str(d.get("active_state", "unknown")),
            int(d.get("restarts") or 0),
            d.get("packets"),
            d.get("hub_connected"),
            None if d.get("pid") is None else str(d.get("pid")),
        )

    def restart(self) -> None:
        with open(self.path.with_name(self.path.name + ".restarts"), "a") as f:
            f.write(f"{time.time()}\n")
