"""What the hub link publishes about the device besides alerts: telemetry (counters from the
daemon's snapshot, per-second rates, the machine's vital signs), the retained ``status`` and the
daily summaries.

`Telemetry` is a part of `appliance.hublink.link.HubLink` (it works on the link's config,
snapshot and publishing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from appliance.config import Config
from appliance.hublink.report import DailyReport, SystemMetrics, traffic_counters
from appliance.hublink.window import _failed


class Telemetry:
    """Telemetry, status and summary payloads of the hub link."""

    config: Config
    clock: Callable[[], float]
    version: str
    report: DailyReport
    metrics: SystemMetrics
    problem: str
    since: float
    _bd_seq: int
    _ready: bool
    _service_stats: dict[str, Any]
    _last_counts: tuple[float, dict[str, float]] | None
    _last_status: tuple[Any, ...]
    _started_mono: float
    _summaries_inflight: set[str]

    if TYPE_CHECKING:  # provided by HubLink

        def stats(self) -> dict[str, Any]:
            raise NotImplementedError

        def topic(self, sub: str) -> str:
            raise NotImplementedError

        def publish_json(
            self, subtopic: str, payload: Mapping[str, Any], retain: bool = False
        ) -> bool:
            raise NotImplementedError

        def _publish(
            self,
            topic: str,
            payload: bytes,
            qos: int = 1,
            retain: bool = False,
            props: Any = None,
            done: Callable[[Any], None] | None = None,
        ) -> int | None:
            raise NotImplementedError

    def telemetry(self) -> dict[str, Any]:
        """Counters (the service's stats, ours included), per-second rates of the traffic
        counters since the previous telemetry, and the machine's vital signs."""
        counters = dict(self._service_stats) or {}
        counters.update(self.stats())
        mono = time.monotonic()
        now_counts = traffic_counters(counters)
        now_counts["alerts"] = float(counters.get("alerts", 0) or 0)
        rates: dict[str, float] = {}
        if self._last_counts is not None:
            then, before = self._last_counts
            span = mono - then
            if span > 0:
                rates = {
                    f"{k}_per_s": round(max(0.0, v - before.get(k, v)) / span, 3)
                    for k, v in now_counts.items()
                }
        self._last_counts = (mono, now_counts)
        return {
            "ts": self.clock(),
            "device": self.config.device.id,
            "uptime": int(mono - self._started_mono),
            "counters": counters,
            "rates": rates,
            "system": self.metrics.sample(),
        }

    def publish_telemetry(self) -> bool:
        return self.publish_json("telemetry", self.telemetry())

    def _status_key(self) -> tuple[Any, ...]:
        s = self._service_stats
        job = s.get("update") or {}
        return (
            s.get("mode"), s.get("intel_version"), str(s.get("leds")), self.problem,
            job.get("id"), job.get("state"),
        )  # fmt: skip

    def _status_state(self) -> str:
        return "ready" if self._ready else "init"

    def _status(self, state: str) -> dict[str, Any]:
        s = self._service_stats
        return {
            "state": state,
            "bd_seq": self._bd_seq,
            "device": self.config.device.id,
            "site": self.config.device.site,
            "version": self.version,
            "mode": s.get("mode", self.config.inline.mode),
            "uptime": int(time.monotonic() - self._started_mono),
            "intel_version": s.get("intel_version", ""),
            "leds": s.get("leds"),
            "update": s.get("update") or {},  # the latest firmware update job
            "link": {"problem": self.problem, "since": self.since},
            "ts": self.clock(),
        }

    def _publish_status(self, state: str, done: Callable[[Any], None] | None = None) -> bool:
        self._last_status = self._status_key()
        data = json.dumps(self._status(state), separators=(",", ":"), default=str).encode()
        return self._publish(self.topic("status"), data, retain=True, done=done) is not None

    def _publish_summaries(self) -> None:
        for rep in list(self.report.pending):
            day = str(rep.get("day"))
            if day in self._summaries_inflight:
                continue
            self._summaries_inflight.add(day)
            body = dict(rep, device=self.config.device.id, site=self.config.device.site)
            data = json.dumps(body, separators=(",", ":")).encode()

            def done(rc: Any, day: str = day) -> None:
                self._summaries_inflight.discard(day)
                if not _failed(rc):
                    self.report.sent(day)

            if self._publish(self.topic("summary"), data, done=done) is None:
                self._summaries_inflight.discard(day)
