"""The `update` command: a release artifact over the chunked signed bundle transfer, then the
updater's job states answered on cmd/res."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.hublink.update_job import UpdateJob
from appliance.update.job import JobStore
from protocol import bundle
from protocol import envelope as E
from protocol import release as rel
from tests.unit.hublink.rig import Rig

DATA = b"a release artifact stands in here" * 100


def _envs(rig: Rig, name: str = "watchpost-0.2.0.tar", kind: str = rel.KIND) -> list[Any]:
    manifest = bundle.make_manifest(DATA, name, "0.2.0", rig.key, kind=kind)
    return [rig.env("update", a) for a in bundle.chunk_args("u1", manifest, DATA, 1000)]


def test_update_transfers_then_follows_the_updater(rig: Rig, tmp_path: Path) -> None:
    launched: list[tuple[Path, str, str]] = []
    state_dir = rig.device.config.device.state_dir
    store = JobStore(state_dir)

    def launch(artifact: Path, job: str, version: str) -> None:
        launched.append((artifact, job, version))
        # The updater (another process in real life) writes its states as it goes.
        for state in ("verifying", "installing", "switching", "checking"):
            store.save({"id": job, "state": state, "version": version})
            time.sleep(0.05)
        store.save({"id": job, "state": "rolled-back", "version": version, "reason": "no hub"})

    rig.handler.update = UpdateJob(rig.handler.keys, state_dir, launch, poll_s=0.01)
    answers: list[dict[str, Any]] = []
    for e in _envs(rig):
        rig.handler.handle_command(E.encode(e), answers.append)
    chunks = answers[:4]
    assert [a["job"]["state"] for a in chunks] == [
        "queued",
        "downloading",
        "downloading",
        "downloading",
    ]
    assert launched and launched[0][1:] == ("u1", "0.2.0")
    assert launched[0][0].read_bytes() == DATA
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        a.get("job", {}).get("state") == "rolled-back" for a in answers
    ):
        time.sleep(0.02)
    states = [a["job"]["state"] for a in answers]
    assert (
        states[4:]
        == ["verifying", "installing", "switching", "checking", "rolled-back"][-len(states[4:]) :]
    )
    assert states[-1] == "rolled-back" and "no hub" in answers[-1]["error"]
    assert answers[-1]["ok"] is False


def test_update_refuses_an_intel_bundle_and_a_misnamed_artifact(rig: Rig) -> None:
    state_dir = rig.device.config.device.state_dir
    rig.handler.update = UpdateJob(rig.handler.keys, state_dir, lambda *a: None)
    a = rig.one(_envs(rig, kind=bundle.KIND)[0])
    assert a["ok"] is False and "manifest kind must be 'watchpost-release'" in a["error"]
    a = rig.one(_envs(rig, name="evil.tar")[0])
    assert a["ok"] is False and "must be named watchpost-0.2.0.tar" in a["error"]
    assert not list((Path(state_dir) / "update").glob("*.part"))
