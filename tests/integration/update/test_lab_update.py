"""A good update end to end in the lab: a real release venv running inline on the lab bridge,
the lab hub's broker, the `update` job over MQTT, and a fast ping through the bridge that loses
nothing while the daemon is switched to the new release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.hub import start_lab_hub
from lab.updatelab import UpdateRun, start_ping
from tests.integration.update.conftest import Artifacts, Keys


@pytest.mark.root
@pytest.mark.slow
def test_a_good_update_in_the_lab_loses_no_ping(
    lab: Any, tmp_path: Path, artifacts: Artifacts, release_keys: Keys
) -> None:
    run = UpdateRun(lab, tmp_path, release_keys.public)
    assert run.install_old(artifacts.old) == artifacts.old_version
    hub = start_lab_hub(lab, tmp_path, collector=False)
    ping = None
    try:
        run.start(hub)
        before = run.sample()
        assert before["version"] == artifacts.old_version
        ping = start_ping(lab, "pc1", "web")
        job = run.update(artifacts.new, artifacts.new_version)
        sent, lost = ping.finish()
        ping = None
        assert job["state"] == "succeeded", job
        assert job["version"] == artifacts.new_version and job["from"] == artifacts.old_version
        # The daemon that answers is the new release's: its status says so, `current` and the
        # supervised process agree.
        assert job["status_version"] == artifacts.new_version
        after = run.sample()
        assert after["version"] == artifacts.new_version and after["active_state"] == "active"
        assert after["pid"] != before["pid"] and after["restarts"] == 0
        argv = Path(f"/proc/{after['pid']}/cmdline").read_bytes().split(b"\0")
        # The script's #! names the new release's own python.
        assert argv[0].decode() == str(run.root / "releases" / artifacts.new_version / "bin"
                                       / "python")  # fmt: skip
        assert argv[1].decode() == str(run.root / "current" / "bin" / "watchpost")
        assert run.root.joinpath("previous").readlink() == Path("releases", artifacts.old_version)
        first = next(e for e in run.lines if e["event"] == "first")
        assert first["received"] == 1 and first["count"] > 1
        states = [e["answer"]["job"]["state"] for e in run.lines if e["event"] == "answer"]
        assert "switching" in states or "installing" in states, run.lines
        assert sent > 500, sent  # the ping ran across the whole update
        assert lost == 0, f"{lost} of {sent} pings lost during the update"
    finally:
        if ping is not None:
            ping.finish()
        run.stop()
        hub.stop()
