"""`watchpost hub …` against an in-process fake broker wired to a real CommandHandler."""

from __future__ import annotations

import json
import queue
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli import main
from hub import operator as op
from protocol import bundle
from protocol import envelope as E
from tests.unit.hublink.rig import DEVICE, Rig

SITE = "site1"
ROOT = f"watchpost/v1/{SITE}/{DEVICE}"


class FakeBroker:
    """Routes publishes between fake operator connections and one device's handler."""

    def __init__(self, rig: Rig | None) -> None:
        self.rig = rig
        self.retained: dict[str, bytes] = {}
        self.published: list[tuple[str, bytes, bool]] = []
        self.conns: list[FakeConnection] = []
        self.settings: list[op.Settings] = []
        self.tamper: Any = None  # payload -> payload, for cmd messages in transit
        self.deliver = True
        if rig is not None:
            rig.handler.attach(self._device_publish)

    def _device_publish(self, sub: str, payload: dict[str, Any], retain: bool) -> None:
        self.route(f"{ROOT}/{sub}", json.dumps(payload).encode(), retain, None)

    def route(self, topic: str, payload: bytes, retain: bool, props: Any) -> None:
        self.published.append((topic, payload, retain))
        if retain:
            self.retained[topic] = payload
        for c in self.conns:
            if not c.closed and any(_matches(f, topic) for f in c.filters):
                c.messages.put(
                    SimpleNamespace(
                        topic=topic, payload=payload, retain=False, properties=props, mid=1, qos=1
                    )
                )
        if self.rig is None or not self.deliver:
            return
        if topic == f"{ROOT}/cmd":
            if self.tamper is not None:
                payload = self.tamper(payload)
            reply_to = props.ResponseTopic
            corr = props.CorrelationData

            def reply(answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.route(f"{ROOT}/cmd/res", data, False, None)
                self.route(reply_to, data, False, SimpleNamespace(CorrelationData=corr))

            self.rig.handler.on_command(payload, reply)
        elif topic == f"{ROOT}/config/desired":
            self.rig.handler.on_desired(payload)


def _matches(filt: str, topic: str) -> bool:
    if filt.startswith("$share/"):
        filt = filt.split("/", 2)[2]
    f, t = filt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class FakeConnection:
    broker: FakeBroker

    def __init__(self, settings: op.Settings, **kw: Any) -> None:
        self.settings = settings
        self.kw = kw
        self.client_id = kw.get("client_id") or f"op-{len(self.broker.conns)}"
        self.messages: queue.Queue[Any] = queue.Queue()
        self.filters: list[str] = []
        self.lost = None
        self.acked = 0
        self.closed = False
        self.broker.conns.append(self)
        self.broker.settings.append(settings)

    def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 10) -> None:
        self.filters += topics
        for t, payload in self.broker.retained.items():
            if any(_matches(f, t) for f in topics) and payload:
                self.messages.put(
                    SimpleNamespace(topic=t, payload=payload, retain=True, properties=None)
                )

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.broker.route(topic, payload, kw.get("retain", False), kw.get("properties"))

    def ack(self, msg: Any) -> None:
        self.acked += 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def keys(tmp_path: Path, rig: Rig) -> Path:
    """The rig's command key as the operator's key file."""
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "command.key"
    path.write_bytes(
        rig.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def broker(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBroker]:
    rig.clock[0] = time.time()  # the operator signs with the real clock
    b = FakeBroker(rig)
    FakeConnection.broker = b
    monkeypatch.setattr(op.connection, "Connection", FakeConnection)
    b.retained[f"{ROOT}/status"] = json.dumps({"state": "ready", "site": SITE}).encode()
    yield b


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["hub", *args], env=env, catch_exceptions=False)


def hub_args(keyfile: Path, *rest: str) -> list[str]:
    return ["--host", "broker.test", "--command-key", str(keyfile), *rest]


# --- settings -------------------------------------------------------------------------------------


def test_settings_file_relative_paths_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[operator]\nhost = "h"\nport = 1884\nca = "ca.pem"\nsite = "s"\n')
    s = op.load_settings(cfg, {"site": "other", "cert": None})
    assert (s.host, s.port, s.ca, s.site) == ("h", 1884, str(tmp_path / "ca.pem"), "other")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[operator]\nhots = "h"\n', "operator.hots: unknown key"),
        ('[operator]\nport = "x"\n', "operator.port: expected int"),
        ('host = "h"\n', "expected one [operator] table"),
        ("[operator\n", "hub.toml"),
        ("[operator]\nport = 70000\n", "port: must be between"),
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(text)
    with pytest.raises(op.OperatorError, match=words.replace("[", r"\[")):
        op.load_settings(cfg, {})


def test_env_vars_and_config_file_reach_the_connection(
    tmp_path: Path, broker: FakeBroker, keys: Path
) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[operator]\nhost = "from-file"\ncommand_key = "{keys}"\nport = 1883\n')
    env = {"WATCHPOST_HUB_CONFIG": str(cfg), "WATCHPOST_HUB_HOST": "from-env"}
    r = run("send", DEVICE, "ping", env=env)
    assert r.exit_code == 0, r.output
    assert broker.settings[-1].host == "from-env" and broker.settings[-1].port == 1883


def test_no_host_is_a_clear_error(tmp_path: Path, keys: Path, monkeypatch) -> None:
    monkeypatch.setattr(op.group, "default_config_path", lambda: None)
    r = CliRunner().invoke(main, ["hub", "--command-key", str(keys), "send", "d", "ping"])
    assert r.exit_code == 2 and "no broker host" in r.output


# --- keygen ---------------------------------------------------------------------------------------


def test_keygen(tmp_path: Path) -> None:
    r = run("keygen", "--out", str(tmp_path / "k"))
    assert r.exit_code == 0, r.output
    priv, pub = tmp_path / "k/command.key", tmp_path / "k/command.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    key = E.load_private_key(priv)
    assert E.load_public_keys(pub)[0].public_bytes_raw() == key.public_key().public_bytes_raw()
    before = priv.read_bytes()
    r = run("keygen", "--out", str(tmp_path / "k"))
    assert r.exit_code == 2 and "exists" in r.output and priv.read_bytes() == before
    assert run("keygen", "--out", str(tmp_path / "k"), "--force").exit_code == 0
    assert priv.read_bytes() != before
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


# --- send -----------------------------------------------------------------------------------------


def test_send_round_trip_with_response_topic(broker: FakeBroker, keys: Path, rig: Rig) -> None:
    r = run(*hub_args(keys, "--site", SITE), "send", DEVICE, "set-mode", '{"mode": "block"}')
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["ok"] is True and answer["result"] == {"mode": "block", "changed": True}
    assert rig.device.config.inline.mode == "block"
    cmd = next(p for t, p, _ in broker.published if t == f"{ROOT}/cmd")
    env = json.loads(cmd)
    E.verify(env, [rig.key.public_key()])
    assert env["id"] == answer["id"] and env["device"] == DEVICE
    res_topics = {t for t, _, _ in broker.published if "/cmd/res/" in t}
    assert len(res_topics) == 1 and res_topics.pop().startswith(f"{ROOT}/cmd/res/op-")


def test_send_learns_the_site_from_retained_status(broker: FakeBroker, keys: Path) -> None:
    r = run(*hub_args(keys), "send", DEVICE, "ping")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["result"]["pong"] is True


def test_send_unknown_site(broker: FakeBroker, keys: Path) -> None:
    r = run(*hub_args(keys), "send", "nodev", "ping")
    assert r.exit_code == 2 and "no retained status" in r.output


def test_send_error_answer_exits_1(broker: FakeBroker, keys: Path) -> None:
    r = run(*hub_args(keys, "--site", SITE), "send", DEVICE, "format-disk")
    assert r.exit_code == 1
    assert "unknown command" in json.loads(r.stdout.strip().splitlines()[-1])["error"]


def test_send_timeout_exits_3(broker: FakeBroker, keys: Path) -> None:
    broker.deliver = False
    r = run(*hub_args(keys, "--site", SITE), "send", DEVICE, "ping", "--timeout", "0.3")
    assert r.exit_code == 3 and "no answer" in r.output


@pytest.mark.parametrize(("args", "words"), [("[1]", "JSON object"), ("{x", "not JSON")])
def test_send_bad_args(broker: FakeBroker, keys: Path, args: str, words: str) -> None:
    r = run(*hub_args(keys, "--site", SITE), "send", DEVICE, "ping", args)
    assert r.exit_code == 2 and words in r.output


def test_send_args_from_file(broker: FakeBroker, keys: Path, tmp_path: Path, rig: Rig) -> None:
    f = tmp_path / "args.json"
    f.write_text('{"address": "203.0.113.9", "ttl": 60}')
    r = run(*hub_args(keys, "--site", SITE), "send", DEVICE, "block", f"@{f}")
    assert r.exit_code == 0, r.output
    assert rig.device.blocked == {"203.0.113.9": 60}


def test_send_without_command_key(broker: FakeBroker, tmp_path: Path) -> None:
    r = run(
        "--host", "h", "--site", SITE, "--command-key", str(tmp_path / "nope"), "send", "d", "ping"
    )
    assert r.exit_code == 2 and "no such file" in r.output


# --- push-intel -----------------------------------------------------------------------------------


LIST = "".join(f"198.51.100.{i}\n" for i in range(1, 250)).encode()


def test_push_intel_in_chunks(broker: FakeBroker, keys: Path, tmp_path: Path, rig: Rig) -> None:
    f = tmp_path / "feed.list"
    f.write_bytes(LIST)
    r = run(
        *hub_args(keys, "--site", SITE),
        "push-intel",
        DEVICE,
        str(f),
        "--version",
        "2026.1",
        "--chunk-size",
        "1000",
    )
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["job"]["state"] == "succeeded" and final["job"]["count"] == 4
    assert (rig.intel_dir / "feed.list").read_bytes() == LIST
    assert bundle.installed(rig.intel_dir)["feed.list"]["version"] == "2026.1"


def test_push_intel_resends_a_chunk_damaged_in_transit(
    broker: FakeBroker, keys: Path, tmp_path: Path, rig: Rig
) -> None:
    f = tmp_path / "feed.list"
    f.write_bytes(LIST)
    damaged = []

    def tamper(payload: bytes) -> bytes:
        env = json.loads(payload)
        if env["args"]["index"] == 2 and not damaged:
            damaged.append(1)
            env["args"]["data"] = env["args"]["data"][::-1]
            return json.dumps(env).encode()
        return payload

    broker.tamper = tamper
    r = run(
        *hub_args(keys, "--site", SITE),
        "push-intel",
        DEVICE,
        str(f),
        "--version",
        "v",
        "--chunk-size",
        "1000",
    )
    assert r.exit_code == 0, r.output
    assert damaged and "forged" in r.stderr
    assert (rig.intel_dir / "feed.list").read_bytes() == LIST


def test_push_intel_failure_exits_1(broker: FakeBroker, keys: Path, tmp_path: Path, rig: Rig):
    rig.device.reload_error = "bad store"
    f = tmp_path / "feed.list"
    f.write_bytes(LIST)
    r = run(*hub_args(keys, "--site", SITE), "push-intel", DEVICE, str(f), "--version", "v")
    assert r.exit_code == 1
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["job"]["state"] == "failed" and "bad store" in final["error"]
    assert not (rig.intel_dir / "feed.list").exists()


# --- set-config -----------------------------------------------------------------------------------


def test_set_config_publishes_retained_desired_and_waits_for_reported(
    broker: FakeBroker, keys: Path, rig: Rig
) -> None:
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"alerts": {"burst": 7}}')
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["config"]["alerts"]["burst"] == 7
    assert rig.device.config.alerts.burst == 7
    first = json.loads(broker.retained[f"{ROOT}/config/desired"])
    assert first["cmd"] == "set-config" and first["expires_at"] - first["issued_at"] > 86400
    # A second change is merged into the retained overlay, not replacing it.
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"inline": {"workers": 2}}')
    assert r.exit_code == 0, r.output
    second = json.loads(broker.retained[f"{ROOT}/config/desired"])
    assert second["args"] == {"alerts": {"burst": 7}, "inline": {"workers": 2}}
    assert second["seq"] > first["seq"]
    assert json.loads(r.stdout.strip().splitlines()[-1])["version"] == second["seq"]


def test_set_config_from_toml_and_replace(
    broker: FakeBroker, keys: Path, rig: Rig, tmp_path: Path
) -> None:
    run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"alerts": {"burst": 7}}')
    f = tmp_path / "c.toml"
    f.write_text("[inline]\nmode = 'block'\n")
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, "--file", str(f), "--replace")
    assert r.exit_code == 0, r.output
    args = json.loads(broker.retained[f"{ROOT}/config/desired"])["args"]
    assert args == {"inline": {"mode": "block"}}


def test_set_config_rejected_exits_1(broker: FakeBroker, keys: Path, rig: Rig) -> None:
    before = rig.config_path.read_bytes()
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"alerts": {"burst": "x"}}')
    assert r.exit_code == 1 and "alerts.burst" in r.output
    assert rig.config_path.read_bytes() == before


def test_set_config_clear(broker: FakeBroker, keys: Path) -> None:
    run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"alerts": {"burst": 7}}')
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, "--clear")
    assert r.exit_code == 0 and broker.retained[f"{ROOT}/config/desired"] == b""


def test_set_config_refuses_foreign_retained_desired(broker: FakeBroker, keys: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = E.make(DEVICE, "set-config", {}, Ed25519PrivateKey.generate(), seq=1)
    broker.retained[f"{ROOT}/config/desired"] = E.encode(other)
    r = run(*hub_args(keys, "--site", SITE), "set-config", DEVICE, '{"alerts": {"burst": 7}}')
    assert r.exit_code == 2 and "not usable" in r.output and "--replace" in r.output


# --- devices --------------------------------------------------------------------------------------


def test_devices_table_and_json(broker: FakeBroker) -> None:
    broker.retained["watchpost/v1/s2/dev9/status"] = json.dumps(
        {
            "state": "lost",
            "version": "0.1.0",
            "mode": "block",
            "intel_version": "abc",
            "ts": 1_800_000_000,
        }
    ).encode()
    r = run("--host", "h", "devices", "--wait", "0.2")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "SITE",
        "DEVICE",
        "STATE",
        "VERSION",
        "MODE",
        "INTEL",
        "LAST",
        "SEEN",
    ]
    assert lines[1].split() == [
        "s2",
        "dev9",
        "lost",
        "0.1.0",
        "block",
        "abc",
        "2027-01-15",
        "08:00:00Z",
    ]
    r = run("--host", "h", "devices", "--json", "--wait", "0.2")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["site"], x["device"], x["state"]) for x in rows] == [
        ("s2", "dev9", "lost"),
        (SITE, DEVICE, "ready"),
    ]


# --- tail -----------------------------------------------------------------------------------------


def alert(i: int, seq: int, device: str = DEVICE) -> bytes:
    return json.dumps(
        {"event_type": "alert", "watchpost": {"id": f"a{i}", "seq": seq, "device": device}}
    ).encode()


def test_tail_dedups_and_reports_gaps(broker: FakeBroker, monkeypatch) -> None:
    msgs = [alert(1, 1), alert(2, 2), alert(2, 2), alert(4, 4), alert(1, 1), alert(5, 5)]
    real = FakeConnection.subscribe

    def subscribe(self: FakeConnection, topics: list[str], **kw: Any) -> None:
        real(self, topics, **kw)
        assert topics == ["$share/grp/watchpost/v1/+/+/alerts"]
        for m in msgs:
            self.messages.put(SimpleNamespace(topic=f"{ROOT}/alerts", payload=m, mid=1, qos=1))

    monkeypatch.setattr(FakeConnection, "subscribe", subscribe)
    r = run("--host", "h", "--group", "grp", "tail", "--count", "4", "--gap-grace", "0")
    assert r.exit_code == 0, r.output
    ids = [json.loads(line)["watchpost"]["id"] for line in r.stdout.splitlines()]
    assert ids == ["a1", "a2", "a4", "a5"]
    assert f"gap: {SITE}/{DEVICE} missing alert seq 3" in r.stderr
    (conn,) = broker.conns
    assert conn.kw["manual_ack"] is True  # acknowledged only after printing
    assert conn.acked == 6  # duplicates are acknowledged too, just not printed


def test_dedup_shared_through_sqlite(tmp_path: Path) -> None:
    a, b = op.Dedup(tmp_path / "d.db"), op.Dedup(tmp_path / "d.db")
    assert a.first("x", "s/d", 1) and not b.first("x", "s/d", 1) and b.first("y", "s/d", 2)
    assert a.seen_seqs("s/d", 0, 10) == {1, 2}
    mem = op.Dedup(memory_max=2)
    assert mem.first("1", "", None) and mem.first("2", "", None) and mem.first("3", "", None)
    assert mem.first("1", "", None)  # evicted, bounded memory
    assert not mem.first("3", "", None)
    a.close()
    b.close()


def test_gap_tracker() -> None:
    g = op.GapTracker(grace=5)
    for s in (10, 11, 14, 12):
        g.saw("d", s, 100.0)
    assert g.due(104.0) == []  # still within grace: 13 may be late
    assert g.due(105.0) == [("d", 13, 13)]
    assert g.due(200.0) == []  # reported once
    g.saw("d", 20, 200.0)
    g.saw("d", 17, 201.0)  # late arrival splits the gap
    assert g.due(300.0) == [("d", 15, 16), ("d", 18, 19)]
    g.saw("d", 5, 300.0)  # older than anything seen: not a gap
    assert g.due(400.0) == []


def test_gap_tracker_consults_shared_dedup(tmp_path: Path) -> None:
    shared = op.Dedup(tmp_path / "d.db")
    g = op.GapTracker(grace=1, dedup=shared)
    g.saw("s/d", 1, 0.0)
    g.saw("s/d", 4, 0.0)
    shared.first("other-worker", "s/d", 2)  # another worker printed seq 2
    assert g.due(2.0) == [("s/d", 3, 3)]
    shared.close()


def test_matches_helper() -> None:
    assert _matches("$share/g/watchpost/v1/+/+/alerts", "watchpost/v1/s/d/alerts")
    assert not _matches("watchpost/v1/+/+/alerts", "watchpost/v1/s/d/status")


def test_next_seq_is_issue_time_in_ms_and_increasing() -> None:
    ctx = op.Ctx(None, {})
    a, b = ctx.next_seq(), ctx.next_seq()
    assert b > a > 1_700_000_000_000
