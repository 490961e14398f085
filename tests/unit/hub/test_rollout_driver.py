"""The rollout driver against the hub store (SQLite and a real PostgreSQL cluster), with a
scripted pusher: a device whose job state is unknown (no final answer to the push, or left
mid-job by a driver that died) is asked again with back-off until it tells the job's end, and
after the deadline counts as a failure with the reason; never as a success, and the wave never
waits for ever."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hub.cli import main
from hub.rollout import command, plan
from hub.rollout.driver import Driver
from hub.rollout.plan import Outcome
from hub.rollout.state import DRIVER_STALE_S, Rollouts, Target
from hub.store import Store, open_store

Progress = Callable[[str, dict[str, Any]], None]
NEW = "0.2.0"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'hub.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


class Clock:
    """The driver's monotonic clock; `sleep` moves it (no real waiting)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class Pusher:
    """Each device's push outcome, and the answers (in order; the last repeats) to the driver's
    status requests about a job; None is a device that says nothing."""

    def __init__(
        self,
        clock: Clock,
        outcomes: dict[str, Outcome],
        answers: dict[str, list[dict[str, Any] | None]],
        versions: dict[str, str] | None = None,
    ) -> None:
        self.clock, self.outcomes, self.answers = clock, outcomes, answers
        self.versions = versions or {}
        self.pushed: list[tuple[str, str]] = []
        self.asked: list[tuple[str, str, float]] = []

    def push(
        self,
        device: str,
        site: str,
        timeout: float,
        progress: Progress | None = None,
        job: str | None = None,
    ) -> Outcome:
        assert job is not None
        self.pushed.append((device, job))
        self.clock.t += timeout if self.outcomes[device].state == plan.TIMEOUT else 1
        return self.outcomes[device]

    def reported_version(self, device: str, site: str, wait: float = 2.0) -> str | None:
        return self.versions.get(device, "0.1.0")

    def job_state(
        self, device: str, site: str, job: str, wait: float = 10.0
    ) -> dict[str, Any] | None:
        self.asked.append((device, job, self.clock.t))
        script = self.answers[device]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if answer is None:
            self.clock.t += wait  # unanswered: the ask waited its whole time
            return None
        self.clock.t += 0.1
        return {**answer, "id": job} if answer.get("id") == "THIS" else answer


SILENT = Outcome(plan.TIMEOUT, "no final answer within 60 s (status reports version 0.1.0)",
                 "0.1.0", None)  # fmt: skip
OK = Outcome(plan.SUCCEEDED, "", NEW, {})


def rollout(store: Store, clock: Clock, devices: list[str]) -> tuple[Rollouts, str]:
    rollouts = Rollouts(store)
    rid = rollouts.create(
        version=NEW, artifact="/srv/watchpost-0.2.0.tar", sha256="ab" * 32, scope="fleet",
        targets=[Target(d, "leeds", "0.1.0") for d in devices], canaries=[],
        wave_size=len(devices), threshold=plan.parse_threshold("0"), job_timeout=60,
    )  # fmt: skip
    return rollouts, rid


def drive(rollouts: Rollouts, rid: str, pusher: Pusher, clock: Clock, ask_for: float = 300) -> Any:
    lines: list[str] = []
    d = Driver(rollouts, rid, pusher, parallel=1, say=lines.append, name="t:1", ask_for=ask_for,
               ask_backoff=(5.0, 60.0), ask_wait=10.0, sleep=clock.sleep, clock=clock)  # fmt: skip
    return d.run(), {x["device"]: x for x in rollouts.devices(rid)}, lines


def test_silent_devices_are_asked_again_and_end_as_they_say_or_time_out(store: Store) -> None:
    clock = Clock()
    devices = ["quiet", "late", "stuck", "lost", "cut"]
    rollouts, rid = rollout(store, clock, devices)
    pusher = Pusher(
        clock,
        {d: SILENT for d in devices},
        {
            "quiet": [None],  # never says anything
            "late": [None, None, {"id": "THIS", "state": "checking"},
                     {"id": "THIS", "state": "succeeded", "version": NEW}],
            "stuck": [{"id": "THIS", "state": "installing"}],  # never ends its job
            "lost": [{"id": "j-older", "state": "succeeded", "version": "0.1.0"}],
            "cut": [{"id": "THIS", "state": "downloading", "received": 3, "count": 9}],
        },
    )  # fmt: skip
    final, rows, lines = drive(rollouts, rid, pusher, clock)
    # The wave ended (it did not wait for ever) and paused: four failures, one success.
    assert final.state == plan.PAUSED
    assert {d: rows[d]["state"] for d in devices} == {
        "quiet": "timeout", "late": "succeeded", "stuck": "timeout", "lost": "failed",
        "cut": "timeout",
    }  # fmt: skip
    assert rows["late"]["version"] == NEW and rows["quiet"]["version"] == "0.1.0"
    why = SILENT.reason
    # Asked again with back-off (5, 10, 20, 40, 60, 60 ...), never past the deadline.
    quiet = [t for d, _, t in pusher.asked if d == "quiet"]
    # (each unanswered ask waits its 10 s, then the pause)
    assert [round(b - a) for a, b in itertools.pairwise(quiet)] == [15, 20, 30, 50, 70, 70]
    assert quiet[-1] - quiet[0] <= 300
    assert rows["quiet"]["reason"] == f"{why}; no answer to 7 status requests over 300 s"
    assert rows["stuck"]["reason"] == (
        f"{why}; the job was still installing after 8 status requests over 300 s"
    )
    assert rows["late"]["reason"] == "reported by the device's status, asked again"
    assert rows["lost"]["reason"] == (
        f"{why}; the device knows nothing of job {rows['lost']['job']} (its latest update job: "
        "j-older)"
    )
    assert rows["cut"]["reason"] == (
        f"{why}; the transfer stopped: the device has 3 of 9 chunks of job {rows['cut']['job']}"
    )
    # Each device was sent the release once; the status requests named its own job.
    assert sorted(d for d, _ in pusher.pushed) == sorted(devices)
    assert {(d, j) for d, j, _ in pusher.asked} == set(pusher.pushed)
    assert final.reason.startswith("wave 0: 4 of 5 devices failed (threshold 0): cut timeout")
    assert "quiet: timeout" in "\n".join(lines)


def test_a_device_that_answers_its_end_needs_no_asking_and_a_failure_keeps_its_reason(
    store: Store,
) -> None:
    clock = Clock()
    rollouts, rid = rollout(store, clock, ["d1", "d2"])
    pusher = Pusher(
        clock,
        {"d1": OK, "d2": SILENT},
        {"d1": [None], "d2": [{"id": "THIS", "state": "rolled-back", "reason": "crashed"}]},
    )
    final, rows, _ = drive(rollouts, rid, pusher, clock)
    assert [d for d, _, _ in pusher.asked] == ["d2"]
    assert (rows["d1"]["state"], rows["d2"]["state"]) == ("succeeded", "rolled-back")
    assert rows["d2"]["reason"] == "crashed (the device's status, asked again)"
    assert final.state == plan.PAUSED


def test_ask_for_zero_asks_once(store: Store) -> None:
    clock = Clock()
    rollouts, rid = rollout(store, clock, ["d1"])
    pusher = Pusher(clock, {"d1": SILENT}, {"d1": [None]})
    _, rows, _ = drive(rollouts, rid, pusher, clock, ask_for=0)
    assert len(pusher.asked) == 1 and clock.sleeps == []
    assert rows["d1"]["state"] == "timeout"


def test_after_a_driver_restart_the_dead_drivers_job_is_asked_for_first(store: Store) -> None:
    clock = Clock()
    devices = ["ended", "busy", "never", "mute"]
    rollouts, rid = rollout(store, clock, devices)
    for d in devices:  # a driver that died left every device mid-job
        rollouts.set_device(rid, d, plan.PENDING, job=f"dead-{d}")
        rollouts.set_device(rid, d, "installing")
    pusher = Pusher(
        clock,
        {d: OK for d in devices},
        {
            "ended": [{"id": "THIS", "state": "failed", "reason": "refused: no space"}],
            "busy": [{"id": "THIS", "state": "switching"},
                     {"id": "THIS", "state": "succeeded", "version": NEW}],
            "never": [{}],  # the device knows of no job: it never got the release
            "mute": [None],
        },
    )  # fmt: skip
    final, rows, _ = drive(rollouts, rid, pusher, clock)
    assert {d: rows[d]["state"] for d in devices} == {
        "ended": "failed", "busy": "succeeded", "never": "succeeded", "mute": "succeeded"
    }  # fmt: skip
    assert (
        rows["ended"]["reason"] == "refused: no space (the device's status, after a driver restart)"
    )
    assert rows["busy"]["job"] == "dead-busy" and rows["busy"]["version"] == NEW
    # Only the ones that never got it, or said nothing, are sent the release again.
    assert sorted(d for d, _ in pusher.pushed) == ["mute", "never"]
    assert rows["never"]["job"] != "dead-never"
    assert final.state == plan.PAUSED  # "ended" failed


def test_rollout_run_waits_for_a_dead_drivers_lease_and_ends_on_a_done_or_paused_rollout(
    store: Store, store_url: str
) -> None:
    """What the systemd unit (hub/systemd/watchpost-hub-rollout@.service) relies on."""
    clock = Clock()
    rollouts, rid = rollout(store, clock, ["d1"])
    # A driver killed 1.5 s before it would go stale: the next one waits for its lease.
    Rollouts(store, clock=lambda: time.time() - (DRIVER_STALE_S - 1.5)).claim(rid, "dead:1")
    t0 = time.monotonic()
    command._wait_for_lease(Rollouts(store), rid, 10)
    assert 1.0 <= time.monotonic() - t0 < 6 and rollouts.lease_holder(rid) is None
    rollouts.claim(rid, "alive:2")  # a live one: waited for `wait` seconds, then claim refuses
    t0 = time.monotonic()
    command._wait_for_lease(Rollouts(store), rid, 0.3)
    assert time.monotonic() - t0 >= 0.3 and rollouts.lease_holder(rid, "me:3") == "alive:2"
    rollouts.release_driver(rid, "alive:2")

    url = store_url
    rollouts.pause(rid)
    r = CliRunner().invoke(main, ["rollout", "run", rid, "--store", url])
    assert r.exit_code == 1 and f"rollout {rid} is paused: paused by operator" in r.output
    rollouts.resume(rid)
    rollouts.start_wave(rid, 0)
    rollouts.set_device(rid, "d1", plan.SUCCEEDED, job="j1", version=NEW)
    rollouts.finish_wave(rid, 0)
    rollouts.complete(rid)
    r = CliRunner().invoke(main, ["rollout", "run", rid, "--store", url])
    assert r.exit_code == 0 and f"rollout {rid}: done" in r.output, r.output
