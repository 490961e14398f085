"""What the hub hears besides alerts: the daily summary and the machine's own vital signs.

The daily summary is the report a member office gets (as Police CyberAlarm sends): who attacked
most, which ports were targeted, how much was blocked versus allowed, and what each detector
found. Its tallies are kept in a small JSON file in the state directory (saved every minute and
at a clean stop), so a restart in the middle of the day does not reset them; a ``kill -9`` loses
at most the last minute of tallies. Finished reports wait in the same file until the broker
acknowledges them.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.alerts import tally
from appliance.alerts.model import service_port
from protocol.files import atomic_write

log = logging.getLogger(__name__)


MAX_KEYS = 5000  # per tally: a scan from thousands of sources must not grow the file unbounded
MAX_PENDING = 14  # finished reports kept while the hub is unreachable
# Cumulative counters of the daemon's stats (appliance.service.Service.stats) whose daily change
# goes into the report: traffic seen, passed and blocked, and what the kernel let through.
TRAFFIC_COUNTERS = (
    "packets",
    "decoded",
    "malformed",
    "verdicts_pass",
    "verdicts_block",
    "blocked_packets",
    "queued_by_kernel",
    "queue_dropped",
    "fail_open_events",
)


def traffic_counters(stats: Mapping[str, Any]) -> dict[str, float]:
    """The cumulative traffic counters among a service's stats (see TRAFFIC_COUNTERS)."""
    out = {}
    for key in TRAFFIC_COUNTERS:
        value = stats.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def local_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts))


class DailyReport:
    """Tallies of the day's alerts and traffic; thread-safe (alerts arrive from the pipeline,
    the roll-over runs in the daemon's tick)."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._dirty = False
        self.pending: list[dict[str, Any]] = []
        # Loaded from a previous process: its counters started again from zero.
        self._restarted = False
        self._reset(self.clock())
        self._load()

    def _reset(self, now: float) -> None:
        self.day = local_day(now)
        self.started = now
        self.alerts = 0
        self.tallies = tally.new_tallies()
        # Traffic counters: value at day start (or after a restart), carried-over deltas.
        self.base: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.carry: dict[str, float] = {}

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("daily report state %s unreadable (%s); starting afresh", self.path, e)
            return
        try:
            self.pending = list(data.get("pending", []))[-MAX_PENDING:]
            if data.get("day"):
                self.day = str(data["day"])
                self.started = float(data["started"])
                self.alerts = int(data["alerts"])
                for k, v in data.get("tallies", {}).items():
                    if k in self.tallies:
                        self.tallies[k] = Counter({str(a): int(b) for a, b in v.items()})
                self.base = {k: float(v) for k, v in data.get("base", {}).items()}
                self.last = {k: float(v) for k, v in data.get("last", {}).items()}
                self.carry = {k: float(v) for k, v in data.get("carry", {}).items()}
                self._restarted = True
        except (TypeError, ValueError, AttributeError) as e:
            log.warning("daily report state %s malformed (%s); starting afresh", self.path, e)
            self._reset(self.clock())

    def add(self, eve: Mapping[str, Any]) -> None:
        """Count one alert (its `count` occurrences)."""
        wp = eve.get("watchpost", {})
        n = int(wp.get("count", 1) or 1)
        alert = eve.get("alert", {})
        port = service_port(eve)
        with self._lock:
            self.alerts += n
            t = self.tallies
            tally.count(
                t,
                n,
                action=str(alert.get("action", "allowed")),
                detector=str(wp.get("detector", "?")),
                severity=str(alert.get("severity", 3)),
                signature=f"{alert.get('signature_id', 0)} {alert.get('signature', '')}",
                source=str(eve.get("src_ip", "?")),
                port=f"{eve.get('proto', '?')}/{port}" if port is not None else "",
            )
            for c in t.values():
                if len(c) > MAX_KEYS:  # drop the smallest half: the top entries stay exact enough
                    for key, _ in c.most_common()[MAX_KEYS // 2 :]:
                        del c[key]
            self._dirty = True

    def observe(self, stats: Mapping[str, Any]) -> None:
        """Follow the service's traffic counters (a counter that went down was reset by a
        restart: what it had counted today is carried over)."""
        counters = traffic_counters(stats)
        with self._lock:
            if self._restarted:  # what the previous process counted today is carried over
                for key, prev in list(self.last.items()):
                    self.carry[key] = self.carry.get(key, 0.0) + prev - self.base.get(key, 0.0)
                    self.base[key] = self.last[key] = 0.0
                self._restarted = False
            for key, value in counters.items():
                if key not in self.base:
                    self.base[key] = value if key not in self.last else 0.0
                before = self.last.get(key)
                if before is not None and value < before:
                    self.carry[key] = self.carry.get(key, 0.0) + before - self.base[key]
                    self.base[key] = 0.0
                self.last[key] = value
            self._dirty = True

    def report(self, now: float | None = None) -> dict[str, Any]:
        """The day so far, as the hub gets it."""
        with self._lock:
            return self._report_locked(self.clock() if now is None else now)

    def _report_locked(self, now: float) -> dict[str, Any]:
        t = self.tallies
        traffic = {
            k: self.carry.get(k, 0.0) + self.last[k] - self.base.get(k, 0.0) for k in self.last
        }
        return {
            "day": self.day,
            "from": self.started,
            "to": now,
            "alerts": self.alerts,
            **tally.figures(t),
            "traffic": {k: int(v) if float(v).is_integer() else v for k, v in traffic.items()},
        }

    def roll(self, now: float | None = None) -> dict[str, Any] | None:
        """At the first call on a new local day: finish yesterday's report (queued in
        `pending`, returned) and start a new day."""
        now = self.clock() if now is None else now
        with self._lock:
            if local_day(now) == self.day:
                return None
            done = self._report_locked(now)
            last = dict(self.last)
            self._reset(now)
            self.base = last  # today's traffic counts from yesterday's last values
            self.last = dict(last)
            self.pending.append(done)
            del self.pending[:-MAX_PENDING]
            self._dirty = True
        self.save()
        return done

    def sent(self, day: str) -> None:
        """The broker acknowledged the report for `day`."""
        with self._lock:
            self.pending = [r for r in self.pending if r.get("day") != day]
            self._dirty = True
        self.save()

    def save(self, force: bool = False) -> None:
        with self._lock:
            if not (self._dirty or force):
                return
            data = {
                "day": self.day,
                "started": self.started,
                "alerts": self.alerts,
                "tallies": {k: dict(v) for k, v in self.tallies.items()},
                "base": self.base,
                "last": self.last,
                "carry": self.carry,
                "pending": self.pending,
            }
            self._dirty = False
        try:
            atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode(), 0o640)
        except OSError as e:
            log.warning("cannot save daily report state %s: %s", self.path, e)


class SystemMetrics:
    """CPU, memory and temperature from /proc and /sys (a Pi reports its SoC temperature in
    /sys/class/thermal; elsewhere the value is null)."""

    def __init__(self, proc: str = "/proc", sys_root: str = "/sys") -> None:
        self.proc = Path(proc)
        self.sys = Path(sys_root)
        self._cpu_prev: tuple[int, int] | None = None
        self._self_prev: tuple[float, float] | None = None

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            fields = (self.proc / "stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    def temperature_c(self) -> float | None:
        best = None
        for zone in sorted(self.sys.glob("class/thermal/thermal_zone*/temp")):
            try:
                value = int(zone.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
            best = value if best is None else max(best, value)
        return best

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        cpu = self._cpu_times()
        if cpu and self._cpu_prev:
            total, idle = cpu[0] - self._cpu_prev[0], cpu[1] - self._cpu_prev[1]
            out["cpu_percent"] = round(100.0 * (total - idle) / total, 1) if total > 0 else 0.0
        else:
            out["cpu_percent"] = None
        self._cpu_prev = cpu
        now = time.monotonic()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        used = ru.ru_utime + ru.ru_stime
        if self._self_prev:
            dt_ = now - self._self_prev[0]
            out["process_cpu_percent"] = (
                round(100.0 * (used - self._self_prev[1]) / dt_, 1) if dt_ > 0 else 0.0
            )
        else:
            out["process_cpu_percent"] = None
        self._self_prev = (now, used)
        try:
            mem = {}
            for line in (self.proc / "meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                mem[key] = int(rest.split()[0])
            total_kb, avail_kb = mem["MemTotal"], mem.get("MemAvailable", mem.get("MemFree", 0))
            out["mem_total_mb"] = round(total_kb / 1024, 1)
            out["mem_used_percent"] = round(100.0 * (total_kb - avail_kb) / total_kb, 1)
        except (OSError, KeyError, ValueError, ZeroDivisionError):
            out["mem_total_mb"] = out["mem_used_percent"] = None
        try:
            pages = int((self.proc / "self/statm").read_text().split()[1])
            out["rss_mb"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)
        except (OSError, ValueError, IndexError):
            out["rss_mb"] = None
        try:
            out["load1"] = round(os.getloadavg()[0], 2)
        except OSError:
            out["load1"] = None
        out["temperature_c"] = self.temperature_c()
        return out
