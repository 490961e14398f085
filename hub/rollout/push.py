"""The release to devices over the operator's chunked bundle transfer (`push_chunks`, the same
path as push-intel): the artifact travels as a bundle of kind `watchpost-release` signed by the
command key, each chunk an `update` command, and the device answers every state on cmd/res.

One MQTT connection serves a whole wave: a router thread hands each answer to the requester
whose response topic it came on, so devices are updated in parallel without a connection each.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt

from hub.operator.commands import Requester, push_chunks
from hub.operator.connection import Connection, Ctx, OperatorError, _json, _split, collect_retained
from hub.rollout import plan
from hub.rollout.plan import Outcome
from hub.rollout.release import Release
from hub.rollout.state import Target
from protocol import bundle, topics
from protocol import release as rel

Progress = Callable[[str, dict[str, Any]], None]


class _View:
    """What a Requester needs of a connection, with a message queue of its own."""

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.client_id = mux.conn.client_id
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def subscribe(self, names: list[str], qos: int = 1, timeout: float = 10.0) -> None:
        with self.mux.lock:
            for n in names:
                self.mux.routes[n] = self
        self.mux.conn.subscribe(names, qos, timeout)

    def publish(self, name: str, payload: bytes, **kw: Any) -> None:
        self.mux.conn.publish(name, payload, **kw)


class Mux:
    """Routes the messages of one connection to views by exact topic."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.routes: dict[str, _View] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._route, name="rollout-mux", daemon=True)
        self._thread.start()

    def _route(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.conn.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.lock:
                view = self.routes.get(msg.topic)
            if view is not None:
                view.messages.put(msg)

    def view(self) -> _View:
        return _View(self)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def retained_statuses(conn: Connection, pattern: str, wait: float = 3.0) -> list[Target]:
    """Devices with a retained status matching `pattern` (``watchpost/v1/<site|+>/+/status``)."""
    out = []
    for msg in collect_retained(conn, [pattern], wait=wait, settle=min(1.0, wait)):
        site, device, sub = _split(msg.topic)
        status = _json(msg.payload)
        if device and sub == "status" and isinstance(status, dict):
            version = status.get("version")
            out.append(Target(device, site, version if isinstance(version, str) else None))
    return sorted(out, key=lambda t: (t.site, t.device))


def find_targets(
    conn: Connection, *, devices: tuple[str, ...] = (), site: str | None = None, fleet: bool = False
) -> list[Target]:
    """The target devices from their retained statuses; OperatorError naming an unknown device
    or a site without devices."""
    if fleet:
        found = retained_statuses(conn, f"{topics.ROOT}/+/+/status")
        if not found:
            raise OperatorError("--fleet: no device has a retained status on the broker")
        return found
    if site is not None:
        found = retained_statuses(conn, f"{topics.ROOT}/{site}/+/status")
        if not found:
            raise OperatorError(f"--site {site}: unknown site (no device of it has a status)")
        if devices:
            by_name = {t.device: t for t in found}
            unknown = [d for d in devices if d not in by_name]
            if unknown:
                raise OperatorError(f"--device: not at site {site}: {', '.join(unknown)}")
            return [by_name[d] for d in devices]
        return found
    found = retained_statuses(conn, f"{topics.ROOT}/+/+/status")
    by_name = {t.device: t for t in found}
    unknown = [d for d in devices if d not in by_name]
    if unknown:
        raise OperatorError(
            f"--device: unknown device {', '.join(unknown)} (no retained status on the broker)"
        )
    return [by_name[d] for d in devices]


class ReleasePusher:
    """Sends one checked release to devices; each `push` is one update job."""

    def __init__(
        self,
        ctx: Ctx,
        release: Release,
        *,
        chunk_size: int = bundle.DEFAULT_CHUNK_BYTES,
        retries: int = 2,
    ) -> None:
        self.ctx = ctx
        self.release = release
        self.chunk_size = chunk_size
        self.retries = retries
        key = ctx.command_key()
        # One signed bundle manifest for every device (the chunks differ only by job id).
        self.manifest = bundle.make_manifest(
            release.data, release.name, release.version, key, kind=rel.KIND
        )
        bundle.chunk_args("check", self.manifest, b"", chunk_size)  # chunk size in range
        self.conn = ctx.connect()
        self.mux = Mux(self.conn)

    def close(self) -> None:
        self.mux.close()
        self.conn.close()

    def push(
        self,
        device: str,
        site: str,
        timeout: float,
        progress: Progress | None = None,
        job: str | None = None,
    ) -> Outcome:
        job = job or uuid.uuid4().hex[:16]
        chunks = bundle.chunk_args(job, self.manifest, self.release.data, self.chunk_size)
        req = Requester(self.ctx, cast(Connection, self.mux.view()), device, site)
        deadline = time.monotonic() + timeout
        final = push_chunks(
            req, "update", chunks, deadline, self.retries, progress or (lambda line, j: None)
        )
        if final is None:
            version = self.reported_version(device, site)
            if version == self.release.version:
                return Outcome(plan.SUCCEEDED, "confirmed by the device's status (no final "
                               "answer came)", version, None)  # fmt: skip
            return Outcome(
                plan.TIMEOUT,
                f"no final answer within {timeout:g} s (status reports version {version})",
                version,
                None,
            )
        job_info = final.get("job")
        info: dict[str, Any] = job_info if isinstance(job_info, dict) else {}
        state = str(info.get("state"))
        if state == "rejected":
            state = plan.FAILED
        res = final.get("result")
        result: dict[str, Any] = res if isinstance(res, dict) else {}
        version = result.get("version") if state == plan.SUCCEEDED else None
        reason = str(info.get("reason") or final.get("error") or "")
        return Outcome(state, reason, version if isinstance(version, str) else None, final)

    def reported_version(self, device: str, site: str, wait: float = 2.0) -> str | None:
        """The firmware version in the device's retained status (None: none seen)."""
        status = self._retained_status(device, site, wait)
        return str(status["version"]) if status is not None else None

    def _retained_status(self, device: str, site: str, wait: float) -> dict[str, Any] | None:
        """The device's retained status (one that names a version), None when none came."""
        view = self.mux.view()
        name = topics.topic(site, device, "status")
        view.subscribe([name])
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = view.messages.get(timeout=left)
            except queue.Empty:
                break
            status = _json(msg.payload)
            if isinstance(status, dict) and isinstance(status.get("version"), str):
                return status
        return None

    def job_state(
        self, device: str, site: str, job: str, wait: float = 10.0
    ) -> dict[str, Any] | None:
        """Ask the device for its update job (a `status` command): the answer's ``update``
        (``{}``: it knows of no job; another ``id``: not this one). Unanswered within `wait`:
        the retained status' ``update`` when it is this job's (the daemon that finished it
        publishes it), else None (the device said nothing)."""
        req = Requester(self.ctx, cast(Connection, self.mux.view()), device, site)
        env = req.send("status", {}, ttl=max(60, int(wait)))
        for a in req.answers(time.monotonic() + wait):
            if a.get("id") != env["id"]:
                continue
            result = a.get("result")
            if a.get("ok") and isinstance(result, dict):
                update = result.get("update")
                return dict(update) if isinstance(update, dict) else {}
            break  # refused (e.g. a stale command key): no state from this answer
        status = self._retained_status(device, site, min(wait, 2.0))
        update = status.get("update") if status is not None else None
        if isinstance(update, dict) and update.get("id") == job:
            return dict(update)
        return None


def print_answer(answer: dict[str, Any]) -> str:
    return json.dumps(answer, sort_keys=True, ensure_ascii=False)
