"""The `update` command: a release artifact over the chunked signed bundle transfer, then the
updater's job states answered on cmd/res."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.hublink.update_job import UpdateJob
from appliance.update.job import JobStore, JobView
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
    assert [a["job"]["missing"] for a in chunks] == [[[1, 3]], [[2, 3]], [[3, 3]], []]
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


def test_a_download_cut_by_a_restart_resumes_from_the_chunk_journal(rig: Rig) -> None:
    state_dir = rig.device.config.device.state_dir
    launched: list[bytes] = []
    envs = _envs(rig)
    rig.handler.update = UpdateJob(rig.handler.keys, state_dir, lambda *a: None)
    for e in (envs[0], envs[2]):
        rig.one(e)
    rig.handler.update.transfer.close()  # type: ignore[union-attr]  # the daemon stops
    # A new daemon: the job and its chunks are picked up before any chunk arrives.
    rig.restart_handler()

    def launch(artifact: Path, job: str, version: str) -> None:
        launched.append(artifact.read_bytes())

    job = UpdateJob(rig.handler.keys, state_dir, launch, poll_s=0.01)
    rig.handler.update = job
    assert job.progress() == {
        "id": "u1", "state": "downloading", "version": "0.2.0", "received": 2, "count": 4,
        "missing": [[1, 1], [3, 3]],
    }  # fmt: skip
    # The hub resends chunk 0: a duplicate, and the answer names what is still missing.
    a = rig.one(rig.env("update", envs[0]["args"]))
    assert a["ok"] and a["result"]["duplicate"] is True
    assert a["job"]["state"] == "downloading" and a["job"]["missing"] == [[1, 1], [3, 3]]
    for i in (1, 3):
        a = rig.send(rig.env("update", envs[i]["args"]))[0]
        assert a["ok"] and a["result"]["duplicate"] is False
    assert launched == [DATA]
    assert not list((Path(state_dir) / "update").glob(".*.part*"))


def test_a_torn_journal_line_and_another_job_are_not_resumed(rig: Rig, tmp_path: Path) -> None:
    manifest = bundle.make_manifest(DATA, "watchpost-0.2.0.tar", "0.2.0", rig.key, kind=rel.KIND)
    args = bundle.chunk_args("u1", manifest, DATA, 1000)
    t = bundle.Transfer("u1", manifest, 4, 1000, tmp_path, 0, resumable=True)
    for i in (0, 1):
        t.add(i, bundle.parse_chunk(args[i])[5], 0)
    t.close()
    assert t.journal is not None
    with open(t.journal, "ab") as f:
        f.write(b"3")  # a power cut in the middle of the line for chunk 3
    again = bundle.Transfer("u1", manifest, 4, 1000, tmp_path, 0, resumable=True)
    assert again.received == {0, 1} and again.resumed == 2
    assert again.missing_ranges() == [[2, 3]]
    again.close()
    # Another chunking of the same job is another transfer: it starts afresh.
    other = bundle.Transfer("u1", manifest, 2, 2000, tmp_path, 0, resumable=True)
    assert other.received == set() and other.resumed == 0
    other.discard()
    assert not list(tmp_path.glob(".*"))
    assert bundle.missing_ranges({0, 2, 3, 7}, 9) == [[1, 1], [4, 6], [8, 8]]
    assert bundle.missing_ranges(set(), 100, limit=1) == [[0, 99]]


def test_a_new_job_drops_the_staged_chunks_of_the_old_one(rig: Rig) -> None:
    state_dir = rig.device.config.device.state_dir
    rig.handler.update = UpdateJob(rig.handler.keys, state_dir, lambda *a: None)
    rig.one(_envs(rig)[0])
    udir = Path(state_dir) / "update"
    assert len(list(udir.glob(".*.u1.part*"))) == 2
    manifest = bundle.make_manifest(DATA, "watchpost-0.2.0.tar", "0.2.0", rig.key, kind=rel.KIND)
    a = rig.one(rig.env("update", bundle.chunk_args("u2", manifest, DATA, 1000)[0]))
    assert a["ok"] and a["job"]["id"] == "u2" and a["job"]["state"] == "queued"
    assert not list(udir.glob(".*.u1.part*"))
    assert JobStore(state_dir).load()["id"] == "u2"  # type: ignore[index]


def test_status_shows_the_download_then_the_updater_s_job(rig: Rig) -> None:
    state_dir = rig.device.config.device.state_dir
    rig.handler.update = UpdateJob(rig.handler.keys, state_dir, lambda *a: None)
    assert rig.one(rig.env("status"))["result"]["update"] == {}
    rig.one(_envs(rig)[0])
    job = rig.one(rig.env("status"))["result"]["update"]
    assert job == {"id": "u1", "state": "queued", "version": "0.2.0", "received": 1, "count": 4,
                   "missing": [[1, 3]]}  # fmt: skip
    # The updater's own states come from the job file, which JobView reads when it changes.
    view = JobView(state_dir)
    JobStore(state_dir).save({"id": "u1", "state": "rolled-back", "version": "0.2.0",
                              "from": "0.1.0", "reason": "no hub", "history": [["x", 5]],
                              "artifact": "/x"})  # fmt: skip
    rig.handler.update.transfer = None
    want = {"id": "u1", "state": "rolled-back", "version": "0.2.0", "from": "0.1.0",
            "reason": "no hub", "at": 5}  # fmt: skip
    assert rig.one(rig.env("status"))["result"]["update"] == want
    assert view.summary() == want
    assert view.summary() == want  # cached: same file
    JobStore(state_dir).save({"id": "u2", "state": "installing", "version": "0.3.0"})
    assert view.summary() == {"id": "u2", "state": "installing", "version": "0.3.0"}
