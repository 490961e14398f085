"""A release's config migration (signed in its manifest): run once after the switch on the state
dir's files, undone on rollback (also after a power cut), refused when malformed."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from appliance.update import migrate
from appliance.update.job import Updater
from hub.release import read_artifact, resign
from protocol import envelope
from protocol import release as rel
from tests.integration.update.conftest import Artifacts, Device, Keys, fake_release, tree
from tests.integration.update.test_updater import Daemons, staged, updater

OVERLAY = b"[alerts]\nburst = 50\n\n[detect.port_scan]\nwindow = 10\n"
MIGRATION = {
    "id": "rename-port-scan-window",
    "steps": [
        {"op": "rename", "file": "remote.toml", "key": "detect.port_scan.window",
         "to": "detect.port_scan.window_s"},
        {"op": "set", "file": "remote.toml", "key": "alerts.rate_per_minute", "value": 600},
        {"op": "delete", "file": "remote.toml", "key": "alerts.burst"},
        {"op": "set", "file": "page-prefs.json", "key": "charts.days", "value": 7},
    ],
}  # fmt: skip


def _with_migration(device: Device, artifacts: Artifacts, keys: Keys, mig: Any) -> Path:
    """The new release's artifact, signed with `mig`; the release itself pre-installed (a stand-
    in venv), so the run is about the migration, not pip."""
    art = staged(device, artifacts.new)
    resign(art, envelope.load_private_key(keys.private), migration=mig)
    fake_release(device.layout, artifacts.new_version)
    return art


class Seen(Daemons):
    """Daemons that also record the overlay the new release's daemon would read."""

    def __init__(self, device: Device, old: str, new: dict[str, object]) -> None:
        super().__init__(device.layout, old, new)
        self.device = device
        self.new_saw: list[bytes] = []

    def probe(self) -> Any:
        if self.layout.current_version() != self.old:
            self.new_saw.append((self.device.state / "remote.toml").read_bytes())
        return super().probe()


def _run(device: Device, keys: Keys, daemons: Daemons, art: Path, job: str) -> dict[str, Any]:
    up: Updater = updater(device, keys.public_keys(), daemons, deadline=1.0)
    return up.apply(art, job)


def test_migration_runs_once_after_the_switch(
    device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    (device.state / "remote.toml").write_bytes(OVERLAY)
    art = _with_migration(device, artifacts, release_keys, MIGRATION)
    daemons = Seen(device, artifacts.old_version, {})
    job = _run(device, release_keys, daemons, art, "m1")
    assert job["state"] == "succeeded", job
    assert job["migration"] == {"id": MIGRATION["id"], "state": "applied"}
    want = b"[alerts]\nrate_per_minute = 600\n\n[detect.port_scan]\nwindow_s = 10\n"
    assert (device.state / "remote.toml").read_bytes() == want
    assert daemons.new_saw and set(daemons.new_saw) == {want}  # the new daemon started on it
    assert json.loads((device.state / "page-prefs.json").read_text()) == {"charts": {"days": 7}}
    udir = device.state / "update"
    assert migrate.applied(udir) == [MIGRATION["id"]]
    # Once: the same migration again (a re-sent job, a later release carrying it) is skipped.
    assert migrate.run_once(device.state, udir, "m2", MIGRATION, lambda s: None) == "skipped"
    assert (device.state / "remote.toml").read_bytes() == want


def test_migration_undone_on_rollback(
    device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    (device.state / "remote.toml").write_bytes(OVERLAY)
    art = _with_migration(device, artifacts, release_keys, MIGRATION)
    daemons = Seen(device, artifacts.old_version, {"hub_connected": False})
    job = _run(device, release_keys, daemons, art, "m1")
    assert job["state"] == "rolled-back", job
    assert "never reached the hub" in job["reason"]
    assert job["migration"] == {"id": MIGRATION["id"], "state": "undone"}
    assert daemons.new_saw and b"window_s" in daemons.new_saw[0]  # it had been applied
    assert (device.state / "remote.toml").read_bytes() == OVERLAY  # byte for byte
    assert not (device.state / "page-prefs.json").exists()  # made by the migration: removed
    assert migrate.applied(device.state / "update") == []
    assert device.layout.current_version() == artifacts.old_version


def test_migration_that_cannot_run_rolls_back_before_the_restart(
    device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    (device.state / "remote.toml").write_bytes(b"[alerts]\nburst = 50\n")
    step = {"op": "set", "file": "remote.toml", "key": "alerts.burst.deeper", "value": 1}
    mig = {"id": "bad-path", "steps": [step]}
    art = _with_migration(device, artifacts, release_keys, mig)
    daemons = Daemons(device.layout, artifacts.old_version, {})
    job = _run(device, release_keys, daemons, art, "m1")
    assert job["state"] == "rolled-back"
    assert "config migration bad-path failed" in job["reason"] and "alerts.burst" in job["reason"]
    assert (device.state / "remote.toml").read_bytes() == b"[alerts]\nburst = 50\n"
    assert daemons.restarts == [artifacts.old_version]  # the new release never started


def test_power_cut_after_the_migration_is_undone_at_boot(
    device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    (device.state / "remote.toml").write_bytes(OVERLAY)
    art = _with_migration(device, artifacts, release_keys, MIGRATION)

    class Cut(BaseException):
        pass

    def hook(step: str) -> None:
        if step == "switching.migrated":
            raise Cut  # the power goes here: migrated, linked, not yet restarted

    daemons = Daemons(device.layout, artifacts.old_version, {})
    up = updater(device, release_keys.public_keys(), daemons)
    up.hook = hook
    with contextlib.suppress(Cut):
        up.apply(art, "m1")
    assert b"window_s" in (device.state / "remote.toml").read_bytes()
    job = updater(device, release_keys.public_keys(), daemons).boot_check()
    assert job is not None and job["state"] == "rolled-back"
    assert job["migration"]["state"] == "undone"
    assert (device.state / "remote.toml").read_bytes() == OVERLAY
    assert not (device.state / "page-prefs.json").exists()


def _signed_with(art: Path, key: Path, mig: Any) -> None:
    """Sign a manifest carrying `mig` as it is (the builder would refuse it; an attacker with
    the key, or a buggy builder, would not)."""
    manifest, blobs = read_artifact(art)
    manifest.pop("sig")
    manifest["migration"] = mig
    signed = rel.sign(manifest, envelope.load_private_key(key))
    data = json.dumps(signed).encode()
    with tarfile.open(art, "w") as tar:
        info = tarfile.TarInfo(rel.MANIFEST_NAME)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, blob in sorted(blobs.items()):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_malformed_migration_refused_before_anything_is_unpacked(
    device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    (device.state / "remote.toml").write_bytes(OVERLAY)
    bad = [
        ({"id": "x", "steps": [{"op": "exec", "file": "remote.toml", "key": "a"}]},
         "op must be one of set, rename, delete"),
        ({"id": "x", "steps": [{"op": "set", "file": "../etc/passwd", "key": "a", "value": 1}]},
         "is not a *.toml or *.json in the state dir"),
        ({"id": "x", "steps": [{"op": "rename", "file": "remote.toml", "key": "a"}]},
         "a rename step has exactly file, key, op, to"),
        ({"id": "x", "steps": []}, "steps must be a list of 1-100 steps"),
        ({"id": "x y", "steps": [{"op": "delete", "file": "a.json", "key": "a"}]},
         "id 'x y'"),
    ]  # fmt: skip
    before = tree(device.root)
    for i, (mig, reason) in enumerate(bad):
        art = staged(device, artifacts.new)
        _signed_with(art, release_keys.private, mig)
        daemons = Daemons(device.layout, artifacts.old_version, {})
        job = _run(device, release_keys, daemons, art, f"bad{i}")
        assert job["state"] == "failed" and job["reason"].startswith("refused: "), job
        assert reason in job["reason"], job["reason"]
        assert tree(device.root) == before and daemons.restarts == []
    assert (device.state / "remote.toml").read_bytes() == OVERLAY
