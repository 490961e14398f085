"""The driver: works a rollout from the store until it is done, paused or stopped.

Canaries (wave 0) first, then each wave in order; inside a wave up to `parallel` devices update
at once. Each device's job state is written to the store as the device answers it. When a wave
ends, `Rollouts.finish_wave` counts its failures and pauses the rollout when they pass the
threshold. An operator's `pause` or `stop` (another process, through the store) is seen within
`HEARTBEAT_S`: devices already updating finish, no new one starts. Killed at any point, a new
driver (`rollout run`) continues from the store: a device left mid-job is taken as updated when
its status reports the release's version or its job's end, else it is sent the release again.

A device whose job state is unknown (no final answer within the job timeout, or left mid-job by
a driver that died) is asked again: a `status` command (the answer's ``update`` names the job and
its state; unanswered, the retained status' ``update`` counts when it is this job's), at
`ASK_BACKOFF_S` intervals doubling up to their cap, for at most `ask_for` seconds. Its job then
ends as the device says; a device that answers but knows nothing of the job never got it
(failed); one still silent, or still in the middle of its job, at the deadline is a `timeout`
with the reason: never success, and never a wave that waits for ever.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from hub.rollout import plan
from hub.rollout.plan import Outcome
from hub.rollout.state import Rollout, Rollouts, driver_name
from protocol import jobs

HEARTBEAT_S = 2.0
ASK_FOR_S = 600.0  # how long a device whose job state is unknown is asked again
ASK_BACKOFF_S = (5.0, 60.0)  # the first pause between two asks, and the longest
ASK_WAIT_S = 10.0  # how long one ask waits for its answer (never much past the deadline)
MIN_WAIT_S = 0.5
# Once one of these, the device has the whole artifact: a driver that restarts waits for the end.
AFTER_DOWNLOAD = ("verifying", "installing", "switching", "checking")
Say = Callable[[str], None]


class Pusher(Protocol):
    def push(
        self,
        device: str,
        site: str,
        timeout: float,
        progress: Callable[[str, dict[str, Any]], None] | None = None,
        job: str | None = None,
    ) -> Outcome: ...

    def reported_version(self, device: str, site: str, wait: float = 2.0) -> str | None: ...

    def job_state(
        self, device: str, site: str, job: str, wait: float = ASK_WAIT_S
    ) -> dict[str, Any] | None: ...


class Driver:
    def __init__(
        self,
        rollouts: Rollouts,
        rid: str,
        pusher: Pusher,
        *,
        parallel: int = 16,
        say: Say = lambda line: None,
        name: str | None = None,
        ask_for: float = ASK_FOR_S,
        ask_backoff: tuple[float, float] = ASK_BACKOFF_S,
        ask_wait: float = ASK_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        if ask_for < 0:
            raise ValueError("ask_for must be at least 0")
        self.ask_for, self.ask_backoff, self.ask_wait = ask_for, ask_backoff, ask_wait
        self.sleep, self.clock = sleep, clock
        self.rollouts, self.rid, self.pusher = rollouts, rid, pusher
        self.parallel = parallel
        self.say = say
        self.name = name or driver_name()
        self._state = plan.RUNNING
        self._stop = threading.Event()

    # --- the lease and the operator's commands, seen through the store -------------------

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._state = self.rollouts.heartbeat(self.rid, self.name).state
            except Exception:  # the store is away for a moment: keep the last state
                continue

    def running(self) -> bool:
        return self._state == plan.RUNNING

    def run(self) -> Rollout:
        """Drive until done, paused or stopped; the rollout as it then is."""
        r = self.rollouts.claim(self.rid, self.name)
        self._state = r.state
        beat = threading.Thread(target=self._beat, name="rollout-heartbeat", daemon=True)
        beat.start()
        try:
            while True:
                r = self.rollouts.heartbeat(self.rid, self.name)
                self._state = r.state
                if r.state != plan.RUNNING:
                    return r
                wave = next(
                    (w for w in self.rollouts.waves(self.rid)
                     if w["state"] in (plan.W_PENDING, plan.W_RUNNING)),
                    None,
                )  # fmt: skip
                if wave is None:
                    self.rollouts.complete(self.rid)
                    self.say(f"rollout {self.rid}: done")
                    return self.rollouts.get(self.rid)
                n = int(wave["wave"])
                name = "canary wave" if wave["canary"] else f"wave {n}"
                if wave["state"] == plan.W_PENDING:
                    self.say(f"{name}: {wave['size']} devices")
                self.rollouts.start_wave(self.rid, n)
                self._run_wave(r, n)
                if not self.running():
                    continue  # paused or stopped meanwhile: the wave stays open
                passed, reason = self.rollouts.finish_wave(self.rid, n)
                self.say(f"{name}: passed" if passed else f"rollout {self.rid} paused: {reason}")
        finally:
            self._stop.set()
            beat.join(HEARTBEAT_S + 1)
            self.rollouts.release_driver(self.rid, self.name)

    # --- one wave ------------------------------------------------------------------------

    def _run_wave(self, r: Rollout, wave: int) -> None:
        todo = [d for d in self.rollouts.devices(self.rid, wave) if d["state"] not in plan.DONE]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(todo))) as pool:
            for f in [pool.submit(self._device, r, d) for d in todo]:
                f.result()

    def _device(self, r: Rollout, row: dict[str, Any]) -> None:
        device, site = row["device"], row["site"]
        if not self.running():
            return  # paused or stopped: not started
        if row["state"] != plan.PENDING:
            # Left mid-job by a driver that died: its status tells whether it updated.
            version = self.pusher.reported_version(device, site)
            if version == r.version:
                self.rollouts.set_device(self.rid, device, plan.SUCCEEDED, version=version,
                                         reason="confirmed by the device's status after a "
                                         "driver restart")  # fmt: skip
                self.say(f"{device}: succeeded (status reports {version})")
                return
            if row.get("job") and self._resume(r, device, site, str(row["job"])):
                return
        job = uuid.uuid4().hex[:16]
        self.rollouts.set_device(self.rid, device, plan.PENDING, job=job, reason="")
        try:
            out = self.pusher.push(device, site, r.job_timeout, self._progress(device), job=job)
        except Exception as e:  # a lost connection is this device's failure, not the driver's
            out = Outcome(plan.FAILED, f"hub side: {e}", None, None)
        if out.state == plan.TIMEOUT:
            out = self._settle(r, device, site, job, out.reason)
        self._record(device, out)

    def _progress(self, device: str) -> Callable[[str, dict[str, Any]], None]:
        last = [plan.PENDING]

        def progress(line: str, info: dict[str, Any]) -> None:
            state = info.get("state")
            if isinstance(state, str) and state != last[0] and state in plan.DEVICE_STATES:
                last[0] = state
                self.rollouts.set_device(self.rid, device, state)

        return progress

    def _record(self, device: str, out: Outcome) -> None:
        state = out.state if out.state in plan.DONE else plan.FAILED
        self.rollouts.set_device(self.rid, device, state, reason=out.reason, version=out.version)
        self.say(f"{device}: {state}" + (f" ({out.reason})" if out.reason else ""))

    def _resume(self, r: Rollout, device: str, site: str, job: str) -> bool:
        """After a driver restart: the job the dead driver started, as the device tells it.
        True when that settles the device (ended, or waited for past its download)."""
        try:
            update = self.pusher.job_state(device, site, job, self.ask_wait)
        except Exception:  # the connection: send the release again, as without an answer
            return False
        if update is None or update.get("id") != job:
            return False  # never got it, or no answer: send it again
        state = update.get("state")
        if state in jobs.TERMINAL:
            self._record(device, _ended(update, "after a driver restart"))
            return True
        if state in AFTER_DOWNLOAD:
            self.rollouts.set_device(self.rid, device, str(state))
            why = f"job {job} was {state} when the driver restarted"
            self._record(device, self._settle(r, device, site, job, why))
            return True
        return False  # queued or downloading: sending again resumes nothing worse

    def _settle(self, r: Rollout, device: str, site: str, job: str, why: str) -> Outcome:
        """Ask a device whose job state is unknown until it tells the job's end, with back-off,
        for at most `ask_for` seconds; then a timeout with the reason (`why`: what came before)."""
        deadline = self.clock() + self.ask_for
        delay, longest = self.ask_backoff
        asks = answers = 0
        last: str | None = None
        progress = self._progress(device)
        while True:
            asks += 1
            wait = max(MIN_WAIT_S, min(self.ask_wait, deadline - self.clock()))
            try:
                update = self.pusher.job_state(device, site, job, wait)
            except Exception:  # the hub's connection: as no answer, ask again later
                update = None
            if update is not None:
                answers += 1
                if update.get("id") != job:
                    latest = update.get("id") or "none"
                    return Outcome(plan.FAILED, f"{why}; the device knows nothing of job {job} "
                                   f"(its latest update job: {latest})", None, update)  # fmt: skip
                state = update.get("state")
                if state in jobs.TERMINAL:
                    return _ended(update, "asked again")
                if state not in AFTER_DOWNLOAD:  # queued, downloading: no chunk follows now
                    got = f"{update.get('received', '?')} of {update.get('count', '?')}"
                    return Outcome(plan.TIMEOUT, f"{why}; the transfer stopped: the device has "
                                   f"{got} chunks of job {job}", None, update)  # fmt: skip
                if isinstance(state, str):
                    last = state
                    progress("", {"state": state})
            if self.clock() + delay > deadline:
                break
            self.sleep(delay)
            delay = min(longest, delay * 2)
        over = f"{asks} status request{'s' if asks != 1 else ''} over {self.ask_for:g} s"
        if answers == 0:
            reason = f"{why}; no answer to {over}"
        else:
            reason = f"{why}; the job was still {last or 'unfinished'} after {over}"
        return Outcome(plan.TIMEOUT, reason, None, None)


def _ended(update: dict[str, Any], how: str) -> Outcome:
    """The outcome of a job the device reports ended (`update`: its status' job summary)."""
    state = str(update.get("state"))
    if state == jobs.REJECTED:
        state = plan.FAILED
    version = update.get("version") if state == plan.SUCCEEDED else None
    reason = str(update.get("reason") or "")
    said = f"the device's status, {how}"
    return Outcome(
        state,
        f"{reason} ({said})" if reason else f"reported by {said}",
        version if isinstance(version, str) else None,
        update,
    )
