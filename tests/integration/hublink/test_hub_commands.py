"""Signed remote management end to end: `watchpost hub …` ⇄ mosquitto over mutual TLS ⇄ the
device's HubLink + CommandHandler (with a fake Device), certificates from hub.provisioning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hubkit import PKI, REPO, Broker, Client, device_config, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import config as config_mod
from appliance.cli import main
from appliance.hublink.commands import CommandHandler, intel_dir_for
from appliance.hublink.link import HubLink
from hub import provisioning as prov
from protocol import envelope as E
from tests.unit.hublink.rig import FakeDevice

ROOT = "watchpost/v1/siteA/dev1"


@pytest.fixture
def command_key(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "keys"
    assert CliRunner().invoke(main, ["hub", "keygen", "--out", str(out)]).exit_code == 0
    return out / "command.key", out / "command.pub"


class Appliance:
    """HubLink + CommandHandler over a FakeDevice whose config lives in a real file."""

    def __init__(
        self,
        pki: PKI,
        broker: Broker,
        tmp_path: Path,
        pub: Path,
        device: str = "dev1",
        site: str = "siteA",
    ) -> None:
        state = tmp_path / "state"
        base = device_config(pki, broker, state, device, site, command_pubkey=str(pub))
        data = base.to_dict()
        data["log"]["file"] = str(tmp_path / "watchpost.log")
        data["log"]["eve"] = str(tmp_path / "eve.json")
        self.config_path = tmp_path / "watchpost.toml"
        config_mod.save(config_mod.from_dict(data, source=str(self.config_path)))
        cfg = config_mod.load(self.config_path)
        self.device = FakeDevice(cfg, intel_dir_for(cfg))
        self.synced = False
        self.handler = CommandHandler.from_config(self.device, clock_synced=lambda: self.synced)
        self.link: HubLink | None = None

    def start(self) -> None:
        self.handler.start()
        self.link = HubLink(self.device.config, handler=self.handler, backoff=(0.2, 1.0))
        self.link.start()

    def stop(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        self.handler.stop()

    def snapshot(self) -> tuple[Any, ...]:
        state = self.handler.state.path
        return (
            state.read_bytes() if state.exists() else None,
            self.config_path.read_bytes(),
            self.device.config.inline.mode,
            sorted(
                (p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in self.device.intel_dir.glob("*")
            )
            if self.device.intel_dir.exists()
            else [],
            dict(self.device.blocked),
            len(self.device.applied),
        )


@pytest.fixture
def appliance(
    pki: PKI, broker: Broker, tmp_path: Path, command_key: tuple[Path, Path]
) -> Iterator[Appliance]:
    a = Appliance(pki, broker, tmp_path / "dev1", command_key[1])
    yield a
    a.stop()


@pytest.fixture
def operator_env(pki: PKI, broker: Broker, command_key: tuple[Path, Path], tmp_path: Path):
    """An operator config file (as the demo would write it) plus the env var pointing at it."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(
        "[operator]\n"
        'host = "127.0.0.1"\n'
        f"port = {broker.port}\n"
        f'ca = "{pki.ca_dir / "ca.pem"}"\n'
        f'cert = "{pki.hub.cert}"\n'
        f'key = "{pki.hub.key}"\n'
        f'command_key = "{command_key[0]}"\n'
        'group = "hubworkers"\n'
    )
    return {"WATCHPOST_HUB_CONFIG": str(cfg)}


def hub_cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, ["hub", *args], env=env, catch_exceptions=False)


def last_json(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def test_send_round_trip_with_response_topic_and_devices(
    appliance: Appliance, hub: Client, operator_env: dict[str, str]
) -> None:
    appliance.start()
    wait_for(lambda: any(s["state"] == "ready" for s in hub.json_on(f"{ROOT}/status")))

    r = hub_cli(operator_env, "send", "dev1", "set-mode", '{"mode": "block"}')  # site learnt
    assert r.exit_code == 0, r.output
    answer = last_json(r.stdout)
    assert answer["ok"] is True and answer["result"] == {"mode": "block", "changed": True}
    assert appliance.device.config.inline.mode == "block"
    assert config_mod.load_running(appliance.config_path).inline.mode == "block"  # the overlay
    # The same answer on cmd/res and on the operator's response topic, with the correlation.
    wait_for(lambda: [a for a in hub.json_on(f"{ROOT}/cmd/res") if a["id"] == answer["id"]])
    (resp,) = wait_for(lambda: [m for m in hub.messages if m.topic.startswith(f"{ROOT}/cmd/res/")])
    assert json.loads(resp.payload) == answer
    assert resp.properties.CorrelationData == answer["id"].encode()
    # The retained config/reported follows the change.
    wait_for(
        lambda: [
            r
            for r in hub.json_on(f"{ROOT}/config/reported")
            if r["config"]["inline"]["mode"] == "block"
        ],
        what="config/reported after set-mode",
    )

    r = hub_cli(operator_env, "send", "dev1", "format-disk", "--timeout", "10")
    assert r.exit_code == 1 and "unknown command" in last_json(r.stdout)["error"]

    r = hub_cli(operator_env, "--site", "siteA", "send", "dev3", "ping", "--timeout", "1")
    assert r.exit_code == 3 and "no answer from dev3" in r.output

    r = hub_cli(operator_env, "devices", "--json", "--wait", "3")
    assert r.exit_code == 0, r.output
    rows = {row["device"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows["dev1"]["site"] == "siteA" and rows["dev1"]["state"] == "ready"
    assert rows["dev1"]["version"] and rows["dev1"]["last_seen"]


def test_each_bad_command_kind_is_refused_over_the_broker_and_changes_nothing(
    appliance: Appliance, hub: Client, command_key: tuple[Path, Path]
) -> None:
    appliance.synced = True  # so expiry is enforced
    appliance.start()
    wait_for(lambda: any(s["state"] == "ready" for s in hub.json_on(f"{ROOT}/status")))
    key = E.load_private_key(command_key[0])
    seq = [1_900_000_000_000]

    def env(cmd: str = "set-mode", args: Any = None, **over: Any) -> dict[str, Any]:
        seq[0] += 1
        e = E.make("dev1", cmd, {"mode": "block"} if args is None else args, key, seq=seq[0])
        fields = {k: v for k, v in e.items() if k != "sig"} | over
        return E.sign_document(fields, key)

    accepted = env("ping", {})
    replay_of = dict(accepted)
    unsigned = env()
    del unsigned["sig"]
    forged = dict(env(), args={"mode": "monitor"})
    other_key = E.sign_document(
        {k: v for k, v in env().items() if k != "sig"}, Ed25519PrivateKey.generate()
    )
    cases: list[tuple[str, bytes, str]] = [
        ("accepted", E.encode(accepted), ""),
        ("replayed", E.encode(replay_of), "replayed"),
        ("unsigned", E.encode(unsigned), "unsigned"),
        ("forged", E.encode(forged), "forged"),
        ("wrong-key", E.encode(other_key), "forged"),
        ("other-device", E.encode(env(device="dev2")), "wrong-device"),
        ("expired", E.encode(env(issued_at=1000, expires_at=2000)), "expired"),
        ("signed-for-desired", E.encode(env(**{"for": "desired"})), "wrong-purpose"),
        (
            "a-desired-config",
            E.encode(E.make_desired("dev1", {"inline": {"mode": "block"}}, key, version=seq[0])),
            "wrong-purpose",
        ),
        ("lone-surrogate", E.encode(env("ping", {}))[:-1] + b',"x":"\\ud800"}', "malformed"),
        ("malformed", b'{"id": "m1", "cmd": "ping"}', "malformed"),
        ("not-json", b"\x00garbage", "malformed"),
        ("unknown", E.encode(env("self-destruct", {})), "unknown-command"),
        ("too-large", E.encode(env("ping", {"pad": "x" * 70_000})), "too-large"),
    ]
    before = None
    for i, (name, payload, code) in enumerate(cases):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{ROOT}/cmd/res/itest"
        props.CorrelationData = f"c{i}".encode()
        hub.publish(f"{ROOT}/cmd", payload, properties=props)
        msg = wait_for(
            lambda i=i: [
                m
                for m in hub.on(f"{ROOT}/cmd/res/itest")
                if m.properties.CorrelationData == f"c{i}".encode()
            ],
            what=f"answer to {name}",
        )[0]
        answer = json.loads(msg.payload)
        if name == "accepted":
            assert answer["ok"] is True
            before = appliance.snapshot()
            continue
        assert answer["ok"] is False, (name, answer)
        assert answer["code"] == code and answer["error"], (name, answer)
        after = appliance.snapshot()
        if name == "expired":  # refused by the synchronised clock: the time floor moves to it
            assert after[1:] == before[1:]  # type: ignore[index]
            assert json.loads(after[0])["time_floor"] > 2000
            before = after
        assert after == before, name


def test_desired_config_applied_on_reconnect_when_newer(
    appliance: Appliance, hub: Client, operator_env: dict[str, str]
) -> None:
    # Published while the device is offline: retained, applied when it connects.
    r = hub_cli(
        operator_env,
        "--site",
        "siteA",
        "set-config",
        "dev1",
        '{"alerts": {"burst": 5}}',
        "--no-wait",
    )
    assert r.exit_code == 0, r.output
    desired = wait_for(lambda: hub.on(f"{ROOT}/config/desired"), what="the desired config")
    v1 = json.loads(desired[-1].payload)["seq"]
    appliance.start()
    wait_for(
        lambda: [x for x in hub.json_on(f"{ROOT}/config/reported") if x["version"] == v1],
        what="reported v1",
    )
    assert appliance.device.config.alerts.burst == 5
    assert config_mod.load_running(appliance.config_path).alerts.burst == 5
    applied = len(appliance.device.applied)

    # Reconnect: the retained desired comes again but is not newer, so nothing is re-applied.
    appliance.stop()
    reported_before = len(hub.on(f"{ROOT}/config/reported"))
    appliance.start()
    wait_for(
        lambda: len(hub.on(f"{ROOT}/config/reported")) > reported_before,
        what="reported after reconnect",
    )
    assert len(appliance.device.applied) == applied

    # A newer version while offline is applied on the next connect, merged with the old one.
    appliance.stop()
    r = hub_cli(
        operator_env,
        "--site",
        "siteA",
        "set-config",
        "dev1",
        '{"inline": {"workers": 2}}',
        "--no-wait",
    )
    assert r.exit_code == 0, r.output
    newer = wait_for(
        lambda: [m for m in hub.on(f"{ROOT}/config/desired") if json.loads(m.payload)["seq"] > v1],
        what="the newer desired config",
    )
    v2 = json.loads(newer[-1].payload)["seq"]
    assert v2 > v1
    appliance.start()
    wait_for(
        lambda: [x for x in hub.json_on(f"{ROOT}/config/reported") if x["version"] == v2],
        what="reported v2",
    )
    assert appliance.device.config.inline.workers == 2
    assert appliance.device.config.alerts.burst == 5

    # While connected: `--wait` returns the device's report; a bad value is refused (exit 1).
    r = hub_cli(operator_env, "set-config", "dev1", '{"alerts": {"window": 60}}')
    assert r.exit_code == 0, r.output
    assert last_json(r.stdout)["config"]["alerts"]["window"] == 60.0
    before = appliance.config_path.read_bytes()
    r = hub_cli(operator_env, "set-config", "dev1", '{"alerts": {"window": -1}}')
    assert r.exit_code == 1 and "alerts.window" in r.output
    assert appliance.config_path.read_bytes() == before


def test_push_intel_bigger_than_the_broker_packet_limit(
    pki: PKI, tmp_path: Path, command_key: tuple[Path, Path], hub_env_for: Any
) -> None:
    limit = 64 * 1024 + 4096
    b = Broker(pki, tmp_path / "small-broker")
    b.settings = dataclasses.replace(b.settings, max_packet_size=limit)
    b.conf = prov.write_broker_conf(pki.ca_dir, b.settings, ["127.0.0.1", "localhost"])
    b.start()
    a = Appliance(pki, b, tmp_path / "dev1", command_key[1])
    try:
        a.start()
        data = "".join(
            f"bad{i}.example.net\n" if i % 2 else f"198.51.{i // 256 % 256}.{i % 256}\n"
            for i in range(16000)
        ).encode()
        assert len(data) > 3 * limit
        feed = tmp_path / "hub-feed.list"
        feed.write_bytes(data)
        env = hub_env_for(b)
        wait_for(lambda: a.link is not None and a.link.state == "up", what="device link up")
        r = hub_cli(env, "--site", "siteA", "push-intel", "dev1", str(feed), "--version", "42")
        assert r.exit_code == 0, r.output
        final = last_json(r.stdout)
        assert final["job"]["state"] == "succeeded" and final["job"]["count"] > 3
        assert (a.device.intel_dir / "hub-feed.list").read_bytes() == data
        assert a.device.store.match_domain("x.bad15999.example.net") is not None
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def hub_env_for(pki: PKI, command_key: tuple[Path, Path]) -> Any:
    def make(b: Broker) -> dict[str, str]:
        return {
            "WATCHPOST_HUB_HOST": "127.0.0.1",
            "WATCHPOST_HUB_PORT": str(b.port),
            "WATCHPOST_HUB_CA": str(pki.ca_dir / "ca.pem"),
            "WATCHPOST_HUB_CERT": str(pki.hub.cert),
            "WATCHPOST_HUB_KEY": str(pki.hub.key),
            "WATCHPOST_HUB_COMMAND_KEY": str(command_key[0]),
        }

    return make


class TailWorker:
    """`watchpost hub tail` in a process of its own (one hub worker)."""

    def __init__(self, env: dict[str, str], dedup_db: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "hub",
                "tail",
                "--dedup-db",
                str(dedup_db),
                "--gap-grace",
                "2",
                "--client-id",
                name,
            ],
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.out: list[dict[str, Any]] = []
        self.err: list[str] = []
        self.subscribed = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.rstrip())
            if "subscribed" in line:
                self.subscribed.set()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_tail_splits_load_over_a_shared_subscription_and_dedups(
    broker: Broker, pki: PKI, operator_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "seen.db"
    workers = [TailWorker(operator_env, db, f"worker-{i}") for i in range(2)]
    device = Client(broker, pki.device("dev1").cert, pki.device("dev1").key, client_id="dev1")
    try:
        for w in workers:
            assert w.subscribed.wait(20), w.err
        seqs = [s for s in range(1, 21) if s != 7]
        sent = []
        for s in seqs:
            sent.append(s)
            if s % 5 == 0:
                sent.append(s)  # redelivered after a reconnect: same id
        for s in sent:
            alert = {
                "event_type": "alert",
                "alert": {"signature_id": 1},
                "watchpost": {"id": f"dev1-{s}", "seq": s, "device": "dev1", "site": "siteA"},
            }
            rc = device.publish(f"{ROOT}/alerts", json.dumps(alert))
            assert not rc.is_failure
        wait_for(
            lambda: sum(len(w.out) for w in workers) >= len(seqs),
            what="every alert printed by some worker",
        )
        wait_for(
            lambda: any("missing alert seq 7" in line for w in workers for line in w.err),
            what="the gap at seq 7 reported",
        )
    finally:
        for w in workers:
            w.stop()
        device.close()
    ids = [a["watchpost"]["id"] for w in workers for a in w.out]
    assert sorted(ids) == sorted(f"dev1-{s}" for s in seqs)  # each once, none twice
    assert all(w.out for w in workers), "the shared subscription gave both workers alerts"
    gap_lines = [line for w in workers for line in w.err if line.startswith("gap:")]
    assert all("siteA/dev1" in line for line in gap_lines)
