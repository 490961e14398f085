"""Helpers for the daemon's kernel-side tests: daemons in the lab, readers of kernel state."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.netns import DEMO_INTEL, Lab, LabDaemon, lab_config

# Run inside the appliance namespace: remove whatever ruleset is there, print what is left.
_REMOVE = """
from appliance.config import Config
from appliance.inline.firewall import Firewall
Firewall(Config()).remove()
"""

_COUNTS = """
import dataclasses, json
from appliance.config import Config
from appliance.inline.firewall import Firewall
from appliance.inline.queue import queue_table
fw = Firewall(Config())
print(json.dumps({"counters": dataclasses.asdict(fw.counters()), "blocked": fw.blocked(),
                  "queues": queue_table()}))
"""


def in_app(lab: Lab, code: str) -> str:
    return lab.exec("app", sys.executable, "-c", code).stdout


def kernel(lab: Lab) -> dict[str, Any]:
    """Our rule counters, drop-set contents and the bound queues in the appliance namespace."""
    out = json.loads(in_app(lab, _COUNTS))
    out["queues"] = {int(k): v for k, v in out["queues"].items()}
    return out


def ruleset(lab: Lab) -> dict[str, str | None]:
    """What of ours is in the appliance's kernel: the table and the iptables rules (as text)."""
    table = lab.exec("app", "nft", "list", "table", "inet", "watchpost", check=False)
    return {
        "table": table.stdout if table.returncode == 0 else None,
        "ipt4": lab.exec("app", "iptables", "-w", "-S").stdout,
        "ipt6": lab.exec("app", "ip6tables", "-w", "-S").stdout,
        "all": lab.exec("app", "nft", "list", "ruleset").stdout,
    }


def nothing_of_ours(rs: dict[str, str | None]) -> bool:
    text = f"{rs['table']}{rs['ipt4']}{rs['ipt6']}{rs['all']}"
    return rs["table"] is None and "WATCHPOST" not in text and "watchpost" not in text


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def eve(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ping(lab: Lab, src: str, dst: str, count: int = 3, interval: float = 0.2) -> int:
    """Replies received."""
    res = lab.exec(
        src, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", dst,
        check=False, timeout=count * interval + 10,
    )  # fmt: skip
    for part in res.stdout.split(","):
        if part.strip().endswith("received"):
            return int(part.split()[0])
    raise AssertionError(f"no ping summary: {res.stdout} {res.stderr}")


class Daemons:
    """Start daemons in the lab for one test; anything still running afterwards is stopped and
    the ruleset removed, so the next test starts from a plain bridge."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp = tmp_path
        self.started: list[LabDaemon] = []
        self.n = 0

    def config(self, mode: str = "monitor", intel: str = DEMO_INTEL, **sections: Any) -> Path:
        self.n += 1
        return lab_config(self.tmp / f"d{self.n}", mode=mode, intel=intel, **sections)

    def start(self, config: Path | None = None, **kw: Any) -> LabDaemon:
        d = LabDaemon(self.lab, config or self.config(**kw))
        self.started.append(d)
        d.start(timeout=60)
        # Fully up: READY=1 comes after the ruleset, when the packet loop is about to run.
        wait_for(lambda: "READY=1" in "\n".join(d.notices).split("\n"), 30, "READY=1")
        return d

    def kill9(self, d: LabDaemon) -> None:
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
        d.close()

    def cleanup(self) -> None:
        for d in self.started:
            if d.alive():
                d.stop()
            d.close()
        in_app(self.lab, _REMOVE)
