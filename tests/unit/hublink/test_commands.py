"""The device-side command handler: every rejection changes nothing; every command works."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import config as config_mod
from appliance.hublink.commands import (
    REDACTED,
    CommandHandler,
    CommandStateError,
    redacted,
    system_clock_synced,
    tail_lines,
)
from protocol import bundle
from protocol import envelope as E
from tests.unit.hublink.rig import DEVICE, Rig
from tests.unit.test_config import HOSTILE


def assert_rejected(rig: Rig, payload: dict[str, Any] | bytes, code: str, words: str) -> None:
    before = rig.snapshot()
    answer = rig.one(payload)
    assert answer["ok"] is False, answer
    assert answer["code"] == code, answer
    assert words in answer["error"], answer
    assert rig.snapshot() == before


# --- rejections ----------------------------------------------------------------------------------


def test_accepted_command_moves_seq_so_rejections_have_something_to_keep(rig: Rig) -> None:
    env = rig.env("ping")
    assert rig.one(env)["ok"] is True
    state = json.loads(rig.state_path.read_bytes())
    assert state["last_seq"] == {DEVICE: env["seq"]}
    assert env["id"] in state["recent_ids"]


def test_unsigned(rig: Rig) -> None:
    rig.one(rig.env("ping"))
    env = rig.env("set-mode", {"mode": "block"})
    del env["sig"]
    assert_rejected(rig, env, E.UNSIGNED, "unsigned")
    env["sig"] = ""
    assert_rejected(rig, env, E.UNSIGNED, "unsigned")


def test_forged(rig: Rig) -> None:
    rig.one(rig.env("ping"))
    env = rig.env("set-mode", {"mode": "block"})
    assert_rejected(rig, dict(env, args={"mode": "monitor"}), E.FORGED, "does not verify")
    assert_rejected(rig, dict(env, seq=env["seq"] + 5), E.FORGED, "does not verify")
    other = E.sign_document(
        {k: v for k, v in env.items() if k != "sig"}, Ed25519PrivateKey.generate()
    )
    assert_rejected(rig, other, E.FORGED, "does not verify")
    assert_rejected(rig, dict(env, sig="@@@"), E.FORGED, "not valid base64")


def test_for_another_device(rig: Rig) -> None:
    env = rig.env("set-mode", {"mode": "block"}, device="dev2")
    assert_rejected(rig, env, E.WRONG_DEVICE, "for 'dev2', this is 'dev1'")


def test_expired_once_clock_is_synchronised_and_never_applied_by_any_route(rig: Rig) -> None:
    now = int(rig.clock[0])
    env = rig.env("set-mode", {"mode": "block"}, issued_at=now - 600, expires_at=now - 1)
    before = rig.snapshot()
    answer = rig.one(env)
    assert answer["ok"] is False and answer["code"] == E.EXPIRED
    assert "expired at" in answer["error"]
    after = rig.snapshot()
    # Nothing changed but the time floor: the synchronised time at which it was found expired.
    assert {**after, "state": None} == {**before, "state": None}
    assert json.loads(after["state"])["time_floor"] == now
    # After a reboot without a synchronised clock (a Pi has no RTC) it is still expired ...
    rig.synced[0] = False
    rig.clock[0] = 0.0
    rig.restart_handler()
    again = rig.one(env)
    assert again["code"] == E.EXPIRED and "not synchronised" in again["error"]
    # ... and it cannot come in as a desired config either.
    rig.handler.handle_desired(E.encode(env))
    assert "wrong purpose" in rig.published[-1][1]["error"]
    assert rig.device.config.inline.mode == "monitor" and rig.device.applied == []


def test_without_a_synchronised_clock_expiry_is_judged_by_the_time_floor(rig: Rig) -> None:
    rig.synced[0] = False
    answer = rig.one(rig.env("ping", issued_at=1000, expires_at=1300))  # nothing seen yet
    assert answer["ok"] is True
    assert answer["result"]["clock_synced"] is False
    assert rig.one(rig.env("ping", issued_at=5000, expires_at=5300))["ok"] is True
    # Expired before the latest issued_at accepted: refused, also after a restart.
    late = rig.env("set-mode", {"mode": "block"}, issued_at=4000, expires_at=4300)
    assert_rejected(rig, late, E.EXPIRED, "before 5000")
    rig.restart_handler()
    assert_rejected(rig, late, E.EXPIRED, "before 5000")
    assert rig.one(rig.env("ping", issued_at=4990, expires_at=5290))["ok"] is True


def test_replayed_same_envelope(rig: Rig) -> None:
    env = rig.env("set-mode", {"mode": "block"})
    assert rig.one(env)["ok"] is True
    assert rig.device.config.inline.mode == "block"
    rig.one(rig.env("set-mode", {"mode": "monitor"}))
    assert_rejected(rig, env, E.REPLAYED, "not above the last accepted")
    assert rig.device.config.inline.mode == "monitor"


def test_replayed_lower_seq_and_reused_id(rig: Rig) -> None:
    first = rig.env("ping")
    rig.one(first)
    assert_rejected(rig, rig.env("ping", seq=first["seq"]), E.REPLAYED, "not above")
    assert_rejected(rig, rig.env("ping", seq=first["seq"] - 1), E.REPLAYED, "not above")
    assert_rejected(rig, rig.env("ping", id=first["id"]), E.REPLAYED, "already accepted")


def test_replay_after_restart_uses_persisted_seq(rig: Rig) -> None:
    env = rig.env("set-mode", {"mode": "block"})
    assert rig.one(env)["ok"] is True
    rig.restart_handler()
    assert_rejected(rig, env, E.REPLAYED, "not above")
    assert rig.one(rig.env("ping"))["ok"] is True


def test_corrupt_replay_state_refuses_to_start(rig: Rig) -> None:
    rig.one(rig.env("ping"))
    rig.state_path.write_text("{half")
    with pytest.raises(CommandStateError, match="unreadable"):
        rig.restart_handler()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not json", "not JSON"),
        (b"\xff", "not UTF-8"),
        (b"[]", "JSON object"),
        (b'{"id": "x"}', "missing field(s)"),
    ],
)
def test_malformed_bytes(rig: Rig, payload: bytes, words: str) -> None:
    assert_rejected(rig, payload, E.MALFORMED, words)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"seq": "12"}, "seq must be"),
        ({"args": "x"}, "args must be an object"),
        ({"expires_at": 5}, "before issued_at"),
        ({"extra": True}, "unexpected field(s) extra"),
    ],
)
def test_malformed_fields(rig: Rig, over: dict[str, Any], words: str) -> None:
    env = rig.env("ping")
    env.update(over)
    answer_id = env["id"]
    assert_rejected(rig, env, E.MALFORMED, words)
    assert rig.one(env)["id"] == answer_id  # the answer names the envelope


def test_unknown_command(rig: Rig) -> None:
    assert_rejected(rig, rig.env("format-disk"), E.UNKNOWN, "unknown command 'format-disk'")


def test_over_64_kib(rig: Rig) -> None:
    env = rig.env("ping", {"pad": "x" * E.MAX_ENVELOPE_BYTES})
    assert_rejected(rig, env, E.TOO_LARGE, "too large")


@pytest.mark.parametrize(
    ("cmd", "args", "words"),
    [
        ("ping", {"x": 1}, "unknown argument(s) x"),
        ("set-mode", {}, "args.mode is required"),
        ("set-mode", {"mode": "panic"}, "must be one of monitor, block"),
        ("block", {"address": "not-an-ip"}, "not an IP address"),
        ("block", {"address": "203.0.113.5", "ttl": 0}, "args.ttl must be from 1"),
        ("block", {"address": "203.0.113.5", "ttl": True}, "args.ttl must be int"),
        ("identify", {"seconds": 100000}, "args.seconds must be from 1 to 600"),
        ("logs", {"lines": 5000}, "args.lines must be from 1 to 1000"),
        ("ack-alerts", {"ids": [1, 2]}, "alert id strings"),
        ("set-config", {"inline": {"workers": "two"}}, "inline.workers: expected an integer"),
        ("set-config", {"inline": {"nope": 1}}, "inline.nope: unknown key"),
        ("set-config", {"inline": 5}, "inline: expected a table"),
        ("intel-update", {"job": "j"}, "args: missing"),
    ],
)
def test_invalid_args_change_nothing(rig: Rig, cmd: str, args: dict[str, Any], words: str) -> None:
    assert_rejected(rig, rig.env(cmd, args), "invalid", words)


def test_refusals_change_nothing(rig: Rig) -> None:
    assert_rejected(rig, rig.env("block", {"address": "198.18.0.1"}), "refused", "never_block")
    assert_rejected(
        rig,
        rig.env("block", {"address": "127.0.0.1"}),
        "refused",
        "not an address that can be blocked",
    )
    assert_rejected(rig, rig.env("set-config", {"device": {"id": "evil"}}), "refused", "device.id")
    assert_rejected(
        rig, rig.env("set-config", {"hub": {"enabled": False}}), "refused", "hub.enabled"
    )


@pytest.mark.parametrize(("changes", "key", "words"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_each_hostile_set_config_key_is_refused_and_nothing_saved(
    rig: Rig, changes: dict[str, Any], key: str, words: str
) -> None:
    """Paths, privacy, the test knob, status secrets, identity and out-of-production values."""
    harmless = {"alerts": {"window": 61}}
    both = {s: {**harmless.get(s, {}), **changes.get(s, {})} for s in {*harmless, *changes}}
    for send in (
        lambda: rig.one(rig.env("set-config", both)),
        lambda: rig.handler.handle_desired(rig.desired(both, version=10_000 + rig.seq)),
    ):
        before = rig.snapshot()
        answer = send()
        if answer is not None:
            assert answer["ok"] is False and answer["code"] == "refused", answer
            assert key in answer["error"] and words in answer["error"], answer
        else:
            assert key in rig.published[-1][1]["error"]
        assert rig.snapshot() == before
        assert rig.device.applied == []


def test_set_config_refused_by_device_changes_nothing(rig: Rig) -> None:
    rig.device.refuse_config = "no such interface"
    assert_rejected(
        rig, rig.env("set-config", {"inline": {"workers": 3}}), "refused", "no such interface"
    )


def test_set_config_apply_crash_is_undone(rig: Rig) -> None:
    rig.device.fail_apply = True
    before = rig.snapshot()
    answer = rig.one(rig.env("set-config", {"inline": {"workers": 2}}))
    assert answer["ok"] is False and "driver exploded" in answer["error"]
    assert rig.snapshot() == before


def test_set_config_save_failure_is_undone(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_mod, "save_remote", broken_save)
    original = rig.device.config
    answer = rig.one(rig.env("set-config", {"inline": {"workers": 2}}))
    assert answer["ok"] is False and "could not save" in answer["error"]
    assert rig.device.config == original  # re-applied the old one
    assert rig.device.applied[-1] == original
    assert not rig.state_path.exists()


# --- success paths --------------------------------------------------------------------------------


def test_ping_and_status(rig: Rig) -> None:
    assert rig.one(rig.env("ping"))["result"] == {
        "pong": True,
        "time": int(rig.clock[0]),
        "clock_synced": True,
    }
    status = rig.one(rig.env("status"))["result"]
    assert status["state"] == "ready" and status["mode"] == "monitor"
    assert status["commands"]["commands_accepted"] == 1
    assert status["commands"]["last_seq"] == rig.seq  # its own: saved before it ran


def test_get_config_redacts_secrets(rig: Rig) -> None:
    result = rig.one(rig.env("get-config"))["result"]
    assert result["config"]["privacy"]["key"] == REDACTED
    assert result["config"]["device"]["id"] == DEVICE
    assert "k" * 32 not in json.dumps(result)


def test_set_config_applies_saves_and_reports(rig: Rig) -> None:
    office_file = rig.config_path.read_bytes()
    answer = rig.one(rig.env("set-config", {"alerts": {"window": 60}, "inline": {"workers": 2}}))
    assert answer["ok"] is True and answer["result"]["changed"] is True
    assert rig.device.config.alerts.window == 60.0
    on_disk = config_mod.load_running(rig.config_path)
    assert on_disk.alerts.window == 60.0 and on_disk.inline.workers == 2
    assert on_disk.privacy.key == "k" * 32  # secrets kept on disk
    # saved as the hub's overlay in the state dir; the office's file is never written
    assert rig.config_path.read_bytes() == office_file
    overlay = config_mod.remote_path(rig.device.config.device.state_dir).read_text()
    assert "window = 60" in overlay and "privacy" not in overlay
    topic, payload, retain = rig.published[-1]
    assert (topic, retain) == ("config/reported", True)
    assert payload["config"]["inline"]["workers"] == 2
    assert payload["config"]["privacy"]["key"] == REDACTED


def test_set_config_round_trip_of_get_config_keeps_secrets(rig: Rig) -> None:
    cfg = rig.one(rig.env("get-config"))["result"]["config"]
    cfg["alerts"]["burst"] = 10
    answer = rig.one(rig.env("set-config", cfg))
    assert answer["ok"] is True, answer
    assert rig.device.config.privacy.key == "k" * 32
    assert config_mod.load_running(rig.config_path).alerts.burst == 10


def test_set_config_without_change_writes_nothing(rig: Rig) -> None:
    before = rig.config_path.read_bytes()
    answer = rig.one(rig.env("set-config", {"inline": {"mode": "monitor"}}))
    assert answer["result"]["changed"] is False
    assert rig.config_path.read_bytes() == before and rig.device.applied == []


def test_set_mode(rig: Rig) -> None:
    answer = rig.one(rig.env("set-mode", {"mode": "block"}))
    assert answer["result"] == {"mode": "block", "changed": True}
    assert rig.device.config.inline.mode == "block"
    assert config_mod.load_running(rig.config_path).inline.mode == "block"


def test_block_unblock(rig: Rig) -> None:
    answer = rig.one(rig.env("block", {"address": "203.0.113.66", "ttl": 600}))
    assert answer["result"] == {"address": "203.0.113.66", "ttl": 600}
    assert rig.device.blocked == {"203.0.113.66": 600}
    rig.one(rig.env("block", {"address": "2001:db8::1"}))
    assert rig.device.blocked["2001:db8::1"] == 3600  # inline.block_ttl
    assert rig.one(rig.env("unblock", {"address": "203.0.113.66"}))["result"]["was_blocked"]
    assert not rig.one(rig.env("unblock", {"address": "203.0.113.66"}))["result"]["was_blocked"]


def test_ack_alerts(rig: Rig) -> None:
    assert rig.one(rig.env("ack-alerts", {"ids": ["a", "b"]}))["result"] == {"acknowledged": 2}
    assert rig.one(rig.env("ack-alerts"))["result"] == {"acknowledged": 7}
    assert rig.device.acked == [["a", "b"], None]


def test_identify(rig: Rig) -> None:
    assert rig.one(rig.env("identify", {"seconds": 5}))["result"] == {"seconds": 5}
    rig.one(rig.env("identify"))
    assert rig.device.identified == [5, 30]


def test_logs_tail_is_bounded(rig: Rig, tmp_path: Path) -> None:
    log = tmp_path / "watchpost.log"
    log.write_text("".join(f"line {i}\n" for i in range(5000)))
    result = rig.one(rig.env("logs", {"lines": 3}))["result"]
    assert result["lines"] == ["line 4997", "line 4998", "line 4999"]
    assert result["truncated"] is True
    big = rig.one(rig.env("logs", {"lines": 1000}))["result"]
    assert len("\n".join(big["lines"])) <= 32 * 1024
    assert big["lines"][-1] == "line 4999"
    log.unlink()
    answer = rig.one(rig.env("logs"))
    assert answer["ok"] is False and "No such file" in answer["error"]


def test_tail_lines_small_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_text("a\nb\n")
    assert tail_lines(p, 10, 1000) == (["a", "b"], False)
    assert tail_lines(p, 1, 1000) == (["b"], True)


def test_restart_and_reboot_answer_first(rig: Rig) -> None:
    order: list[str] = []
    rig.device.restart = lambda: order.append("restart")  # type: ignore[method-assign]
    answers: list[dict[str, Any]] = []

    def reply(a: dict[str, Any]) -> None:
        order.append("answer")
        answers.append(a)

    env = rig.env("restart")
    rig.handler.handle_command(E.encode(env), reply)
    assert order == ["answer", "restart"]
    # The seq is on disk before the restart, so a redelivered restart is a replay.
    assert json.loads(rig.state_path.read_bytes())["last_seq"][DEVICE] == env["seq"]
    rig.one(rig.env("reboot"))
    assert rig.device.reboots == 1


def test_worker_thread_answers_from_queue(rig: Rig) -> None:
    rig.handler.start()
    done = threading.Event()
    answers: list[dict[str, Any]] = []

    def reply(a: dict[str, Any]) -> None:
        answers.append(a)
        done.set()

    rig.handler.on_command(E.encode(rig.env("ping")), reply)
    assert done.wait(5)
    assert answers[0]["ok"] is True
    assert rig.handler._worker is not None and rig.handler._worker.name == "hub-commands"
    rig.handler.stop()
    assert rig.handler._worker is None


def test_busy_when_queue_full(rig: Rig) -> None:
    handler = CommandHandler(
        rig.device, [rig.key.public_key()], rig.state_path, rig.intel_dir, queue_max=1
    )
    gate = threading.Event()
    handler._commands["ping"] = lambda env, reply: gate.wait(5) and {}  # type: ignore[assignment]
    handler.start()
    answers: list[dict[str, Any]] = []
    try:
        for _ in range(4):  # one running, one queued, the rest refused
            handler.on_command(E.encode(rig.env("ping")), answers.append)
        busy = [a for a in answers if a.get("code") == "busy"]
        assert busy and busy[0]["id"].startswith("id-")
    finally:
        gate.set()
        handler.stop()


def test_system_clock_synced_returns_bool() -> None:
    assert isinstance(system_clock_synced(), bool)


def test_redacted_leaves_empty_secrets() -> None:
    data = redacted(config_mod.Config())
    assert data["privacy"]["key"] == "" and data["status"]["password_hash"] == ""


# --- intel-update ---------------------------------------------------------------------------------

LIST = "".join(f"203.0.113.{i}\n" for i in range(1, 200)).encode() + b"evil.example.com\n"


def chunks(rig: Rig, data: bytes = LIST, job: str = "job1", size: int = 700, **man: Any):
    manifest = bundle.make_manifest(data, man.get("name", "hub.list"), "v2", rig.key)
    manifest.update({k: v for k, v in man.items() if k != "name"})
    return [rig.env("intel-update", a) for a in bundle.chunk_args(job, manifest, data, size)]


def states(answers: list[dict[str, Any]]) -> list[str]:
    return [a["job"]["state"] for a in answers]


def test_intel_update_in_order(rig: Rig) -> None:
    envs = chunks(rig)
    assert len(envs) == 4
    answers = [a for e in envs for a in rig.send(e)]
    assert states(answers) == [
        "queued",
        "in-progress",
        "in-progress",
        "in-progress",
        "in-progress",
        "succeeded",
    ]
    final = answers[-1]
    assert final["ok"] is True and final["id"] == envs[-1]["id"]
    assert final["result"]["version"] == "v2"
    assert (rig.intel_dir / "hub.list").read_bytes() == LIST
    assert rig.device.store.match_domain("x.evil.example.com") is not None
    assert final["result"]["store_version"] == rig.device.store.version
    assert bundle.installed(rig.intel_dir)["hub.list"]["version"] == "v2"
    assert sorted(p.name for p in rig.intel_dir.iterdir()) == [
        ".bundles.json",
        "hub.list",
        "old.list",
    ]


def test_intel_update_out_of_order_and_duplicates(rig: Rig) -> None:
    manifest = bundle.make_manifest(LIST, "hub.list", "v2", rig.key)
    args = bundle.chunk_args("job1", manifest, LIST, 700)
    # Signed in delivery order: seq only grows, whatever the chunk index.
    envs = [rig.env("intel-update", args[i]) for i in (2, 0, 1, 1, 3)]
    answers = [a for e in envs for a in rig.send(e)]
    assert all(a["ok"] for a in answers), answers
    assert answers[3]["result"]["duplicate"] is True
    assert answers[-1]["job"]["state"] == "succeeded"
    assert (rig.intel_dir / "hub.list").read_bytes() == LIST


def test_intel_update_single_chunk(rig: Rig) -> None:
    (env,) = chunks(rig, size=bundle.MAX_CHUNK_BYTES)
    assert states(rig.send(env)) == ["in-progress", "in-progress", "succeeded"]
    assert (rig.intel_dir / "hub.list").read_bytes() == LIST


def _intel_unchanged(rig: Rig, before: dict[str, Any]) -> None:
    after = rig.snapshot()
    assert after["intel"] == before["intel"]
    assert after["store"] == before["store"]
    assert not [p for p in rig.intel_dir.iterdir() if p.name.endswith(".part")]


def test_intel_update_missing_chunk_times_out(rig: Rig) -> None:
    before = rig.snapshot()
    envs = chunks(rig)
    for e in envs[:2] + envs[3:]:
        rig.send(e)
    rig.handler.tick(rig.clock[0] + 10)  # not yet
    assert rig.handler.intel.transfer is not None
    answers: list[dict[str, Any]] = []
    rig.handler.intel.reply = answers.append
    rig.handler.tick(rig.clock[0] + 301)
    assert answers[0]["job"]["state"] == "failed"
    assert answers[0]["id"] == envs[-1]["id"]  # answers the latest chunk's envelope
    assert "missing 2" in answers[0]["error"]
    _intel_unchanged(rig, before)


def test_intel_update_conflicting_duplicate_fails_job(rig: Rig) -> None:
    before = rig.snapshot()
    envs = chunks(rig)
    rig.send(envs[0])
    args = dict(envs[0]["args"], data=base64.b64encode(b"X" * 700).decode())
    answer = rig.one(rig.env("intel-update", args))
    assert answer["job"]["state"] == "failed" and "different content" in answer["error"]
    _intel_unchanged(rig, before)
    assert rig.handler.intel.transfer is None


def test_intel_update_corrupt_content_fails_hash(rig: Rig) -> None:
    before = rig.snapshot()
    manifest = bundle.make_manifest(LIST, "hub.list", "v2", rig.key)
    corrupt = bytearray(LIST)
    corrupt[700] ^= 0x20
    envs = [
        rig.env("intel-update", a) for a in bundle.chunk_args("job1", manifest, bytes(corrupt), 700)
    ]
    answers = [a for e in envs for a in rig.send(e)]
    assert answers[-1]["job"]["state"] == "failed"
    assert "sha256" in answers[-1]["error"]
    _intel_unchanged(rig, before)


def test_intel_update_wrong_chunk_length(rig: Rig) -> None:
    envs = chunks(rig)
    args = dict(envs[1]["args"], data=base64.b64encode(b"short").decode())
    answer = rig.one(rig.env("intel-update", args))
    assert answer["job"]["state"] == "failed" and "expected 700" in answer["error"]


def test_intel_update_bad_manifest_signature_rejected(rig: Rig) -> None:
    before = rig.snapshot()
    manifest = bundle.make_manifest(LIST, "hub.list", "v2", Ed25519PrivateKey.generate())
    env = rig.env("intel-update", bundle.chunk_args("job1", manifest, LIST, 512)[0])
    answer = rig.one(env)
    assert answer["ok"] is False and answer["job"]["state"] == "rejected"
    assert "bundle manifest signature does not verify" in answer["error"]
    assert rig.snapshot() == before


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "../etc/passwd"}, "not a safe file name"),
        ({"name": ".bundles.json"}, "not a safe file name"),
        ({"kind": "firmware"}, "kind must be"),
        ({"size": -1}, "manifest size"),
        ({"sha256": "XYZ"}, "sha256 must be"),
    ],
)
def test_intel_update_bad_manifest_rejected(rig: Rig, change: dict[str, Any], words: str) -> None:
    before = rig.snapshot()
    manifest = bundle.make_manifest(LIST, "hub.list", "v2", rig.key)
    manifest.update(change)
    manifest = E.sign_document(manifest, rig.key)
    args = bundle.chunk_args("job1", {"x": 1}, LIST, 512)[0]
    args["manifest"] = manifest
    answer = rig.one(rig.env("intel-update", args))
    assert answer["job"]["state"] == "rejected" and words in answer["error"]
    assert rig.snapshot() == before


def test_intel_update_chunk_count_must_match_size(rig: Rig) -> None:
    envs = chunks(rig)
    args = dict(envs[0]["args"], count=9)
    answer = rig.one(rig.env("intel-update", args))
    assert answer["job"]["state"] == "rejected" and "cannot carry" in answer["error"]


def test_intel_update_forged_chunk_mid_transfer_then_resent(rig: Rig) -> None:
    envs = chunks(rig)
    for e in envs[:2]:
        rig.send(e)
    forged = dict(envs[2], args=dict(envs[2]["args"], data=base64.b64encode(b"Y" * 512).decode()))
    assert rig.one(forged)["code"] == E.FORGED
    answers = [a for e in envs[2:] for a in rig.send(e)]
    assert answers[-1]["job"]["state"] == "succeeded"
    assert (rig.intel_dir / "hub.list").read_bytes() == LIST


def test_intel_update_reload_failure_keeps_old(rig: Rig) -> None:
    first = [a for e in chunks(rig) for a in rig.send(e)]
    assert first[-1]["job"]["state"] == "succeeded"
    before = rig.snapshot()
    rig.device.reload_error = "store would not build"
    data = b"198.51.100.0/24\n"
    answers = [a for e in chunks(rig, data=data, job="job2") for a in rig.send(e)]
    assert answers[-1]["job"]["state"] == "failed"
    assert "previous intel kept: store would not build" in answers[-1]["error"]
    _intel_unchanged(rig, before)
    assert (rig.intel_dir / "hub.list").read_bytes() == LIST
    assert bundle.installed(rig.intel_dir)["hub.list"]["version"] == "v2"


def test_intel_update_superseded_job(rig: Rig) -> None:
    old = chunks(rig, job="old")
    answers: list[dict[str, Any]] = []
    rig.handler.handle_command(E.encode(old[0]), answers.append)
    data = b"192.0.2.99\n"
    new = chunks(rig, data=data, job="new")
    answers.clear()
    rig.handler.handle_command(E.encode(new[0]), answers.append)
    assert answers[0]["job"] == {
        "id": "old",
        "state": "failed",
        "received": 1,
        "count": 4,
        "version": "v2",
    }
    assert "superseded by job new" in answers[0]["error"]
    assert answers[-1]["job"]["state"] == "succeeded"
    assert (rig.intel_dir / "hub.list").read_bytes() == data


# --- desired / reported ---------------------------------------------------------------------


def desired(rig: Rig, args: dict[str, Any], seq: int, **over: Any) -> bytes:
    return rig.desired(args, seq, **over)


def test_desired_applied_when_newer_and_reported(rig: Rig) -> None:
    rig.handler.handle_desired(desired(rig, {"inline": {"mode": "block"}}, 50))
    assert rig.device.config.inline.mode == "block"
    assert config_mod.load_running(rig.config_path).inline.mode == "block"
    topic, rep, retain = rig.published[-1]
    assert topic == "config/reported" and retain
    assert rep["version"] == 50 and rep["config"]["inline"]["mode"] == "block"
    assert rep["config"]["privacy"]["key"] == REDACTED and "error" not in rep
    # Same or older versions are not applied again (a reconnect re-delivers the retained one).
    rig.one(rig.env("set-mode", {"mode": "monitor"}))
    rig.handler.handle_desired(desired(rig, {"inline": {"mode": "block"}}, 50))
    rig.handler.handle_desired(desired(rig, {"inline": {"mode": "block"}}, 49))
    assert rig.device.config.inline.mode == "monitor"
    assert rig.published[-1][1]["version"] == 50


def test_desired_version_survives_restart(rig: Rig) -> None:
    rig.handler.handle_desired(desired(rig, {"alerts": {"burst": 5}}, 70))
    rig.one(rig.env("set-config", {"alerts": {"burst": 9}}))
    rig.restart_handler()
    rig.handler.handle_desired(desired(rig, {"alerts": {"burst": 5}}, 70))
    assert rig.device.config.alerts.burst == 9
    rig.handler.handle_desired(desired(rig, {"alerts": {"burst": 6}}, 71))
    assert rig.device.config.alerts.burst == 6


def test_desired_ignores_command_seq_but_has_its_own_long_expiry(rig: Rig) -> None:
    for _ in range(3):
        rig.one(rig.env("ping"))
    now = int(rig.clock[0])
    # Issued long ago with a low version (below every command seq): its own expiry counts.
    old = desired(rig, {"alerts": {"burst": 4}}, 10, issued_at=now - 20 * 86400)
    rig.handler.handle_desired(old)
    assert rig.device.config.alerts.burst == 4
    gone = desired(rig, {"alerts": {"burst": 3}}, 11, issued_at=now - 900, expires_at=now - 600)
    rig.handler.handle_desired(gone)
    assert rig.device.config.alerts.burst == 4
    rep = rig.published[-1][1]
    assert "expired" in rep["error"] and rep["rejected_version"] == 11 and rep["version"] == 10
    made = E.make_desired(DEVICE, {}, rig.key, version=12, issued_at=now)
    assert made["for"] == "desired" and made["expires_at"] - made["issued_at"] == 30 * 86400


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda r: E.encode(
                dict(
                    r.env("set-config", {"alerts": {"burst": 4}}, seq=99, **{"for": "desired"}),
                    sig=base64.b64encode(b"x" * 64).decode(),
                )
            ),
            "forged",
        ),
        (
            lambda r: E.encode(
                r.env(
                    "set-config",
                    {"alerts": {"burst": 4}},
                    seq=99,
                    device="dev2",
                    **{"for": "desired"},
                )
            ),
            "wrong device",
        ),
        (
            lambda r: E.encode(r.env("set-mode", {"mode": "block"}, seq=99, **{"for": "desired"})),
            "must carry set-config",
        ),
        (lambda r: r.desired({"alerts": {"burst": "x"}}, 99), "alerts.burst"),
        (
            lambda r: E.encode(r.env("set-config", {"alerts": {"burst": 4}}, seq=99)),
            "wrong purpose",
        ),
        (lambda r: r.desired({"alerts": {"burst": 4}}, 99)[:-1] + b"\xff", "not UTF-8"),
        (lambda r: b"{", "malformed"),
    ],
)
def test_desired_rejections_change_nothing_but_are_reported(rig: Rig, make, words: str) -> None:
    before = rig.snapshot()
    rig.handler.handle_desired(make(rig))
    assert rig.snapshot() == before
    rep = rig.published[-1][1]
    assert words in rep["error"] and rep["version"] == 0


def test_empty_desired_is_ignored_and_on_connect_reports(rig: Rig) -> None:
    rig.handler.handle_desired(b"")
    assert rig.published == []
    rig.handler.on_connect()
    assert rig.published[-1][0] == "config/reported"
    assert rig.published[-1][1]["device"] == DEVICE


def test_stats(rig: Rig) -> None:
    rig.one(rig.env("ping"))
    rig.one(b"junk")
    assert rig.handler.stats() == {
        "commands_accepted": 1,
        "commands_rejected": 1,
        "desired_version": 0,
    }


def test_device_errors_are_answered_and_change_nothing(rig: Rig) -> None:
    def no_leds(seconds: int) -> None:
        raise NotImplementedError("this unit has no LEDs to blink")

    def buggy(ids: Any) -> int:
        raise KeyError("oops")

    rig.device.identify = no_leds  # type: ignore[method-assign]
    rig.device.ack_alerts = buggy  # type: ignore[method-assign]
    assert_rejected(rig, rig.env("identify"), "failed", "identify: this unit has no LEDs")
    assert_rejected(rig, rig.env("ack-alerts"), "failed", "internal error")
