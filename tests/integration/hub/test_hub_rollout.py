"""A staged firmware rollout over five lab devices: `watchpost-hub rollout` ⇄ mosquitto over
mutual TLS (hub.provisioning's broker set-up) ⇄ each device's HubLink + CommandHandler, whose
`update` job (the chunked watchpost-release bundle) runs the real updater: the release key's
signature and every hash checked, a real venv built by pip from the release's wheel, the switch,
the health check and the rollback. The release is a small one (one firmware wheel whose
`watchpost --version` answers), so five real installs stay cheap.

The devices: d1 (the canary), d2 and d5 take the release; d3's daemon crashes under it (rolled
back); d4 runs a release older than the new one upgrades from (refused: failed). With waves of
three and a threshold of one failure, wave 1 (d2, d3, d4) pauses the rollout by itself; resumed
by a new driver from the store, wave 2 (d5) finishes it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import config as config_mod
from appliance.hublink.commands import CommandHandler, intel_dir_for
from appliance.hublink.link import HubLink
from appliance.update import health
from appliance.update.install import reported_version
from appliance.update.job import Updater
from appliance.update.layout import Layout
from hub import provisioning as prov
from hub.cli import main
from hub.operator.connection import Ctx
from hub.release import write_artifact
from hub.rollout import release as release_mod
from hub.rollout.push import ReleasePusher
from hub.rollout.state import DRIVER_STALE_S, Rollouts
from hub.store import open_store
from protocol import envelope as E
from tests.integration.hublink.hubkit import PKI, Broker, Client, device_config, wait_for
from tests.integration.hublink.hubkit import hub as hub
from tests.unit.hublink.rig import FakeDevice

SITE = "leeds"
DEVICES = ("d1", "d2", "d3", "d4", "d5")
OLD, NEW = "0.1.0", "0.2.0"
MACHINE = os.uname().machine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca_dir = tmp_path_factory.mktemp("pki") / "ca"
    prov.create_ca(ca_dir)
    for d in DEVICES:
        prov.issue_device(ca_dir, d, SITE)
    prov.issue_hub(ca_dir, "hub")
    return PKI(ca_dir)


def _wheel(out: Path, version: str) -> Path:
    """A firmware wheel of `version` whose `watchpost --version` answers as the real one."""
    files = {
        "wpstub/__init__.py": f"def main():\n    print('watchpost, version {version}')\n",
        f"watchpost-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: watchpost\nVersion: {version}\n"
        ),
        f"watchpost-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"watchpost-{version}.dist-info/entry_points.txt": (
            "[console_scripts]\nwatchpost = wpstub:main\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"watchpost-{version}.dist-info/RECORD,,")
    files[f"watchpost-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = out / f"watchpost-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


class Daemon:
    """The health probe's view of the daemon on one lab device: healthy and connected under its
    old release; under the new one as `crash` says (crashes on start: unit failed, restarted)."""

    def __init__(self, layout: Layout, crash: bool) -> None:
        self.layout, self.crash = layout, crash
        self.packets = 0
        self.restarts: list[str | None] = []

    def probe(self) -> health.Sample:
        self.packets += 10
        if self.crash and self.layout.current_version() == NEW:
            return health.Sample("failed", 1, self.packets, False)
        return health.Sample("active", 0, self.packets, True)

    def restart(self) -> None:
        self.restarts.append(self.layout.current_version())


class LabDevice:
    """HubLink + CommandHandler over a FakeDevice; its `update` job launches the real Updater
    (in a thread, as `watchpost update apply` would run beside the daemon)."""

    def __init__(self, name: str, pki: PKI, broker: Broker, root: Path, pub: Path,
                 release_pub: Path, running: str, crash: bool = False) -> None:  # fmt: skip
        state = root / "state"
        data = device_config(pki, broker, state, device=name, site=SITE, command_pubkey=str(pub))
        cfg = data.to_dict()
        cfg["log"] = {"file": str(root / "watchpost.log"), "eve": str(root / "eve.json")}
        path = root / "watchpost.toml"
        config_mod.save(config_mod.from_dict(cfg, source=str(path)))
        self.config = config_mod.load(path)
        self.device = FakeDevice(self.config, intel_dir_for(self.config))
        self.handler = CommandHandler.from_config(self.device)
        self.layout = Layout(root / "opt")
        stand_in = self.layout.release(running) / "bin" / "watchpost"
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text(f"#!/bin/sh\necho 'watchpost, version {running}'\n")
        stand_in.chmod(0o755)
        (self.layout.release(running) / ".complete").touch()
        self.layout.switch(running)
        self.daemon = Daemon(self.layout, crash)
        self.updater = Updater(
            layout=self.layout, state_dir=self.handler.update.dir.parent,
            keys=E.load_public_keys(release_pub), machine=MACHINE, probe=self.daemon.probe,
            restart=self.daemon.restart, python=sys.executable, system_site_packages=False,
            deadline_s=5.0, interval_s=0.05, hook=self._hook,
        )  # fmt: skip
        self.handler.update.launch = self._launch
        self.handler.update.poll_s = 0.05
        self.results: list[dict[str, Any]] = []
        # A test may hold the updater when its job starts (cleared `go`), to act meanwhile.
        self.go, self.held = threading.Event(), threading.Event()
        self.go.set()
        self.link = HubLink(self.config, handler=self.handler, backoff=(0.2, 1.0), version=running)

    def _hook(self, step: str) -> None:
        if step == "verifying" and not self.go.is_set():
            self.held.set()
            self.go.wait(30)

    def _launch(self, artifact: Path, job: str, version: str) -> None:
        def apply() -> None:
            self.results.append(self.updater.apply(artifact, job, expect_version=version))

        threading.Thread(target=apply, name=f"updater-{job}", daemon=True).start()

    def start(self) -> None:
        self.handler.start()
        self.link.start()

    def stop(self) -> None:
        self.link.close()
        self.handler.stop()


@pytest.fixture
def fleet(pki: PKI, broker: Broker, tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    command_priv, command_pub = E.generate_keypair()
    (keys / "command.key").write_bytes(command_priv)
    (keys / "command.key").chmod(0o600)
    (keys / "command.pub").write_bytes(command_pub)
    release_priv, release_pub = E.generate_keypair()
    (keys / "release-pubkey.pem").write_bytes(release_pub)
    (keys / "release-key.pem").write_bytes(release_priv)
    release_key = E.load_private_key(keys / "release-key.pem")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    artifact = tmp_path / "dist" / f"watchpost-{NEW}.tar"
    write_artifact(artifact, NEW, {MACHINE: [_wheel(wheels, NEW)]}, release_key, min_from=OLD)
    forged = tmp_path / "dist" / "forged.tar"
    write_artifact(forged, NEW, {MACHINE: [_wheel(wheels, NEW)]}, Ed25519PrivateKey.generate())
    devices = {
        d: LabDevice(
            d,
            pki,
            broker,
            tmp_path / d,
            keys / "command.pub",
            keys / "release-pubkey.pem",
            running="0.0.9" if d == "d4" else OLD,
            crash=d == "d3",
        )
        for d in DEVICES
    }
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        f'[operator]\nhost = "127.0.0.1"\nport = {broker.port}\nca = "{pki.ca_dir / "ca.pem"}"\n'
        f'cert = "{pki.hub.cert}"\nkey = "{pki.hub.key}"\ncommand_key = "{keys / "command.key"}"\n'
    )
    env = {
        "WATCHPOST_HUB_CONFIG": str(cfg),
        "WATCHPOST_HUB_RELEASE_PUBKEY": str(keys / "release-pubkey.pem"),
        "WATCHPOST_HUB_STORE": f"sqlite://{tmp_path / 'hub.sqlite'}",
    }
    yield {"devices": devices, "env": env, "artifact": artifact, "forged": forged}
    for dev in devices.values():
        dev.stop()


def hub_cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_bad_input_is_refused_naming_what_is_wrong(fleet: dict[str, Any], tmp_path: Path) -> None:
    env, art = fleet["env"], str(fleet["artifact"])
    r = hub_cli(env, "push-update", str(tmp_path / "nope.tar"), "--device", "d1")
    assert r.exit_code == 2 and f"release {tmp_path / 'nope.tar'}: no such file" in r.output
    r = hub_cli(env, "rollout", "start", str(fleet["forged"]), "--fleet")
    assert r.exit_code == 2, r.output
    assert (
        "forged.tar: forged: release manifest signature does not verify with the release key"
        in r.output
    )
    r = hub_cli(env, "rollout", "start", art, "--fleet", "--fail-threshold", "120%")
    assert r.exit_code == 2 and "--fail-threshold '120%': a percentage must be" in r.output
    r = hub_cli(env, "rollout", "start", art, "--fleet", "--wave-size", "0")
    assert r.exit_code == 2 and "--wave-size 0: must be from 1" in r.output
    r = hub_cli(env, "rollout", "start", art, "--site", "leeds", "--fleet")
    assert r.exit_code == 2 and "exactly one of --device" in r.output
    fleet["devices"]["d1"].start()
    r = hub_cli(env, "rollout", "start", art, "--site", "york")
    assert r.exit_code == 2 and "--site york: unknown site" in r.output, r.output
    r = hub_cli(env, "push-update", art, "--device", "d9")
    assert r.exit_code == 2 and "--device: unknown device d9" in r.output, r.output
    r = hub_cli(env, "rollout", "start", art, "--site", "leeds", "--canary", "d1,d7")
    assert r.exit_code == 2 and "--canary: not among the target devices: d7" in r.output
    r = hub_cli(env, "rollout", "status", "r-nope")
    assert r.exit_code == 2 and "rollout r-nope: no such rollout" in r.output
    assert fleet["devices"]["d1"].results == []  # nothing was sent


def test_staged_rollout_pauses_on_a_failed_wave_and_resumes(
    fleet: dict[str, Any], hub: Client
) -> None:
    devices: dict[str, LabDevice] = fleet["devices"]
    env, art = fleet["env"], str(fleet["artifact"])
    for dev in devices.values():
        dev.start()
    wait_for(lambda: {m.topic.split("/")[3] for m in hub.on("/status")} >= set(DEVICES),
             what="every device's status")  # fmt: skip

    r = hub_cli(env, "rollout", "start", art, "--site", SITE, "--canary", "d1",
                "--wave-size", "3", "--fail-threshold", "1", "--job-timeout", "60")  # fmt: skip
    assert r.exit_code == 1, r.output  # paused by itself
    rid = r.stdout.splitlines()[0]
    store = open_store(env["WATCHPOST_HUB_STORE"])
    try:
        rollouts = Rollouts(store)
        ro = rollouts.get(rid)
        assert ro.state == "paused"
        assert ro.reason.startswith("wave 1: 2 of 3 devices failed (threshold 1): d3 rolled-back")
        rows = {d["device"]: d for d in rollouts.devices(rid)}
        assert {d: (rows[d]["state"], rows[d]["version"]) for d in DEVICES} == {
            "d1": ("succeeded", NEW), "d2": ("succeeded", NEW), "d3": ("rolled-back", OLD),
            "d4": ("failed", "0.0.9"), "d5": ("pending", OLD),
        }  # fmt: skip
        assert "switched back to 0.1.0" in rows["d3"]["reason"]
        assert "crash" in rows["d3"]["reason"] or "failed" in rows["d3"]["reason"]
        assert f"upgrades from {OLD} or later; this device runs 0.0.9" in rows["d4"]["reason"]
        assert [w["state"] for w in rollouts.waves(rid)] == ["passed", "failed", "pending"]
    finally:
        store.close()
    # On the devices: real venvs of the new release where it succeeded, the old one elsewhere.
    for d in ("d1", "d2"):
        assert reported_version(devices[d].layout.current) == NEW
        assert devices[d].daemon.restarts == [NEW]
    assert devices["d3"].layout.current_version() == OLD
    assert devices["d3"].daemon.restarts == [NEW, OLD]
    assert devices["d4"].layout.current_version() == "0.0.9"
    assert devices["d5"].results == []  # never sent: the rollout paused before its wave

    status = hub_cli(env, "rollout", "status", rid, "--events")
    assert status.exit_code == 0, status.output
    assert f"rollout {rid}: paused (wave 1: 2 of 3" in status.output
    lines = {d: ln for ln in status.output.splitlines() for d in DEVICES if f"  {d}  " in ln}
    assert "succeeded" in lines["d1"] and NEW in lines["d1"] and "canary" in lines["d1"]
    assert "rolled-back" in lines["d3"] and "pending" in lines["d5"]
    assert "paused: wave 1" in status.output

    # Resumed later; the driver that takes it is killed with d5 mid-job (its lease left behind,
    # stale): `rollout run` continues from the store, asks d5's status, sends it again.
    r = hub_cli(env, "rollout", "resume", rid, "--no-run")
    assert r.exit_code == 0 and f"rollout {rid}: resumed" in r.output, r.output
    store = open_store(env["WATCHPOST_HUB_STORE"])
    try:
        dead = Rollouts(store, clock=lambda: time.time() - 2 * DRIVER_STALE_S)
        dead.claim(rid, "hub-dead:1")
        dead.start_wave(rid, 2)
        dead.set_device(rid, "d5", "pending", job="jdead")
        dead.set_device(rid, "d5", "installing")
    finally:
        store.close()
    r = hub_cli(env, "rollout", "run", rid)
    assert r.exit_code == 0, r.output
    assert f"rollout {rid}: done" in r.output
    assert reported_version(devices["d5"].layout.current) == NEW
    assert [j["state"] for j in devices["d5"].results] == ["succeeded"]
    r = hub_cli(env, "rollout", "resume", rid)
    assert r.exit_code == 2 and f"rollout {rid} is done; only a paused rollout resumes" in r.output

    # One device, directly: d4 still refuses it, and the exit code says so.
    r = hub_cli(env, "push-update", art, "--device", "d4", "--timeout", "30")
    assert r.exit_code == 1, r.output
    assert "error: d4: failed: refused: release 0.2.0 upgrades from 0.1.0" in r.output

    # An operator's pause while a driver runs: d4's job (held at its start) finishes, d3 (the
    # next wave) is never sent the release.
    result: list[Any] = []
    driver = threading.Thread(target=lambda: result.append(hub_cli(
        env, "rollout", "start", art, "--device", "d4", "--device", "d3", "--canary", "0",
        "--wave-size", "1", "--fail-threshold", "5", "--job-timeout", "60",
    )))  # fmt: skip
    d3_jobs = len(devices["d3"].results)
    devices["d4"].go.clear()
    driver.start()
    wait_for(devices["d4"].held.is_set, 20, "d4's job")
    store = open_store(env["WATCHPOST_HUB_STORE"])
    try:
        rollouts = Rollouts(store)
        (second,) = [x.id for x in rollouts.rollouts() if x.id != rid]
        r = hub_cli(env, "rollout", "pause", second)
        assert r.exit_code == 0 and "paused (paused by operator)" in r.output
        devices["d4"].go.set()
        driver.join(60)
        assert result and result[0].exit_code == 1, result
        rows = {d["device"]: d["state"] for d in rollouts.devices(second)}
        assert rows == {"d4": "failed", "d3": "pending"}
        assert len(devices["d3"].results) == d3_jobs
        assert rollouts.get(second).driver is None  # the lease is given back
    finally:
        store.close()
    r = hub_cli(env, "rollout", "stop", second)
    assert r.exit_code == 0 and "stopped (stopped by operator)" in r.output
    r = hub_cli(env, "rollout", "resume", second)
    assert r.exit_code == 2 and "is stopped; only a paused rollout resumes" in r.output


def test_a_device_that_never_answers_is_asked_again_then_counts_as_failed(
    fleet: dict[str, Any], hub: Client
) -> None:
    devices: dict[str, LabDevice] = fleet["devices"]
    env, art = fleet["env"], str(fleet["artifact"])
    for d in ("d1", "d2"):
        devices[d].start()
    wait_for(lambda: {m.topic.split("/")[3] for m in hub.on("/status")} >= {"d1", "d2"},
             what="d1's and d2's status")  # fmt: skip
    devices["d2"].stop()  # gone: its retained status (disconnected, version 0.1.0) stays
    # What the driver asks: the live device answers its `status` command (no update job yet);
    # the gone one says nothing, and its retained status names no such job.
    keys = E.load_public_keys(Path(env["WATCHPOST_HUB_RELEASE_PUBKEY"]))
    pusher = ReleasePusher(
        Ctx(Path(env["WATCHPOST_HUB_CONFIG"]), {}), release_mod.load(fleet["artifact"], keys)
    )
    try:
        assert pusher.job_state("d1", SITE, "j1", wait=5) == {}
        assert pusher.job_state("d2", SITE, "j1", wait=0.5) is None
    finally:
        pusher.close()

    r = hub_cli(env, "rollout", "start", art, "--device", "d2", "--canary", "0",
                "--job-timeout", "1", "--ask-for", "1")  # fmt: skip
    assert r.exit_code == 1, r.output  # the wave failed: paused, not waiting, not a success
    rid = r.stdout.splitlines()[0]
    store = open_store(env["WATCHPOST_HUB_STORE"])
    try:
        rollouts = Rollouts(store)
        (row,) = rollouts.devices(rid)
        assert (row["state"], row["version"]) == ("timeout", OLD)
        assert row["reason"] == (
            "no final answer within 1 s (status reports version 0.1.0); no answer to 1 status "
            "request over 1 s"
        )
        assert rollouts.get(rid).reason.startswith("wave 0: 1 of 1 devices failed")
    finally:
        store.close()
    assert devices["d2"].results == [] and devices["d1"].results == []
