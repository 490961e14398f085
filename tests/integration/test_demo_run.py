"""`watchpost demo` end to end: lab, daemon, traffic, alerts printed, everything removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.root


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def test_demo_with_duration_prints_intel_alert_and_cleans_up() -> None:
    prefix = f"wpd{os.getpid()}"
    argv = [sys.executable, "-m", "appliance", "demo", "--duration", "20", "--prefix", prefix]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    finally:
        leftover = _namespaces(prefix)
        if leftover:
            subprocess.run([sys.executable, "-m", "appliance", "lab", "down", "--prefix", prefix])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    alerts = [line for line in res.stdout.splitlines() if line.startswith("ALERT")]
    intel = [a for a in alerts if " intel " in a and "203.0.113.66" in a]
    assert intel, out[-3000:]
    assert f"lab {prefix} removed" in res.stdout
    assert leftover == []


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    prefix = f"wpi{os.getpid()}"
    argv = [sys.executable, "-m", "appliance", "demo", "--prefix", prefix]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("-- office"):
                break
        assert any(line.startswith("-- office") for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftover = _namespaces(prefix)
        if leftover:
            subprocess.run([sys.executable, "-m", "appliance", "lab", "down", "--prefix", prefix])
    assert proc.returncode == 0, "".join(lines) + rest
    assert "interrupted" in rest and f"lab {prefix} removed" in rest
    assert leftover == []
