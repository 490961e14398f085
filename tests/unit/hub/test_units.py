"""The hub's systemd units (hub/systemd/): systemd accepts them, and every command they start is
one the real `watchpost-hub` CLI takes, with options it knows."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub.operator.connection import EXIT_ERROR
from hub.rollout.command import EXIT_CRASH
from hub.rollout.state import DRIVER_STALE_S

UNITS = Path(__file__).parents[3] / "hub" / "systemd"
HUB_EXE = "/opt/watchpost-hub/bin/watchpost-hub"
CLI = [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())"]


def _exec_lines(unit: Path) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]


def _hub_args(exec_start: str) -> list[str]:
    """The `watchpost-hub` arguments an ExecStart line runs (systemd's %i as "1")."""
    words = shlex.split(exec_start.replace("%i", "1").replace("%%", "%"))
    if words[:2] == ["/bin/sh", "-c"]:
        words = shlex.split(words[2])
        words = words[1:] if words[0] == "exec" else words
        words = [w if "$(" not in w else "2026-12-01" for w in words]
    assert words[0] == HUB_EXE, exec_start
    return words[1:]


def test_every_service_starts_a_real_hub_command_and_every_timer_has_its_service() -> None:
    services = sorted(UNITS.glob("*.service"))
    assert len(services) >= 5
    for unit in services:
        [line] = _exec_lines(unit)
        # --help after the arguments: click parses them all first, so an unknown command or
        # option fails (exit 2) before the help is printed.
        r = subprocess.run([*CLI, *_hub_args(line), "--help"], capture_output=True, text=True)
        assert r.returncode == 0, f"{unit.name}: {r.stderr}"
        assert "EnvironmentFile=/etc/watchpost-hub/hub.env" in unit.read_text(), unit.name
    for timer in UNITS.glob("*.timer"):
        assert (UNITS / timer.name.replace(".timer", ".service")).exists(), timer.name


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    exe = tmp_path / "watchpost-hub"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    for unit in UNITS.glob("watchpost-hub-*"):
        text = unit.read_text().replace(HUB_EXE, str(exe))
        text = text.replace("User=watchpost-hub\n", "").replace("Group=watchpost-hub\n", "")
        (tmp_path / unit.name).write_text(text)
    targets = [
        str(tmp_path / (n.name.replace("@.", "@1.") if "@." in n.name else n.name))
        for n in UNITS.glob("watchpost-hub-*")
    ]
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *targets],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if str(tmp_path) in line or "watchpost-hub" in line
    ]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_the_rollout_unit_restarts_a_crashed_driver_but_not_a_paused_rollout() -> None:
    text = (UNITS / "watchpost-hub-rollout@.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line[:40])
    args = _hub_args(settings["ExecStart"])
    assert args[:3] == ["rollout", "run", "1"]  # the instance is the rollout id
    # A killed driver's lease is heard of for DRIVER_STALE_S more: the new one waits it out.
    wait = float(args[args.index("--wait-lease") + 1])
    assert wait > DRIVER_STALE_S
    # Restarted on a signal and on the driver's own crash code; a paused or stopped rollout
    # (EXIT_ERROR) waits for an operator.
    assert settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"].split() == [str(EXIT_ERROR)]
    assert EXIT_CRASH != EXIT_ERROR
    assert "WantedBy=multi-user.target" in text  # enabled: started again after a reboot
