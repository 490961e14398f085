"""The daemon's NFQUEUE set: one interface over the two ways of running the packet path.

- `InProcessQueues` (``inline.workers = 1``): one `QueueWorker` in the daemon's own process,
  calling the daemon's engine directly.
- `WorkerQueues` (``inline.workers > 1``): one worker process per queue of a ``queue-balance``
  range, each with its own engine; alerts and block requests come back over a pipe.

The daemon's loop only talks to `QueueSet`; `queue_set` picks the implementation.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any, Protocol

from appliance.config import Config
from appliance.detect.engine import Engine, WorkerEngine
from appliance.inline.queue import QueueWorker, WorkerProcess

log = logging.getLogger(__name__)

WORKER_SILENCE = 10.0  # a worker that sent no stats for this long is stuck: restart it
WORKER_RESTART_GAP = 5.0

OnAlert = Callable[[Any], None]


class Blocker(Protocol):
    def block(self, addr: str, ttl: int) -> None: ...


class QueueSet(Protocol):
    """The bound queue(s) of the running config."""

    def open(self) -> None:
        """Bind every queue and make it fail open; OSError with a reason."""
        ...

    def close(self) -> int:
        """Unbind everything; the packets the closed queues had received."""
        ...

    def fds(self) -> list[Any]:
        """What the main loop selects on."""
        ...

    def handle(self, ready: Collection[Any], on_alert: OnAlert, blocker: Blocker) -> None:
        """Process what the ready fds hold (packets, or worker messages)."""
        ...

    def answer_pending(self, seconds: float) -> None:
        """Answer packets still queued in the kernel (before an unbind, which would drop them)."""
        ...

    def configure(self, config: Config) -> None:
        """Live changes that need no rebind (mode, port names, ...)."""
        ...

    def set_intel(self, paths: list[str]) -> None:
        """New intel: worker processes load it from `paths` (in-process shares the engine's)."""
        ...

    def supervise(self) -> int:
        """Restart stuck or dead workers; how many were restarted."""
        ...

    def received(self) -> int:
        """Packets received since this set was made (restarted workers included)."""
        ...

    def counters(self) -> Counter[str]:
        """Summed queue counters plus ``flows`` and ``hook_errors``."""
        ...


def queue_numbers(config: Config) -> list[int]:
    return list(range(config.inline.queue, config.inline.queue + config.inline.workers))


class InProcessQueues:
    """One queue served in the daemon's process by its own engine."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.worker: QueueWorker | None = None

    def open(self) -> None:
        worker = QueueWorker(self.config, self.engine, self.config.inline.queue)
        worker.open()
        self.worker = worker

    def close(self) -> int:
        worker, self.worker = self.worker, None
        if worker is None:
            return 0
        worker.close()
        return worker.stats.received

    def fds(self) -> list[Any]:
        return [self.worker] if self.worker is not None else []

    def handle(self, ready: Collection[Any], on_alert: OnAlert, blocker: Blocker) -> None:
        if self.worker is not None and self.worker in ready:
            self.worker.process()

    def answer_pending(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.worker is not None and time.monotonic() < deadline:
            if not self.worker.process(max_seconds=0.05):
                break

    def configure(self, config: Config) -> None:
        self.config = config
        if self.worker is not None:
            self.worker.configure(config)

    def set_intel(self, paths: list[str]) -> None:
        pass  # the daemon's engine is this queue's engine

    def supervise(self) -> int:
        return 0

    def received(self) -> int:
        return self.worker.stats.received if self.worker is not None else 0

    def counters(self) -> Counter[str]:
        out: Counter[str] = Counter()
        if self.worker is not None:
            out.update(self.worker.stats.as_dict())
            out.update(self.engine.counters())
        return out


class WorkerQueues:
    """One worker process per queue number; each runs its own engine."""

    def __init__(self, config: Config, intel_paths: list[str]) -> None:
        self.config = config
        self.intel_paths = list(intel_paths)
        self.workers: list[WorkerProcess] = []
        self._retired = 0  # packets received by workers since replaced
        self.restarts = 0

    def open(self) -> None:
        paths = self.intel_paths
        procs = [
            WorkerProcess(self.config, n, paths, WorkerEngine) for n in queue_numbers(self.config)
        ]
        self.workers = procs
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()

    def close(self) -> int:
        total = self.received()
        for w in self.workers:
            w.stop()
        self.workers = []
        self._retired = 0
        return total

    def fds(self) -> list[Any]:
        return [w for w in self.workers if w.conn is not None]

    def handle(self, ready: Collection[Any], on_alert: OnAlert, blocker: Blocker) -> None:
        for w in self.workers:
            if w in ready:
                w.drain(on_alert, blocker)

    def answer_pending(self, seconds: float) -> None:
        pass  # each worker answers its own queue before it exits

    def configure(self, config: Config) -> None:
        self.config = config
        for w in self.workers:
            w.send("configure", config)

    def set_intel(self, paths: list[str]) -> None:
        self.intel_paths = list(paths)
        for w in self.workers:
            w.send("intel", list(paths))

    def supervise(self) -> int:
        mono = time.monotonic()
        restarted = 0
        for i, w in enumerate(self.workers):
            if w.alive() and mono - w.last_heard > WORKER_SILENCE:
                log.error("worker for queue %d is stuck: restarting it", w.queue_num)
                w.stop(timeout=1.0)
            if w.alive() or mono - w.started_at < WORKER_RESTART_GAP:
                continue
            log.error("worker for queue %d died: restarting it", w.queue_num)
            self._retired += w.stats.get("received", 0)
            w.stop(timeout=0.5)
            fresh = WorkerProcess(self.config, w.queue_num, w.intel_paths, w.engine_factory)
            try:
                fresh.start()
                fresh.wait_ready(timeout=30.0)
            except OSError as e:
                log.error("%s", e)
            self.workers[i] = fresh
            restarted += 1
        return restarted

    def received(self) -> int:
        return self._retired + sum(w.stats.get("received", 0) for w in self.workers)

    def counters(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for w in self.workers:
            out.update(w.stats)
        return out


def queue_set(config: Config, engine: Engine, intel_paths: list[str]) -> QueueSet:
    """In-process for one queue, worker processes for more."""
    if config.inline.workers == 1:
        return InProcessQueues(config, engine)
    return WorkerQueues(config, intel_paths)
