"""The shipped unit keeps inspection alive and contained: exposure <= 2.0, no start-limit
lock-out, bounded memory, /etc/watchpost read-only, and the daemon works in the lab under the
unit's own syscall filter and W^X memory rule (as systemd would apply them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.netns import DEMO_INTEL, Lab, LabDaemon, lab_config

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "systemd" / "watchpost.service"
SANDBOX = Path(__file__).with_name("unit_sandbox.py")


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_exposure_is_at_most_2() -> None:
    for unit in ("watchpost.service", "watchpost-fault.service"):
        res = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(REPO / "systemd" / unit)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
        assert m, res.stdout + res.stderr
        assert float(m.group(1)) <= 2.0, f"{unit}: {m.group(1)}\n{res.stdout}"


def test_never_locked_out_bounded_and_office_config_read_only() -> None:
    s = settings(UNIT)
    assert s["StartLimitIntervalSec"] == ["0"]  # no permanent start-limit lock-out
    assert s["Restart"] == ["always"] and s["OnFailure"] == ["watchpost-fault.service"]
    assert s["MemoryMax"] and s["MemoryDenyWriteExecute"] == ["yes"]
    assert "IPAddressDeny" in s and "IPAddressAllow" in s
    assert all("/etc/watchpost" not in v for v in s["ReadWritePaths"])
    assert "-/etc/watchpost" in s["ReadOnlyPaths"]
    fault = settings(REPO / "systemd" / "watchpost-fault.service")
    assert "fault-leds" in fault["ExecStart"][0]
    rotate = (REPO / "systemd" / "logrotate-watchpost").read_text()
    assert "/var/log/watchpost/eve.json" in rotate and "size" in rotate


@pytest.mark.root
def test_the_daemon_runs_under_the_units_syscall_filter(lab: Lab, tmp_path: Path) -> None:
    if subprocess.run(["/usr/bin/python3", "-c", "import seccomp"], check=False).returncode:
        pytest.skip("python3-seccomp is not installed (.ci/bootstrap installs it)")
    cfg = lab_config(tmp_path, mode="block", intel=DEMO_INTEL)
    wrapper = ["/usr/bin/python3", str(SANDBOX), str(UNIT), "--"]
    daemon = LabDaemon(lab, cfg, wrapper=wrapper).start()
    try:
        ping = lab.exec("pc1", "ping", "-c", "3", "-i", "0.2", "-W", "2", "203.0.113.10",
                        check=False, timeout=20)  # fmt: skip
        assert ping.returncode == 0, daemon.log_tail()
        rules = lab.exec("app", "nft", "list", "table", "inet", "watchpost", check=False)
        assert rules.returncode == 0, rules.stderr  # nft ran under the filter too
        lab.exec("pc1", "curl", "-s", "-m", "2", "http://203.0.113.66/", check=False, timeout=10)
        assert daemon.alive(), daemon.log_tail(20)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_tail(20)
    log = (tmp_path / "daemon.log").read_text()
    assert "Operation not permitted" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_each_start_resolves_the_hub_again_and_never_blocks_the_start() -> None:
    """ExecStartPre= runs `watchpost hub-addresses` before the daemon (so before the link
    connects), as root outside the sandbox ("+": it writes the drop-in) and never failing the
    start ("-"); the CLI takes that command line."""
    (pre,) = settings(UNIT)["ExecStartPre"]
    prefix, _, command = pre.partition("/")
    assert sorted(prefix) == ["+", "-"]
    words = ("/" + command).split()
    assert words[:2] == ["/opt/watchpost/bin/watchpost", "hub-addresses"]
    assert words[2:] == ["--config", "/etc/watchpost/watchpost.toml"]
    r = subprocess.run(
        [sys.executable, "-m", "appliance", *words[1:], "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
