"""Shared lab set-up for the content detectors' integration tests (dga, dns-tunnel, web,
cleartext): the daemon inline in the lab with its EVE alerts (`behaviour_lab.Watch`), and the
real tools that make the traffic: dig against the lab resolver, curl, Python clients.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.netns import Lab, LabDaemon, lab_config, stop

from .behaviour_lab import Alert, Watch

RESOLVER = "203.0.113.53"
ALERTS = {"window": 2.0, "rate_per_minute": 10_000, "burst": 1000}


def start_watch(lab: Lab, workdir: Path, **sections: dict[str, Any]) -> Watch:
    """The daemon in the lab with `sections` (e.g. ``detect={...}``) over the lab config."""
    cfg = lab_config(workdir, alerts=ALERTS, **sections)
    daemon = LabDaemon(lab, cfg).start()
    return Watch(lab, daemon, cfg, workdir)


@contextlib.contextmanager
def capture(watch: Watch, name: str) -> Iterator[Path]:
    """Whole packets on the appliance's uplink port for the duration of the block (HTTP heads
    are longer than `Watch.capture`'s 256-byte snap length)."""
    pcap = watch.workdir / f"{name}.pcap"
    proc = watch.lab.popen(
        "app", "tcpdump", "-i", "uplink", "-U", "--immediate-mode", "-n", "-s", "0",
        "-B", "8192", "-w", str(pcap), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on uplink ..." once the capture runs
        yield pcap
        time.sleep(0.5)  # the last answers
    finally:
        stop(proc)


def dig_batch(
    watch: Watch, host: str, names: list[str], qtype: str = "A", name: str = "names"
) -> str:
    """Look every name up with one `dig -f` run from `host` against the lab resolver."""
    batch = watch.workdir / f"{name}-{host}.txt"
    batch.write_text("".join(f"{n} {qtype}\n" for n in names))
    res = watch.lab.exec(
        host,
        "dig",
        f"@{RESOLVER}",
        "+tries=1",
        "+time=2",
        "+noall",
        "+comments",
        "-f",
        str(batch),
        timeout=60 + len(names),
        check=False,
    )
    return res.stdout


def python(watch: Watch, host: str, script: str, *args: str, timeout: float = 60.0):
    """Run a small Python client inside a lab host."""
    return watch.lab.exec(host, sys.executable, "-c", script, *args, timeout=timeout, check=False)


def sids(alerts: list[Alert]) -> set[int]:
    return {a["alert"]["signature_id"] for a in alerts}


def from_host(alerts: list[Alert], src: str) -> list[Alert]:
    return [a for a in alerts if a["src_ip"] == src]
