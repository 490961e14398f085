"""The rollout state machine against the hub store (SQLite and a real PostgreSQL cluster): the
plan (canaries, waves, threshold), wave results pausing the rollout, the operator's
transitions, and a driver's lease."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.rollout import plan
from hub.rollout.plan import PlanError, Threshold
from hub.rollout.state import DRIVER_STALE_S, RolloutError, Rollouts, Target
from hub.store import Store, open_store
from hub.store.schema import LATEST


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite://{tmp_path / 'hub.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = open_store(url)
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


TARGETS = [Target(f"d{i}", "leeds" if i < 5 else "york", "0.1.0") for i in range(1, 8)]


def make(rollouts: Rollouts, canaries: list[str], wave_size: int, threshold: str) -> str:
    return rollouts.create(
        version="0.2.0", artifact="/srv/watchpost-0.2.0.tar", sha256="ab" * 32, scope="fleet",
        targets=TARGETS, canaries=canaries, wave_size=wave_size,
        threshold=plan.parse_threshold(threshold), job_timeout=600,
    )  # fmt: skip


def run_wave(rollouts: Rollouts, rid: str, wave: int, results: dict[str, str]) -> tuple[bool, str]:
    """Every device of `wave` ends as `results` says (default succeeded); then the wave ends."""
    rollouts.start_wave(rid, wave)
    for d in rollouts.devices(rid, wave):
        state = results.get(d["device"], plan.SUCCEEDED)
        rollouts.set_device(rid, d["device"], plan.PENDING, job=f"j-{d['device']}")
        rollouts.set_device(rid, d["device"], "installing")
        reason = "" if state == plan.SUCCEEDED else f"{state} on purpose"
        version = "0.2.0" if state == plan.SUCCEEDED else None
        rollouts.set_device(rid, d["device"], state, reason=reason, version=version)
    return rollouts.finish_wave(rid, wave)


def test_plan_canaries_then_waves_in_the_targets_order() -> None:
    names = [t.device for t in TARGETS]
    assert plan.waves(names, ["d3"], 2) == [["d3"], ["d1", "d2"], ["d4", "d5"], ["d6", "d7"]]
    assert plan.waves(names, [], 5) == [["d1", "d2", "d3", "d4", "d5"], ["d6", "d7"]]
    assert plan.parse_canary("2", names) == ["d1", "d2"]
    assert plan.parse_canary("d7,d2", names) == ["d7", "d2"]
    assert plan.parse_canary("0", names) == []


@pytest.mark.parametrize(
    ("text", "failures", "size", "exceeded"),
    [("0", 1, 10, True), ("0", 0, 10, False), ("2", 2, 3, False), ("2", 3, 3, True),
     ("25%", 1, 4, False), ("25%", 2, 4, True), ("0%", 1, 100, True)],
)  # fmt: skip
def test_threshold_counts_or_percent(text: str, failures: int, size: int, exceeded: bool) -> None:
    assert plan.parse_threshold(text).exceeded(failures, size) is exceeded


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan.parse_threshold("-1"), "--fail-threshold '-1': expected K"),
        (lambda: plan.parse_threshold("100%"), "a percentage must be from 0"),
        (lambda: plan.parse_threshold("ten"), "--fail-threshold 'ten'"),
        (lambda: plan.parse_threshold("x%"), "expected K (devices) or P%"),
        (lambda: plan.parse_canary("9", ["a", "b"]), "--canary 9: only 2 target devices"),
        (lambda: plan.parse_canary("a,zz", ["a", "b"]), "not among the target devices: zz"),
        (lambda: plan.parse_canary("a,a", ["a", "b"]), "named twice"),
        (lambda: plan.check_wave_size(0), "--wave-size 0: must be from 1"),
    ],
)
def test_bad_plan_input_names_the_option(call: object, message: str) -> None:
    with pytest.raises(PlanError, match=None) as e:
        call()  # type: ignore[operator]
    assert message in str(e.value)


def test_migration_makes_the_rollout_tables(store: Store) -> None:
    assert store.schema_version() == LATEST >= 2
    rollouts = Rollouts(store)
    assert rollouts.rollouts() == []
    with pytest.raises(RolloutError, match="rollout nope: no such rollout"):
        rollouts.get("nope")


def test_waves_pass_then_one_over_the_threshold_pauses_and_resume_continues(store: Store) -> None:
    clock = Clock()
    rollouts = Rollouts(store, clock)
    rid = make(rollouts, ["d1"], 3, "1")
    waves = rollouts.waves(rid)
    assert [(w["wave"], w["canary"], w["size"], w["state"]) for w in waves] == [
        (0, 1, 1, "pending"), (1, 0, 3, "pending"), (2, 0, 3, "pending")
    ]  # fmt: skip
    assert {d["device"]: d["wave"] for d in rollouts.devices(rid)} == {
        "d1": 0, "d2": 1, "d3": 1, "d4": 1, "d5": 2, "d6": 2, "d7": 2
    }  # fmt: skip
    assert run_wave(rollouts, rid, 0, {}) == (True, "")
    # One failure in a wave of 3 with threshold 1: passes.
    assert run_wave(rollouts, rid, 1, {"d3": plan.ROLLED_BACK}) == (True, "")
    clock.t += 60
    # Two: the rollout pauses itself, with the reason naming the devices.
    passed, reason = run_wave(rollouts, rid, 2, {"d5": plan.TIMEOUT, "d7": plan.FAILED})
    assert not passed
    assert reason == (
        "wave 2: 2 of 3 devices failed (threshold 1): d5 timeout (timeout on purpose); "
        "d7 failed (failed on purpose)"
    )
    r = rollouts.get(rid)
    assert (r.state, r.reason) == (plan.PAUSED, reason)
    assert r.updated_at == clock.t
    w2 = rollouts.waves(rid)[2]
    assert (w2["state"], w2["failures"], w2["ended_at"]) == ("failed", 2, clock.t)
    devices = {d["device"]: d for d in rollouts.devices(rid)}
    assert devices["d5"]["state"] == "timeout" and devices["d6"]["version"] == "0.2.0"
    assert devices["d2"]["version_before"] == "0.1.0" and devices["d2"]["job"] == "j-d2"
    # Resume with the failed devices sent again: the wave runs once more, now without failures.
    r = rollouts.resume(rid, retry_failed=True)
    assert r.state == plan.RUNNING and r.reason == ""
    assert [d["state"] for d in rollouts.devices(rid, 2)] == ["pending", "succeeded", "pending"]
    assert rollouts.waves(rid)[2]["state"] == "running"
    assert run_wave(rollouts, rid, 2, {}) == (True, "")
    rollouts.complete(rid)
    assert rollouts.get(rid).state == plan.COMPLETE
    events = [e["event"] for e in rollouts.events(rid) if e["device"] is None]
    assert events[0].startswith("started: release 0.2.0 to fleet, 7 devices in 3 waves")
    assert events[-5:] == [
        "wave 1 passed (1 of 3 failed)",
        f"paused: {reason}",
        "resumed (failed devices sent again)",
        "wave 2 passed (0 of 3 failed)",
        "done: every wave ran",
    ]


def test_a_failed_canary_pauses_whatever_the_threshold_and_resume_accepts(store: Store) -> None:
    rollouts = Rollouts(store)
    rid = make(rollouts, ["d2", "d6"], 10, "50%")
    passed, reason = run_wave(rollouts, rid, 0, {"d6": plan.ROLLED_BACK})
    assert not passed
    assert reason.startswith("canary wave: 1 of 2 devices failed (any failure pauses): d6")
    rollouts.resume(rid)  # accepted: the failed canary stays failed, the next wave follows
    assert rollouts.waves(rid)[0]["state"] == "accepted"
    assert rollouts.devices(rid, 0)[1]["state"] == "rolled-back"
    assert run_wave(rollouts, rid, 1, {"d1": plan.FAILED, "d3": plan.FAILED}) == (True, "")


def test_operator_transitions_are_checked(store: Store) -> None:
    rollouts = Rollouts(store)
    rid = make(rollouts, [], 4, "0")
    with pytest.raises(RolloutError, match=f"rollout {rid} is running; only a paused"):
        rollouts.resume(rid)
    assert rollouts.pause(rid).reason == "paused by operator"
    with pytest.raises(RolloutError, match="it can be paused only when running"):
        rollouts.pause(rid)
    assert rollouts.resume(rid).state == plan.RUNNING
    assert rollouts.stop(rid).state == plan.STOPPED
    for op in (rollouts.resume, rollouts.pause, rollouts.stop):
        with pytest.raises(RolloutError, match="is stopped"):
            op(rid)
    with pytest.raises(RolloutError, match="is stopped: stopped by operator"):
        rollouts.claim(rid, "h:1")
    # A stopped rollout never completes (the remaining devices were never sent the release).
    rollouts.complete(rid)
    assert rollouts.get(rid).state == plan.STOPPED


def test_unfinished_wave_and_unknown_device_are_refused(store: Store) -> None:
    rollouts = Rollouts(store)
    rid = make(rollouts, [], 7, "0")
    rollouts.set_device(rid, "d1", "downloading", job="j1")
    with pytest.raises(RolloutError, match="wave 0 has devices without a result: d1, d2"):
        rollouts.finish_wave(rid, 0)
    with pytest.raises(RolloutError, match="device d9 is not one of its targets"):
        rollouts.set_device(rid, "d9", plan.SUCCEEDED)
    with pytest.raises(PlanError, match="fleet: no target devices"):
        rollouts.create(version="0.2.0", artifact="a", sha256="0", scope="fleet", targets=[],
                        canaries=[], wave_size=1, threshold=Threshold("count", 0),
                        job_timeout=1)  # fmt: skip


def test_one_driver_at_a_time_until_its_heartbeat_goes_stale(store: Store) -> None:
    clock = Clock()
    rollouts = Rollouts(store, clock)
    rid = make(rollouts, [], 7, "0")
    assert rollouts.claim(rid, "hub1:10").driver == "hub1:10"
    clock.t += DRIVER_STALE_S - 1
    with pytest.raises(RolloutError, match=f"rollout {rid} is being driven by hub1:10"):
        rollouts.claim(rid, "hub1:11")
    rollouts.heartbeat(rid, "hub1:10")
    clock.t += DRIVER_STALE_S  # killed: no heartbeat for longer than the stale time
    assert rollouts.claim(rid, "hub1:11").driver == "hub1:11"
    rollouts.release_driver(rid, "hub1:11")
    assert rollouts.claim(rid, "hub2:1").driver == "hub2:1"
