"""The device updater with real venvs built from real wheels of this repository."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.update import health
from appliance.update.install import reported_version
from appliance.update.job import HOOK_ENV, JobStore, Updater
from appliance.update.layout import Layout
from hub.release import resign
from protocol import envelope
from tests.integration.update.conftest import MACHINE, Artifacts, Device, Keys, fake_release, tree


class Daemons:
    """The health probe's view of 'the daemon of the release `current` points at': the old
    release is healthy and connected with traffic; the new one behaves as `new` says."""

    def __init__(self, layout: Layout, old: str, new: dict[str, object]) -> None:
        self.layout, self.old, self.new = layout, old, new
        self.packets = 0
        self.restarts: list[str | None] = []

    def probe(self) -> health.Sample:
        self.packets += 10
        if self.layout.current_version() == self.old:
            return health.Sample("active", 0, self.packets, True)
        n = self.new
        packets = self.packets if n.get("packets", True) else 5
        return health.Sample(
            str(n.get("active_state", "active")), int(n.get("restarts", 0)),  # type: ignore[call-overload]
            packets, bool(n.get("hub_connected", True)),
        )  # fmt: skip

    def restart(self) -> None:
        self.restarts.append(self.layout.current_version())


def updater(device: Device, keys: list, daemons: Daemons, deadline: float = 3.0) -> Updater:  # type: ignore[type-arg]
    return Updater(
        layout=device.layout, state_dir=device.state, keys=keys, machine=MACHINE,
        probe=daemons.probe, restart=daemons.restart, python=sys.executable,
        system_site_packages=False, deadline_s=deadline, interval_s=0.05,
    )  # fmt: skip


def staged(device: Device, artifact: Path) -> Path:
    """The artifact where the transfer leaves it: in the state dir."""
    dest = device.state / "update" / "artifact.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(artifact.read_bytes())
    return dest


# --- a good update, end to end ------------------------------------------------------------------


def test_good_update_end_to_end(tmp_path: Path, artifacts: Artifacts, release_keys: Keys) -> None:
    layout = Layout(tmp_path / "opt")
    state = tmp_path / "state"
    dev = Device(layout.root, state, layout)
    # The old release is a real one, installed from its artifact like an update would.
    d0 = Daemons(layout, "none", {})
    first = updater(dev, release_keys.public_keys(), d0).apply(
        staged(dev, artifacts.old), "install"
    )
    assert first["state"] == "succeeded", first
    assert reported_version(layout.current) == artifacts.old_version
    fake_release(layout, "0.0.1")  # an older release: pruned by the next success
    layout.keep_previous("0.0.1")

    daemons = Daemons(layout, artifacts.old_version, {})
    job = updater(dev, release_keys.public_keys(), daemons).apply(
        staged(dev, artifacts.new), "j1", expect_version=artifacts.new_version
    )
    assert job["state"] == "succeeded", job
    assert [s for s, _ in job["history"]] == [
        "verifying", "installing", "switching", "checking", "succeeded"
    ]  # fmt: skip
    out = subprocess.run(
        [str(layout.current / "bin" / "watchpost"), "--version"], capture_output=True, text=True
    )
    assert out.stdout.strip() == f"watchpost, version {artifacts.new_version}"
    assert os.readlink(layout.current) == f"releases/{artifacts.new_version}"
    assert os.readlink(layout.previous) == f"releases/{artifacts.old_version}"
    # Last-known-good kept and still runs; the older one pruned; nothing half-made left.
    assert sorted(p.name for p in layout.releases.iterdir()) == sorted(
        [artifacts.old_version, artifacts.new_version]
    )
    assert reported_version(layout.previous) == artifacts.old_version
    assert daemons.restarts == [artifacts.new_version]
    assert not (state / "update" / "wheels").exists()
    assert not (state / "update" / "artifact.tar").exists()
    # The venv holds the firmware and protocol only: no hub or lab code on a device.
    site = next((layout.current / "lib").glob("python*/site-packages"))
    assert (site / "appliance").is_dir() and (site / "protocol").is_dir()
    assert not (site / "hub").exists() and not (site / "lab").exists()
    assert JobStore(state).load()["state"] == "succeeded"  # type: ignore[index]


# --- refused before anything is unpacked --------------------------------------------------------


def _tampered(src: Path, dest: Path) -> Path:
    """The same tar with one byte of the firmware wheel changed, the manifest kept."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()  # type: ignore[union-attr]
            if "/watchpost-" in m.name:
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            tout.addfile(m, io.BytesIO(data))
    return dest


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad-signature", "signature does not verify with the release key"),
        ("tampered", "sha256 does not match the manifest"),
        ("other-version", "the job is for 9.9.9"),
        ("downgrade", "a downgrade, and the manifest is not signed as one"),
        ("same-version", "is already running"),
        ("min-from", "upgrades from 0.1.0 or later"),
        ("not-a-tar", "not a readable tar"),
    ],
)
def test_refused_before_anything_is_unpacked(
    case: str, reason: str, device: Device, artifacts: Artifacts, release_keys: Keys,
    tmp_path: Path,
) -> None:  # fmt: skip
    keys = release_keys.public_keys()
    art = staged(device, artifacts.new)
    expect = None
    if case == "bad-signature":
        resign(art, envelope.load_private_key(release_keys.other_private))
    elif case == "tampered":
        _tampered(artifacts.new, art)
    elif case == "other-version":
        expect = "9.9.9"
    elif case == "downgrade":
        fake_release(device.layout, "7.0.0")
        device.layout.switch("7.0.0")
    elif case == "same-version":
        art.write_bytes(artifacts.old.read_bytes())
    elif case == "min-from":
        fake_release(device.layout, "0.0.5")
        device.layout.switch("0.0.5")
        import hub.release as hr

        manifest, _ = hr.read_artifact(art)
        assert manifest["min_from"] == "0.0.0"
        _with_min_from(art, "0.1.0", release_keys)
    elif case == "not-a-tar":
        art.write_bytes(b"not a tar at all\n" * 1000)
    before = tree(device.root)
    daemons = Daemons(device.layout, artifacts.old_version, {})
    job = updater(device, keys, daemons).apply(art, "j-" + case, expect_version=expect)
    assert job["state"] == "failed"
    assert reason in job["reason"], job["reason"]
    assert job["reason"].startswith("refused: ")
    assert [s for s, _ in job["history"]] == ["verifying", "failed"]
    assert tree(device.root) == before  # old release untouched, no .partial, no link moved
    assert not (device.state / "update" / "wheels").exists()
    assert daemons.restarts == []


def _with_min_from(art: Path, min_from: str, keys: Keys) -> None:
    import hub.release as hr

    manifest, blobs = hr.read_artifact(art)
    tmp = art.parent / "w"
    wheels: dict[str, list[Path]] = {}
    for name, data in blobs.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        wheels.setdefault(name.split("/")[1], []).append(p)
    hr.write_artifact(
        art, manifest["version"], wheels, envelope.load_private_key(keys.private),
        min_from=min_from,
    )  # fmt: skip
    import shutil

    shutil.rmtree(tmp)


def test_downgrade_signed_as_one_passes_the_version_check(
    device: Device, release_keys: Keys
) -> None:
    u = updater(device, release_keys.public_keys(), Daemons(device.layout, "x", {}))
    manifest = {"version": "0.1.0", "min_from": "0.0.0", "downgrade": True}
    u._check_versions(manifest, "0.3.0", None)  # no error
    with pytest.raises(ValueError, match="downgrade"):
        u._check_versions({**manifest, "downgrade": False}, "0.3.0", None)


def test_not_enough_free_space_refused_first(
    tmp_path: Path, artifacts: Artifacts, release_keys: Keys
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)])
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        layout = Layout(small / "opt")
        layout.releases.mkdir(parents=True)
        fake_release(layout, artifacts.old_version)
        layout.switch(artifacts.old_version)
        dev = Device(layout.root, tmp_path / "state", layout)
        before = tree(layout.root)
        job = updater(dev, release_keys.public_keys(), Daemons(layout, "x", {})).apply(
            staged(dev, artifacts.new), "j-space"
        )
        assert job["state"] == "failed"
        assert "not enough free space" in job["reason"] and "MiB needed" in job["reason"]
        assert tree(layout.root) == before
    finally:
        subprocess.run(["umount", str(small)], check=False)


# --- unhealthy releases are rolled back ---------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        ({"active_state": "failed"}, "the daemon crashed on start (systemd ActiveState=failed)"),
        ({"active_state": "activating", "restarts": 2}, "crashed on start (restarted 2 times)"),
        ({"hub_connected": False}, "the daemon never reached the hub"),
    ],
    ids=["crash-failed", "crash-loop", "never-reaches-hub"],
)
def test_unhealthy_release_rolled_back_with_reason(
    new: dict[str, object], reason: str, device: Device, artifacts: Artifacts,
    release_keys: Keys,
) -> None:  # fmt: skip
    before_old = tree(device.layout.release(artifacts.old_version))
    daemons = Daemons(device.layout, artifacts.old_version, new)
    job = updater(device, release_keys.public_keys(), daemons, deadline=1.0).apply(
        staged(device, artifacts.new), "j-bad"
    )
    assert job["state"] == "rolled-back", job
    assert reason in job["reason"]
    assert job["reason"].endswith(f"switched back to {artifacts.old_version}")
    assert device.layout.current_version() == artifacts.old_version
    assert reported_version(device.layout.current) == artifacts.old_version
    # The new daemon was started, then the old one again.
    assert daemons.restarts == [artifacts.new_version, artifacts.old_version]
    assert not device.layout.release(artifacts.new_version).exists()
    assert tree(device.layout.release(artifacts.old_version)) == before_old
    assert [s for s, _ in job["history"]][-2:] == ["checking", "rolled-back"]


# --- kill -9 at each step, then the boot check ---------------------------------------------------


def _cli(device: Device, *args: str, env: dict[str, str] | None = None) -> list[str]:
    return [
        sys.executable, "-m", "appliance", "update", *args,
        "--root", str(device.root), "--state-dir", str(device.state),
    ]  # fmt: skip


def _probe_file(device: Device) -> Path:
    p = device.state.parent / "health.json"
    p.write_text(json.dumps({"active_state": "active", "packets": 10, "hub_connected": True}))
    return p


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("step", "after"),
    [
        ("verifying", "old"),
        ("installing", "old"),
        ("installing.venv", "old"),
        ("installing.built", "old"),
        ("switching", "old"),
        ("switching.linked", "old"),
        ("checking", "old"),
        ("succeeded", "new"),
    ],
)
def test_kill_9_at_each_step_then_boot_check(
    step: str, after: str, device: Device, artifacts: Artifacts, release_keys: Keys
) -> None:
    art = staged(device, artifacts.new)
    probe = _probe_file(device)
    cmd = [
        *_cli(device, "apply", str(art), "--job", "jk"),
        "--release-key", str(release_keys.public), "--probe-file", str(probe),
        "--no-system-site-packages", "--interval", "0.1", "--deadline", "5",
    ]  # fmt: skip
    env = {**os.environ, HOOK_ENV: f"{step}:pause"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = device.state / "update" / f"paused-{step}"
    try:
        _wait(lambda: marker.exists() or proc.poll() is not None, 180, f"the pause at {step}")
        assert proc.poll() is None, proc.communicate()
        proc.kill()  # SIGKILL: a power cut as far as the updater can tell
    finally:
        proc.kill()
        proc.wait()
    assert JobStore(device.state).load()["state"] == step.split(".")[0]  # type: ignore[index]
    res = subprocess.run(
        _cli(device, "boot-check"), capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    job = JobStore(device.state).load()
    assert job is not None
    want = artifacts.old_version if after == "old" else artifacts.new_version
    assert device.layout.current_version() == want
    assert reported_version(device.layout.current) == want
    assert not list(device.layout.releases.glob("*.partial"))
    assert not list(device.root.glob(".*.new"))
    if after == "old":
        assert job["state"] in ("failed", "rolled-back"), job
        assert f"interrupted while {step.split('.')[0]}" in job["reason"]
        assert sorted(p.name for p in device.layout.releases.iterdir()) == [artifacts.old_version]
        expected = "rolled-back" if step in ("switching.linked", "checking") else "failed"
        assert job["state"] == expected
    else:
        assert job["state"] == "succeeded" and job["pruned"]
        assert device.layout.previous_version() == artifacts.old_version
    # A second boot changes nothing.
    again = tree(device.root)
    subprocess.run(_cli(device, "boot-check"), capture_output=True, check=True, timeout=120)
    assert tree(device.root) == again
