"""From a detector's finding to an EVE record on disk and in the outbox.

    detector → aggregate (window) → rate limit → number (id, seq) → privacy → journal → sinks

The journal (the SQLite outbox when a hub is configured) assigns the sequence number and stores
the record, so the hub can see gaps and a power cut loses nothing that was reported durable. A
journal with `submit` (the outbox) is handed the record without waiting on the disk: its own
thread writes batches and publishes only what is durable (see alerts/outbox.py). Sinks (the
EVE log file, stdout in replay) get the finished record.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from appliance.alerts.aggregate import Aggregator, RateLimiter
from appliance.alerts.model import Alert
from appliance.alerts.privacy import Pseudonymizer, key_for
from appliance.config import Config

log = logging.getLogger(__name__)

Sink = Callable[[dict[str, Any]], None]


class Journal(Protocol):
    """Durable store that numbers alerts: sets eve["watchpost"]["seq"] and persists the record."""

    def record(self, eve: dict[str, Any]) -> None: ...


class QueuedJournal(Journal, Protocol):
    """A journal that takes records without blocking (False: refused, counted by it)."""

    def submit(self, eve: dict[str, Any]) -> bool: ...


class MemoryJournal:
    """Numbers alerts from 1 without storing them (replay, tests)."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)

    def record(self, eve: dict[str, Any]) -> None:
        eve["watchpost"]["seq"] = next(self._seq)


class AlertPipeline:
    def __init__(self, config: Config, sinks: list[Sink], journal: Journal | None = None) -> None:
        self.sinks = list(sinks)
        self.journal = journal or MemoryJournal()
        # The packet thread's hand-over: never waits on the disk when the journal can queue.
        self._journal_put: Callable[[dict[str, Any]], Any] = getattr(
            self.journal, "submit", self.journal.record
        )
        self.emitted = 0
        # Alert ids (replay derives them from the capture, so its output is reproducible).
        self.new_id: Callable[[], str] = lambda: str(uuid.uuid4())
        self.by_severity: Counter[int] = Counter()  # emitted alerts by severity (1 = high)
        self.aggregator = Aggregator(self._limit, window=config.alerts.window)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.aggregator.window = config.alerts.window  # open windows carry on across a reload
        self.limiter = RateLimiter(config.alerts.rate_per_minute, config.alerts.burst)
        p = config.privacy
        key = key_for(p.key, config.device.state_dir) if p.pseudonymize else ""
        self.pseudo = Pseudonymizer(key, config.inline.home_nets) if p.pseudonymize else None

    def __call__(self, alert: Alert) -> None:
        """The engine's alert sink."""
        self.aggregator.submit(alert)

    def tick(self, now: float) -> None:
        self.aggregator.flush(now)

    def close(self) -> None:
        """Report every open aggregation window (end of replay, clean stop), and wait (bounded)
        until a queueing journal has made everything durable."""
        self.aggregator.flush(0.0, everything=True)
        wait = getattr(self.journal, "wait_durable", None)
        if wait is not None and not wait(timeout=10.0):
            log.error("alert journal: not everything was written within 10 s of the stop")

    def _limit(self, alert: Alert) -> None:
        if self.limiter.allow(alert.detector, alert.timestamp):
            self._finish(alert)

    def _finish(self, alert: Alert) -> None:
        alert.id = self.new_id()
        alert.device = self.config.device.id
        alert.site = self.config.device.site
        eve = alert.to_eve()
        if self.pseudo is not None:
            wp = eve.pop("watchpost")
            eve = self.pseudo.apply(eve)
            wp["details"] = self.pseudo.apply(wp.get("details", {}))
            if not wp["details"]:
                del wp["details"]
            eve["watchpost"] = wp
        self._journal_put(eve)
        self.emitted += 1
        self.by_severity[alert.signature.severity] += 1
        for sink in self.sinks:
            try:
                sink(eve)
            except Exception:
                log.exception("alert sink %r failed", sink)


class EveFile:
    """Appends EVE lines to the `log.eve` file; reopened on SIGHUP for logrotate."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._f: IO[str] | None = None

    def __call__(self, eve: dict[str, Any]) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._f.write(json.dumps(eve, separators=(",", ":")) + "\n")
        self._f.flush()

    def reopen(self) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def stdout_sink(eve: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(eve, separators=(",", ":")) + "\n")
    sys.stdout.flush()
