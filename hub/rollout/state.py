"""Rollout state in the hub store (tables of migration 2): the rollout, its waves, each device's
job, and an event log. Every change is one transaction, so a driver killed at any point leaves a
state the next `rollout run` continues from.

The state machine lives here too: `finish_wave` counts a finished wave's failures (failed,
rolled-back, timeout) against the threshold (canaries: any failure) and pauses the rollout when
they pass it; `pause`, `resume` and `stop` are the operator's transitions, each refused with a
reason when the rollout is not in a state that allows it.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.rollout import plan
from hub.rollout.plan import FAILURES, PlanError, Threshold
from hub.store import Store

DRIVER_STALE_S = 30.0  # a driver that has not been heard of for this long has died


class RolloutError(ValueError):
    """A rollout operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Target:
    device: str
    site: str
    version: str | None  # the firmware version its status reported before the rollout


@dataclass
class Rollout:
    id: str
    version: str
    artifact: str
    sha256: str
    scope: str
    wave_size: int
    threshold: Threshold
    job_timeout: float
    state: str
    reason: str
    driver: str | None
    driver_seen: float | None
    created_at: float
    updated_at: float


def _row(cur: Any) -> dict[str, Any] | None:
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def driver_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Rollouts:
    """The rollout tables of one hub store."""

    def __init__(self, store: Store, clock: Any = time.time) -> None:
        self.store = store
        self.p = store.p
        self.clock = clock

    # --- creating ------------------------------------------------------------------------

    def create(
        self,
        *,
        version: str,
        artifact: str,
        sha256: str,
        scope: str,
        targets: Sequence[Target],
        canaries: Sequence[str],
        wave_size: int,
        threshold: Threshold,
        job_timeout: float,
    ) -> str:
        if not targets:
            raise PlanError(f"{scope}: no target devices")
        if job_timeout <= 0:
            raise PlanError(f"--job-timeout {job_timeout:g}: must be more than 0 seconds")
        names = [t.device for t in targets]
        if len(set(names)) != len(names):
            raise PlanError("a target device is named twice")
        plan_waves = plan.waves(names, canaries, wave_size)
        by_name = {t.device: t for t in targets}
        rid = f"r{time.strftime('%Y%m%d', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:8]}"
        now = self.clock()
        p = self.p
        with self.store.transaction() as cur:
            cur.execute(
                f"INSERT INTO rollouts (id, version, artifact, sha256, scope, wave_size, "
                f"threshold_kind, threshold_value, job_timeout, state, reason, created_at, "
                f"updated_at) VALUES ({', '.join([p] * 13)})",
                (rid, version, artifact, sha256, scope, wave_size, threshold.kind,
                 threshold.value, job_timeout, plan.RUNNING, "", now, now),
            )  # fmt: skip
            for i, members in enumerate(plan_waves):
                canary = 1 if canaries and i == 0 else 0
                cur.execute(
                    f"INSERT INTO rollout_waves (rollout, wave, canary, size, state) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p})",
                    (rid, i, canary, len(members), plan.W_PENDING),
                )
                for d in members:
                    t = by_name[d]
                    cur.execute(
                        f"INSERT INTO rollout_devices (rollout, device, site, wave, state, "
                        f"version_before, version, updated_at) "
                        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
                        (rid, d, t.site, i, plan.PENDING, t.version, t.version, now),
                    )
            self._event(cur, rid, None, f"started: release {version} to {scope}, "
                        f"{len(names)} devices in {len(plan_waves)} waves "
                        f"({len(canaries)} canaries), threshold {threshold}")  # fmt: skip
        return rid

    def _event(self, cur: Any, rid: str, device: str | None, text: str) -> None:
        p = self.p
        cur.execute(
            f"INSERT INTO rollout_events (rollout, at, device, event) VALUES ({p}, {p}, {p}, {p})",
            (rid, self.clock(), device, text),
        )

    def event(self, rid: str, text: str, device: str | None = None) -> None:
        with self.store.transaction() as cur:
            self._event(cur, rid, device, text)

    # --- reading -------------------------------------------------------------------------

    def _get(self, cur: Any, rid: str) -> Rollout:
        cur.execute(f"SELECT * FROM rollouts WHERE id = {self.p}", (rid,))
        r = _row(cur)
        if r is None:
            raise RolloutError(f"rollout {rid}: no such rollout in the store")
        return Rollout(
            id=r["id"], version=r["version"], artifact=r["artifact"], sha256=r["sha256"],
            scope=r["scope"], wave_size=int(r["wave_size"]),
            threshold=Threshold(r["threshold_kind"], float(r["threshold_value"])),
            job_timeout=float(r["job_timeout"]), state=r["state"], reason=r["reason"],
            driver=r["driver"], driver_seen=r["driver_seen"], created_at=float(r["created_at"]),
            updated_at=float(r["updated_at"]),
        )  # fmt: skip

    def get(self, rid: str) -> Rollout:
        with self.store.transaction() as cur:
            return self._get(cur, rid)

    def rollouts(self) -> list[Rollout]:
        with self.store.transaction() as cur:
            cur.execute("SELECT id FROM rollouts ORDER BY created_at, id")
            ids = [r[0] for r in cur.fetchall()]
            return [self._get(cur, i) for i in ids]

    def waves(self, rid: str) -> list[dict[str, Any]]:
        with self.store.transaction() as cur:
            cur.execute(
                f"SELECT * FROM rollout_waves WHERE rollout = {self.p} ORDER BY wave", (rid,)
            )
            return _rows(cur)

    def devices(self, rid: str, wave: int | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM rollout_devices WHERE rollout = {self.p}"
        args: list[Any] = [rid]
        if wave is not None:
            sql += f" AND wave = {self.p}"
            args.append(wave)
        with self.store.transaction() as cur:
            cur.execute(sql + " ORDER BY wave, device", args)
            return _rows(cur)

    def events(self, rid: str) -> list[dict[str, Any]]:
        with self.store.transaction() as cur:
            cur.execute(
                f"SELECT at, device, event FROM rollout_events WHERE rollout = {self.p} "
                "ORDER BY id",
                (rid,),
            )
            return _rows(cur)

    # --- the driver's lease ----------------------------------------------------------------

    def claim(self, rid: str, driver: str) -> Rollout:
        """Become the rollout's one driver (refused while another is alive)."""
        now = self.clock()
        with self.store.transaction() as cur:
            r = self._get(cur, rid)
            if r.state != plan.RUNNING:
                raise RolloutError(
                    f"rollout {rid} is {r.state}" + (f": {r.reason}" if r.reason else "")
                )
            alive = r.driver_seen is not None and now - float(r.driver_seen) < DRIVER_STALE_S
            if r.driver and r.driver != driver and alive:
                raise RolloutError(
                    f"rollout {rid} is being driven by {r.driver} (heard of "
                    f"{now - float(r.driver_seen or now):.0f} s ago)"
                )
            cur.execute(
                f"UPDATE rollouts SET driver = {self.p}, driver_seen = {self.p} "
                f"WHERE id = {self.p}",
                (driver, now, rid),
            )
            return self._get(cur, rid)

    def lease_holder(self, rid: str, driver: str | None = None) -> str | None:
        """The live driver (heard of within `DRIVER_STALE_S`) other than `driver`, if any."""
        r = self.get(rid)
        alive = r.driver_seen is not None and self.clock() - float(r.driver_seen) < DRIVER_STALE_S
        return r.driver if r.driver and r.driver != driver and alive else None

    def heartbeat(self, rid: str, driver: str) -> Rollout:
        """The rollout as it is now (an operator may have paused it); keeps the lease."""
        with self.store.transaction() as cur:
            self._lease(cur, rid, driver, keep=True)
            return self._get(cur, rid)

    def release_driver(self, rid: str, driver: str) -> None:
        with self.store.transaction() as cur:
            self._lease(cur, rid, driver, keep=False)

    def _lease(self, cur: Any, rid: str, driver: str, *, keep: bool) -> None:
        """`driver`'s lease renewed now (keep) or given back; nothing when another holds it."""
        holder, seen = (driver, self.clock()) if keep else (None, None)
        p = self.p
        cur.execute(
            f"UPDATE rollouts SET driver = {p}, driver_seen = {p} WHERE id = {p} AND driver = {p}",
            (holder, seen, rid, driver),
        )

    # --- devices and waves -----------------------------------------------------------------

    def set_device(
        self,
        rid: str,
        device: str,
        state: str,
        *,
        reason: str | None = None,
        job: str | None = None,
        version: str | None = None,
    ) -> None:
        if state not in plan.DEVICE_STATES:
            raise ValueError(f"device job state {state!r}")
        p = self.p
        now = self.clock()
        with self.store.transaction() as cur:
            cur.execute(
                f"SELECT state, reason FROM rollout_devices WHERE rollout = {p} AND device = {p}",
                (rid, device),
            )
            old = cur.fetchone()
            if old is None:
                raise RolloutError(f"rollout {rid}: device {device} is not one of its targets")
            sets = [f"state = {p}", f"updated_at = {p}"]
            args: list[Any] = [state, now]
            if job is not None:
                sets += [f"job = {p}", f"started_at = {p}"]
                args += [job, now]
            if reason is not None:
                sets.append(f"reason = {p}")
                args.append(reason)
            if version is not None:
                sets.append(f"version = {p}")
                args.append(version)
            cur.execute(
                f"UPDATE rollout_devices SET {', '.join(sets)} "
                f"WHERE rollout = {p} AND device = {p}",
                (*args, rid, device),
            )
            if state != old[0] and (state in plan.DONE or job is not None):
                text = state + (f": {reason}" if reason else "")
                self._event(cur, rid, device, text)

    def start_wave(self, rid: str, wave: int) -> None:
        p = self.p
        with self.store.transaction() as cur:
            cur.execute(
                f"UPDATE rollout_waves SET state = {p}, started_at = coalesce(started_at, {p}) "
                f"WHERE rollout = {p} AND wave = {p}",
                (plan.W_RUNNING, self.clock(), rid, wave),
            )

    def finish_wave(self, rid: str, wave: int) -> tuple[bool, str]:
        """Count the wave's failures; pass it, or fail it and pause the rollout (one
        transaction). (passed, reason)."""
        p = self.p
        now = self.clock()
        with self.store.transaction() as cur:
            r = self._get(cur, rid)
            cur.execute(
                f"SELECT canary, size FROM rollout_waves WHERE rollout = {p} AND wave = {p}",
                (rid, wave),
            )
            canary, size = cur.fetchone()
            cur.execute(
                f"SELECT device, state, reason FROM rollout_devices WHERE rollout = {p} "
                f"AND wave = {p} ORDER BY device",
                (rid, wave),
            )
            rows = cur.fetchall()
            undone = [d for d, s, _ in rows if s not in plan.DONE]
            if undone:
                raise RolloutError(f"wave {wave} has devices without a result: {', '.join(undone)}")
            failed = [(d, s, why) for d, s, why in rows if s in FAILURES]
            threshold = Threshold("count", 0) if canary else r.threshold
            name = "canary wave" if canary else f"wave {wave}"
            passed = not threshold.exceeded(len(failed), int(size))
            reason = ""
            if not passed:
                detail = "; ".join(f"{d} {s}" + (f" ({why})" if why else "")
                                   for d, s, why in failed)  # fmt: skip
                limit = "any failure pauses" if canary else f"threshold {threshold}"
                reason = f"{name}: {len(failed)} of {size} devices failed ({limit}): {detail}"
            cur.execute(
                f"UPDATE rollout_waves SET state = {p}, failures = {p}, ended_at = {p}, "
                f"reason = {p} WHERE rollout = {p} AND wave = {p}",
                (plan.W_PASSED if passed else plan.W_FAILED, len(failed), now, reason, rid, wave),
            )
            if passed:
                self._event(cur, rid, None, f"{name} passed ({len(failed)} of {size} failed)")
                return True, ""
            cur.execute(
                f"UPDATE rollouts SET state = {p}, reason = {p}, updated_at = {p} "
                f"WHERE id = {p} AND state = {p}",
                (plan.PAUSED, reason, now, rid, plan.RUNNING),
            )
            self._event(cur, rid, None, f"paused: {reason}")
            return False, reason

    def complete(self, rid: str) -> None:
        p = self.p
        with self.store.transaction() as cur:
            cur.execute(
                f"UPDATE rollouts SET state = {p}, reason = '', updated_at = {p} "
                f"WHERE id = {p} AND state = {p}",
                (plan.COMPLETE, self.clock(), rid, plan.RUNNING),
            )
            if cur.rowcount == 1:
                self._event(cur, rid, None, "done: every wave ran")

    # --- the operator's transitions ----------------------------------------------------------

    def _transition(self, rid: str, allowed: Sequence[str], new: str, reason: str) -> Rollout:
        p = self.p
        with self.store.transaction() as cur:
            r = self._get(cur, rid)
            if r.state not in allowed:
                raise RolloutError(
                    f"rollout {rid} is {r.state}; it can be {new} only when {' or '.join(allowed)}"
                )
            cur.execute(
                f"UPDATE rollouts SET state = {p}, reason = {p}, updated_at = {p} WHERE id = {p}",
                (new, reason, self.clock(), rid),
            )
            self._event(cur, rid, None, f"{new}" + (f": {reason}" if reason else ""))
            return self._get(cur, rid)

    def pause(self, rid: str, who: str = "operator") -> Rollout:
        """Devices already updating finish; no new device or wave starts."""
        return self._transition(rid, (plan.RUNNING,), plan.PAUSED, f"paused by {who}")

    def stop(self, rid: str, who: str = "operator") -> Rollout:
        """End the rollout for good (devices already updating finish; the rest never start)."""
        return self._transition(rid, (plan.RUNNING, plan.PAUSED), plan.STOPPED, f"stopped by {who}")

    def resume(self, rid: str, retry_failed: bool = False) -> Rollout:
        """Running again. A wave that failed is accepted (the next wave follows) or, with
        `retry_failed`, its failed devices are sent the release again."""
        p = self.p
        with self.store.transaction() as cur:
            r = self._get(cur, rid)
            if r.state != plan.PAUSED:
                raise RolloutError(f"rollout {rid} is {r.state}; only a paused rollout resumes")
            cur.execute(
                f"SELECT wave FROM rollout_waves WHERE rollout = {p} AND state = {p}",
                (rid, plan.W_FAILED),
            )
            failed_waves = [int(w) for (w,) in cur.fetchall()]
            for w in failed_waves:
                if retry_failed:
                    states = ", ".join(p for _ in FAILURES)
                    cur.execute(
                        f"UPDATE rollout_devices SET state = {p}, reason = '' WHERE rollout = {p} "
                        f"AND wave = {p} AND state IN ({states})",
                        (plan.PENDING, rid, w, *FAILURES),
                    )
                    cur.execute(
                        f"UPDATE rollout_waves SET state = {p}, reason = '' "
                        f"WHERE rollout = {p} AND wave = {p}",
                        (plan.W_RUNNING, rid, w),
                    )
                else:
                    cur.execute(
                        f"UPDATE rollout_waves SET state = {p} WHERE rollout = {p} AND wave = {p}",
                        (plan.W_ACCEPTED, rid, w),
                    )
            cur.execute(
                f"UPDATE rollouts SET state = {p}, reason = '', updated_at = {p} WHERE id = {p}",
                (plan.RUNNING, self.clock(), rid),
            )
            how = "failed devices sent again" if retry_failed else "failed waves accepted"
            self._event(cur, rid, None, "resumed" + (f" ({how})" if failed_waves else ""))
            return self._get(cur, rid)
