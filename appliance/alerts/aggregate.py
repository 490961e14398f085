"""Aggregation and rate limits: a 1 000-port scan is a handful of alerts, not a thousand.

The first occurrence of a detector/signature/source/destination is reported at once; repeats in
the following window are counted and reported as one alert when the window closes. Each alert's
``count`` is the number of occurrences it stands for, so summing counts at the hub is exact.
Time is the packet clock, so a replayed pcap aggregates exactly as the live bridge did.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from appliance.alerts.model import Alert

Emit = Callable[[Alert], None]


@dataclass(slots=True)
class _Window:
    last: Alert  # the latest occurrence (its fields are reported in the summary)
    ends: float
    pending: int = 0  # occurrences not yet reported
    pending_first: float = 0.0


class Aggregator:
    def __init__(self, emit: Emit, window: float = 300.0, max_keys: int = 20_000) -> None:
        self.emit = emit
        self.window = window
        self.max_keys = max_keys
        self._open: dict[tuple, _Window] = {}
        # (ends, n, key, window) in end order: `flush` pops only windows that ended (O(closed));
        # entries whose window was closed or replaced meanwhile are skipped.
        self._ends: list[tuple[float, int, tuple, _Window]] = []
        self._n = itertools.count()

    def submit(self, alert: Alert) -> None:
        w = self._open.get(alert.key)
        if w is None:
            if len(self._open) >= self.max_keys:
                self._close(next(iter(self._open)))
            w = self._open[alert.key] = _Window(last=alert, ends=alert.timestamp + self.window)
            heapq.heappush(self._ends, (w.ends, next(self._n), alert.key, w))
            self.emit(alert)
            return
        if not w.pending:
            w.pending_first = alert.first_seen
        w.pending += alert.count
        w.last = alert

    def flush(self, now: float, everything: bool = False) -> None:
        """Report and close windows that ended by `now` (all of them with `everything`)."""
        if everything:
            for key in list(self._open):
                self._close(key)
            self._ends.clear()
            return
        ends, open_ = self._ends, self._open
        while ends and ends[0][0] <= now:
            _, _, key, w = heapq.heappop(ends)
            if open_.get(key) is w:
                self._close(key)

    def _close(self, key: tuple) -> None:
        w = self._open.pop(key)
        if w.pending:
            self.emit(
                replace(
                    w.last,
                    count=w.pending,
                    first_seen=w.pending_first,
                    timestamp=w.last.last_seen,
                )
            )


class RateLimiter:
    """Per-detector token bucket; what it refuses is counted, not silently lost."""

    def __init__(self, per_minute: int = 120, burst: int = 60) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._tokens: dict[str, tuple[float, float]] = {}
        self.dropped: Counter[str] = Counter()

    def allow(self, detector: str, now: float) -> bool:
        tokens, when = self._tokens.get(detector, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - when) * self.rate)
        if tokens < 1.0:
            self._tokens[detector] = (tokens, now)
            self.dropped[detector] += 1
            return False
        self._tokens[detector] = (tokens - 1.0, now)
        return True
