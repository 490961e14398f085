"""Envelopes bound to their purpose, hostile payloads, the seq saved before a command acts, the
logs command (issue 8, item 2), against the real handler, replay state and config file."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path
from typing import Any

import pytest

from appliance import config as config_mod
from appliance.hublink import replay_state
from protocol import envelope as E
from tests.unit.hublink.rig import DEVICE, Rig

# --- purpose ------------------------------------------------------------------------------------


def test_a_desired_envelope_is_refused_on_cmd_and_changes_nothing(rig: Rig) -> None:
    before = rig.snapshot()
    desired = json.loads(rig.desired({"inline": {"mode": "block"}}, rig.seq + 1))
    answer = rig.one(desired)
    assert answer["ok"] is False and answer["code"] == E.WRONG_PURPOSE
    assert "signed for 'desired', not for cmd" in answer["error"]
    assert rig.snapshot() == before


def test_a_command_envelope_is_refused_on_desired_and_changes_nothing(rig: Rig) -> None:
    before = rig.snapshot()
    cmd = rig.env("set-config", {"inline": {"mode": "block"}})
    rig.handler.handle_desired(E.encode(cmd))
    assert rig.snapshot() == before
    rep = rig.published[-1][1]
    assert "signed for 'cmd', not for config/desired" in rep["error"] and rep["version"] == 0


def test_the_purpose_is_signed(rig: Rig) -> None:
    env = rig.env("set-mode", {"mode": "block"})
    moved = dict(env, **{"for": "desired"})  # re-labelled without the key
    rig.handler.handle_desired(E.encode(moved))
    assert "does not verify" in rig.published[-1][1]["error"]
    assert rig.device.config.inline.mode == "monitor"


def test_make_and_parse_know_the_purposes() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    cmd = E.make(DEVICE, "ping", {}, key, seq=1, issued_at=100)
    assert cmd["for"] == "cmd" and cmd["expires_at"] == 100 + E.COMMAND_TTL
    desired = E.make_desired(DEVICE, {"alerts": {"burst": 3}}, key, version=7, issued_at=100)
    assert desired["for"] == "desired" and desired["cmd"] == "set-config"
    assert desired["seq"] == 7 and desired["expires_at"] == 100 + 30 * 86400
    for bad in ({k: v for k, v in cmd.items() if k != "for"}, dict(cmd, **{"for": "other"})):
        with pytest.raises(E.EnvelopeError) as e:
            E.parse(json.dumps(bad).encode())
        assert e.value.code == E.MALFORMED
    with pytest.raises(ValueError, match="purpose"):
        E.make(DEVICE, "ping", {}, key, seq=1, purpose="both")


def test_desired_versions_only_grow(rig: Rig) -> None:
    rig.handler.handle_desired(rig.desired({"alerts": {"burst": 5}}, 50))
    rig.handler.handle_desired(rig.desired({"alerts": {"burst": 5}}, 50))  # re-delivered
    assert "error" not in rig.published[-1][1]
    before = rig.snapshot()
    rig.handler.handle_desired(rig.desired({"alerts": {"burst": 9}}, 49))
    assert rig.snapshot() == before
    rep = rig.published[-1][1]
    assert "stale: version 49 is below the applied version 50" in rep["error"]
    assert rep["version"] == 50 and rep["rejected_version"] == 49


# --- every malformed input gets an answer ---------------------------------------------------------


def _raw(rig: Rig, **over: Any) -> str:
    """A signed command as JSON text with fields replaced by raw JSON snippets."""
    env = rig.env("ping")
    text = {k: json.dumps(v) for k, v in env.items()}
    text.update(over)
    return "{" + ",".join(f'"{k}":{v}' for k, v in text.items()) + "}"


HOSTILE = [
    (lambda r: b"\xff\xfe\xfd", "not UTF-8"),
    (lambda r: _raw(r).encode()[:-1] + b"\xc3", "not UTF-8"),
    (lambda r: _raw(r, id='"\\ud800"').encode(), "lone surrogate"),
    (lambda r: _raw(r, cmd='"ping\\udfff"').encode(), "lone surrogate"),
    (lambda r: _raw(r, args='{"\\ud83d": 1}').encode(), "lone surrogate"),
    (lambda r: _raw(r, args='{"a": ["x\\udc00"]}').encode(), "lone surrogate"),
    (lambda r: _raw(r, args="[" * 20 + "]" * 20).encode(), "args must be an object"),
    (lambda r: _raw(r, args="[" * 40 + "]" * 40).encode(), "nested deeper"),
    (lambda r: _raw(r, args='{"a":' * 40 + "1" + "}" * 40).encode(), "nested deeper"),
    (lambda r: _raw(r, seq="1e400").encode(), "seq must be"),
    (lambda r: _raw(r, seq="9" * 5000).encode(), "not JSON"),
    (lambda r: _raw(r, seq="NaN").encode(), "not JSON"),
    EMPTY := (lambda r: b"", "not JSON"),
    (lambda r: b"null", "must be a JSON object"),
    (lambda r: b'"ping"', "must be a JSON object"),
    (lambda r: b"{" * 100_000, "too large"),
    (lambda r: b"\x00" * 10, "not JSON"),
]


@pytest.mark.parametrize(("make", "words"), HOSTILE)
def test_hostile_commands_get_an_answer_and_change_nothing(rig: Rig, make, words: str) -> None:
    rig.one(rig.env("ping"))
    before = rig.snapshot()
    answer = rig.one(make(rig))
    assert answer["ok"] is False and answer["code"] in (E.MALFORMED, E.TOO_LARGE), answer
    assert words in answer["error"], answer
    assert rig.snapshot() == before
    json.dumps(answer).encode()  # the answer itself can be published


# An empty retained message clears the desired config: not a rejection (tested in test_commands).
NON_EMPTY = [h for h in HOSTILE if h is not EMPTY]


@pytest.mark.parametrize(("make", "words"), NON_EMPTY)
def test_hostile_desired_configs_are_reported(rig: Rig, make, words: str) -> None:
    payload = make(rig)
    before = rig.snapshot()
    rig.handler.handle_desired(payload)
    assert rig.snapshot() == before
    assert words in rig.published[-1][1]["error"]


def test_mutated_envelopes_always_get_one_answer(rig: Rig) -> None:
    """A bounded, seeded fuzz: every byte-level mutation of a signed command is answered once,
    and none that changes the signed content is accepted."""
    rng = random.Random(8)
    signed = rig.env("set-mode", {"mode": "block"})
    good = E.encode(signed)
    accepted = []
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        answers = rig.send(bytes(data))
        assert len(answers) == 1, bytes(data)
        a = answers[0]
        if a["ok"] is False:
            assert a["error"] and a["code"], a
        else:
            accepted.append(bytes(data))
    # Only a mutation that left the signed content as it was can verify, and only once.
    assert len(accepted) <= 1
    for data in accepted:
        assert E.signing_bytes(E.parse(data)) == E.signing_bytes(signed)


# --- the seq is saved before the command acts -----------------------------------------------


def test_the_seq_is_on_disk_before_the_command_acts(rig: Rig) -> None:
    seen: list[int] = []
    real = rig.device.block

    def block(address: str, ttl: int) -> None:
        seen.append(json.loads(rig.state_path.read_bytes())["last_seq"][DEVICE])
        real(address, ttl)

    rig.device.block = block  # type: ignore[method-assign]
    env = rig.env("block", {"address": "203.0.113.9"})
    assert rig.one(env)["ok"] is True
    assert seen == [env["seq"]]


def test_a_refused_command_gives_its_seq_back(rig: Rig) -> None:
    rig.one(rig.env("ping"))
    before = rig.snapshot()
    env = rig.env("block", {"address": "198.18.0.1"})  # never_block
    answer = rig.one(env)
    assert answer["ok"] is False and answer["code"] == "refused"
    assert rig.snapshot() == before
    assert rig.one(rig.env("ping", seq=env["seq"], id="other"))["ok"] is True


def test_disk_full_refuses_the_command(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.one(rig.env("ping"))
    before = rig.snapshot()

    def full(path: Any, data: bytes, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(replay_state.files, "atomic_write", full)
    for env in (
        rig.env("block", {"address": "203.0.113.9"}),
        rig.env("set-mode", {"mode": "block"}),
        rig.env("restart"),
    ):
        answer = rig.one(env)
        assert answer["ok"] is False and answer["code"] == "failed", answer
        assert "cannot save the replay state (No space left on device)" in answer["error"]
        assert "nothing done" in answer["error"]
    assert rig.snapshot() == before
    assert rig.handler.state.last_seq[DEVICE] == rig.seq - 3  # not in memory either
    monkeypatch.undo()
    env = rig.env("block", {"address": "203.0.113.9"})
    assert rig.one(env)["ok"] is True and rig.device.blocked == {"203.0.113.9": 3600}


def test_disk_full_refuses_a_desired_config(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Any, data: bytes, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(replay_state.files, "atomic_write", full)
    rig.handler.handle_desired(rig.desired({"inline": {"mode": "block"}}, 60))
    assert "No space left on device" in rig.published[-1][1]["error"]
    assert rig.device.config.inline.mode == "monitor"
    assert config_mod.load(rig.config_path).inline.mode == "monitor"
    assert rig.handler.state.desired_version == 0


# --- logs ---------------------------------------------------------------------------------------


def test_logs_reads_only_the_daemons_own_log(rig: Rig, tmp_path: Path) -> None:
    own = Path(rig.device.log_file)
    own.write_text("ours\n")
    secret = tmp_path / "secret"
    secret.write_text("not for the hub\n")
    answer = rig.one(rig.env("logs", {"path": str(secret)}))
    assert answer["ok"] is False and "unknown argument(s) path" in answer["error"]
    # The config says another file: the daemon's own log is still the one read.
    rig.device._config = config_mod.merged(rig.device.config, {"log": {"file": str(secret)}})
    result = rig.one(rig.env("logs"))["result"]
    assert result == {"file": str(own), "lines": ["ours"], "truncated": False}
    own.unlink()
    own.symlink_to(secret)  # a link planted where the log was is not followed
    answer = rig.one(rig.env("logs"))
    assert answer["ok"] is False and "logs:" in answer["error"]
    assert "not for the hub" not in json.dumps(answer)
    rig.device.log_file = ""
    answer = rig.one(rig.env("logs"))
    assert answer["ok"] is False and "logs to no file" in answer["error"]


# --- a future issued_at cannot lock later commands out ---------------------------------------

Y2099 = 4_070_908_800


def test_a_future_issued_at_cannot_lock_out_later_commands(rig: Rig) -> None:
    now = int(rig.clock[0])
    # Synchronised clock: issued beyond the clock + MAX_SKEW is refused, nothing changed ...
    future = rig.env("set-mode", {"mode": "block"}, issued_at=Y2099, expires_at=Y2099 + 300)
    before = rig.snapshot()
    answer = rig.one(future)
    assert answer["ok"] is False and answer["code"] == E.FUTURE, answer
    assert f"issued at {Y2099}" in answer["error"] and "synchronised" in answer["error"]
    assert rig.snapshot() == before and rig.device.config.inline.mode == "monitor"
    # ... within the skew it is an ordinary command.
    near = rig.env("ping", issued_at=now + E.MAX_SKEW - 200, expires_at=now + 600)
    assert rig.one(near)["ok"] is True
    # Unsynchronised: accepted (the device cannot tell), but the floor moves at most FLOOR_STEP
    # past where this start began, by the command and by the desired-config route alike.
    rig.synced[0] = False
    rig.restart_handler()
    assert rig.one(rig.env("ping", issued_at=Y2099, expires_at=Y2099 + 300))["ok"] is True
    desired = rig.desired({"alerts": {"burst": 3}}, 5, issued_at=Y2099, expires_at=Y2099 + 60)
    rig.handler.handle_desired(desired)
    assert "error" not in rig.published[-1][1]
    floor = json.loads(rig.state_path.read_text())["time_floor"]
    assert now < floor <= now + E.MAX_SKEW - 200 + replay_state.FLOOR_STEP + 5
    # A command the hub signs now still gets in, also after a restart.
    assert rig.one(rig.env("set-mode", {"mode": "block"}))["ok"] is True
    rig.restart_handler()
    assert rig.one(rig.env("ping"))["ok"] is True
    assert rig.device.config.inline.mode == "block"


def test_a_floor_beyond_the_synchronised_clock_is_brought_back(rig: Rig) -> None:
    now = int(rig.clock[0])
    # A floor raised to 2099 before the cap existed (or by hand): a locked-out device.
    data = {"format": 1, "last_seq": {}, "recent_ids": [], "time_floor": Y2099}
    rig.state_path.write_text(json.dumps(data))
    rig.synced[0] = False
    rig.restart_handler()
    assert rig.one(rig.env("ping"))["code"] == E.EXPIRED  # what the cap prevents
    rig.synced[0] = True  # once the clock is synchronised it heals
    assert rig.one(rig.env("ping"))["ok"] is True
    assert json.loads(rig.state_path.read_text())["time_floor"] == now
    rig.synced[0] = False
    rig.restart_handler()
    assert rig.one(rig.env("ping"))["ok"] is True
