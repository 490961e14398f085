"""The driver: works a rollout from the store until it is done, paused or stopped.

Canaries (wave 0) first, then each wave in order; inside a wave up to `parallel` devices update
at once. Each device's job state is written to the store as the device answers it. When a wave
ends, `Rollouts.finish_wave` counts its failures and pauses the rollout when they pass the
threshold. An operator's `pause` or `stop` (another process, through the store) is seen within
`HEARTBEAT_S`: devices already updating finish, no new one starts. Killed at any point, a new
driver (`rollout run`) continues from the store: a device left mid-job is taken as updated when
its status reports the release's version, else it is sent the release again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from hub.rollout import plan
from hub.rollout.push import Outcome
from hub.rollout.state import Rollout, Rollouts, driver_name

HEARTBEAT_S = 2.0
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
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
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
        job = uuid.uuid4().hex[:16]
        self.rollouts.set_device(self.rid, device, plan.PENDING, job=job, reason="")
        last = [plan.PENDING]

        def progress(line: str, info: dict[str, Any]) -> None:
            state = info.get("state")
            if isinstance(state, str) and state != last[0] and state in plan.DEVICE_STATES:
                last[0] = state
                self.rollouts.set_device(self.rid, device, state)

        try:
            out = self.pusher.push(device, site, r.job_timeout, progress, job=job)
        except Exception as e:  # a lost connection is this device's failure, not the driver's
            out = Outcome(plan.FAILED, f"hub side: {e}", None, None)
        state = out.state if out.state in plan.DONE else plan.FAILED
        self.rollouts.set_device(self.rid, device, state, reason=out.reason, version=out.version)
        self.say(f"{device}: {state}" + (f" ({out.reason})" if out.reason else ""))
