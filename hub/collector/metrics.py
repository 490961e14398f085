"""The collector's Prometheus metrics (`/metrics` on a small HTTP endpoint in its process).

Counters are this process's; the fleet gauges (devices by state, silent devices, open and
permanent seq gaps, per-device last-seen age, outbox depth and fail-open events) come from the
store, so every collector of a group shows the same fleet.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STATES = ("ready", "init", "disconnected", "lost", "unknown")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("hub_messages", "Messages consumed", ["kind"], registry=r)
        self.alerts_stored = Counter("hub_alerts_stored", "New alerts committed", registry=r)
        self.alerts_duplicate = Counter(
            "hub_alerts_duplicate", "Alerts received again (already stored)", registry=r
        )
        self.bad = Counter(
            "hub_bad_messages", "Messages quarantined, by reason", ["reason"], registry=r
        )
        self.gaps_opened = Counter("hub_seq_gaps_opened", "Seq gaps found", registry=r)
        self.store_errors = Counter("hub_store_errors", "Failed store commits", registry=r)
        self.hub_alerts = Counter("hub_alerts_raised", "Hub-side alerts", ["kind"], registry=r)
        self.commit_seconds = Histogram(
            "hub_commit_seconds", "Time to commit one batch", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.connected = Gauge("hub_collector_connected", "1 when connected", registry=r)
        self.devices = Gauge("hub_devices", "Devices by last reported state", ["state"], registry=r)
        self.silent = Gauge("hub_devices_silent", "Devices silent too long", registry=r)
        self.gaps = Gauge("hub_seq_gaps", "Missing seq ranges", ["permanent"], registry=r)
        self.last_seen = Gauge(
            "hub_device_last_seen_age_seconds", "Seconds since a device was heard",
            ["site", "device"], registry=r,
        )  # fmt: skip
        self.outbox = Gauge(
            "hub_device_outbox_depth", "Alerts waiting in the device's outbox",
            ["site", "device"], registry=r,
        )  # fmt: skip
        self.fail_open = Gauge(
            "hub_device_fail_open_events", "Packets the device passed uninspected",
            ["site", "device"], registry=r,
        )  # fmt: skip
        self._server: Any = None

    def refresh(self, store: Any, silent_after: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        counts = dict.fromkeys(STATES, 0)
        silent = 0
        for d in store.devices():
            state = d.get("state") if d.get("state") in STATES else "unknown"
            counts[state] += 1
            last = d.get("last_seen") or 0
            if now - last > silent_after:
                silent += 1
            labels = (d["site"], d["device"])
            self.last_seen.labels(*labels).set(round(now - last, 1))
            if d.get("outbox_depth") is not None:
                self.outbox.labels(*labels).set(d["outbox_depth"])
            if d.get("fail_open_events") is not None:
                self.fail_open.labels(*labels).set(d["fail_open_events"])
        for k, v in counts.items():
            self.devices.labels(k).set(v)
        self.silent.set(silent)
        gaps = store.gaps()
        self.gaps.labels("true").set(sum(1 for g in gaps if g["permanent"]))
        self.gaps.labels("false").set(sum(1 for g in gaps if not g["permanent"]))

    def serve(self, address: str) -> tuple[str, int]:
        """Start `/metrics` on HOST:PORT (port 0: any free one); the bound address."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), host or "127.0.0.1", self.registry)
        self._server = server
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
