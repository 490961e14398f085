"""Hub link: detection-to-hub latency and sustained outbox throughput over local TLS.

A real mosquitto on 127.0.0.1 with the project's own provisioning (CA, certificates, ACL), a hub
subscriber (paho, hub identity) and the device side in this process: AlertPipeline -> SQLite
outbox (fsync per alert) -> HubLink. Baseline, side by side in the same run: plain paho QoS 1
publishes of the same EVE-JSON records with the same device certificate, no outbox.

- ``alert_to_hub_p99_ms``: from the pipeline call (the detector's finding) to the subscriber's
  on_message, alerts 20 ms apart (goal <= 1000 ms); ``paho_to_hub_p99_ms`` the baseline.
- ``outbox_alerts_per_s``: alerts pushed as fast as possible, counted until the last one reached
  the subscriber and the outbox is empty; ``paho_alerts_per_s`` the baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from appliance.alerts.model import Alert, Signature
from appliance.alerts.pipeline import AlertPipeline
from appliance.config import from_dict
from appliance.hublink.link import HubLink
from hub import provisioning as prov
from hub.tls import client_context

SIG = Signature(9_200_001, "bench finding", "Test", 2)
TOPIC = "watchpost/v1/bench/dev1/alerts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mosquitto(ca: Path, conf_dir: Path, log: IO[bytes] | int = subprocess.DEVNULL,
              **settings: Any) -> Iterator[tuple[subprocess.Popen[bytes], int]]:  # fmt: skip
    """mosquitto as the project provisions it (CA, TLS listener, per-site ACL) on a free
    loopback port; yields (process, port) once it accepts connections, stops it after."""
    port = _free_port()
    conf = prov.write_broker_conf(ca, prov.BrokerSettings(
        conf_dir=conf_dir, port=port, bind="127.0.0.1",
        user="root" if os.geteuid() == 0 else "mosquitto", **settings,
    ), ["127.0.0.1"])  # fmt: skip
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 2) if v else float("nan")


class _Subscriber:
    """The hub side: arrival time (perf_counter) per alert id."""

    def __init__(self, port: int, ca_dir: Path) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-hub", protocol=mqtt.MQTTv5
        )
        h = ca_dir / "hubs" / "hub"
        self.c.tls_set_context(
            client_context(str(h / "ca.pem"), str(h / "hub.pem"), str(h / "hub.key"))
        )
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe(TOPIC, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench hub subscriber could not subscribe")

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        ident = json.loads(msg.payload)["watchpost"]["id"]
        with self.lock:
            self.arrived.setdefault(ident, t)

    def wait(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if ids <= self.arrived.keys():
                    return True
            time.sleep(0.002)
        return False

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _device_client(port: int, ca_dir: Path) -> mqtt.Client:
    d = ca_dir / "devices" / "dev1"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-plain", protocol=mqtt.MQTTv5)
    c.tls_set_context(
        client_context(str(d / "ca.pem"), str(d / "device.pem"), str(d / "device.key"))
    )
    c.max_inflight_messages_set(100)
    up = threading.Event()
    c.on_connect = lambda *a: up.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not up.wait(10):
        raise RuntimeError("bench device client could not connect")
    return c


def _eve(i: int) -> dict[str, Any]:
    dst = f"198.18.{(i // 250) % 250}.{i % 200 + 1}"
    a = Alert("bench", SIG, time.time(), f"198.51.100.{i % 250 + 1}", dst, "TCP", dest_port=22)
    a.id = f"plain-{i}-{time.monotonic_ns()}"
    a.device, a.site = "dev1", "bench"
    eve = a.to_eve()
    eve["watchpost"]["seq"] = i + 1
    return eve


def run(quick: bool) -> dict[str, Any]:
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed")
    n_lat = 100 if quick else 400
    n_tput = 500 if quick else 3000
    tmp = Path(tempfile.mkdtemp(prefix="wp-bench-hub-"))
    try:
        ca = tmp / "ca"
        prov.create_ca(ca)
        prov.issue_device(ca, "dev1", "bench")
        prov.issue_hub(ca, "hub")
        with mosquitto(ca, tmp / "broker") as (_proc, port):
            return _run(ca, port, tmp, n_lat, n_tput)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(ca: Path, port: int, tmp: Path, n_lat: int, n_tput: int) -> dict[str, Any]:
    hub = _Subscriber(port, ca)
    out: dict[str, Any] = {}

    # -- baseline: plain paho QoS 1 publishes --------------------------------------------
    plain = _device_client(port, ca)
    lat: list[float] = []
    for i in range(n_lat):
        eve = _eve(i)
        t0 = time.perf_counter()
        plain.publish(TOPIC, json.dumps(eve, separators=(",", ":")), qos=1)
        if not hub.wait({eve["watchpost"]["id"]}, 10):
            raise RuntimeError("baseline alert did not arrive")
        lat.append((hub.arrived[eve["watchpost"]["id"]] - t0) * 1000)
        time.sleep(0.02)
    out["paho_to_hub_p50_ms"] = _pct(lat, 0.50)
    out["paho_to_hub_p99_ms"] = _pct(lat, 0.99)
    batch = [_eve(n_lat + i) for i in range(n_tput)]
    t0 = time.perf_counter()
    for eve in batch:
        plain.publish(TOPIC, json.dumps(eve, separators=(",", ":")), qos=1)
    if not hub.wait({e["watchpost"]["id"] for e in batch}, 60):
        raise RuntimeError("baseline burst did not arrive")
    out["paho_alerts_per_s"] = round(n_tput / (time.perf_counter() - t0), 1)
    plain.disconnect()
    plain.loop_stop()

    # -- the device: pipeline -> outbox -> link ------------------------------------------
    d = ca / "devices" / "dev1"
    config = from_dict({
        "device": {"id": "dev1", "site": "bench", "state_dir": str(tmp / "state")},
        "inline": {"home_nets": ["198.18.0.0/15"]},
        "alerts": {"rate_per_minute": 100_000, "burst": 100_000},
        "hub": {"host": "127.0.0.1", "port": port, "ca": str(d / "ca.pem"),
                "cert": str(d / "device.pem"), "key": str(d / "device.key"),
                "outbox": str(tmp / "state" / "outbox.sqlite")},
    })  # fmt: skip
    link = HubLink(config)
    ids: list[str] = []
    pipeline = AlertPipeline(config, [lambda e: ids.append(e["watchpost"]["id"])],
                             journal=link.journal)  # fmt: skip
    link.start()
    deadline = time.monotonic() + 15
    while link.stats()["hub_state"] != "up":
        if time.monotonic() > deadline:
            raise RuntimeError(f"hub link did not come up: {link.stats()['hub_problem']}")
        time.sleep(0.02)
    k = 0

    def alert() -> None:
        nonlocal k
        k += 1
        pipeline(Alert("bench", SIG, time.time(), f"198.51.100.{k % 250 + 1}",
                       f"198.19.{(k // 250) % 250}.{k % 200 + 1}", "TCP",
                       src_port=40000, dest_port=22))  # fmt: skip

    lat = []
    for _ in range(n_lat):
        t0 = time.perf_counter()
        alert()
        if not hub.wait({ids[-1]}, 10):
            raise RuntimeError("alert did not reach the hub")
        lat.append((hub.arrived[ids[-1]] - t0) * 1000)
        time.sleep(0.02)
    out["alert_to_hub_p50_ms"] = _pct(lat, 0.50)
    out["alert_to_hub_p99_ms"] = _pct(lat, 0.99)
    out["alert_to_hub_goal_ms"] = 1000
    first = len(ids)
    t0 = time.perf_counter()
    for _ in range(n_tput):
        alert()
    record_s = time.perf_counter() - t0
    if not hub.wait(set(ids[first:]), 120):
        raise RuntimeError("outbox burst did not arrive")
    while link.outbox is not None and link.outbox.depth() > 0:
        if time.perf_counter() - t0 > 120:
            raise RuntimeError("outbox did not drain")
        time.sleep(0.005)
    out["outbox_alerts_per_s"] = round(n_tput / (time.perf_counter() - t0), 1)
    out["outbox_record_per_s"] = round(n_tput / record_s, 1)
    out["outbox_vs_paho"] = round(out["outbox_alerts_per_s"] / out["paho_alerts_per_s"], 3)
    link.close()
    hub.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(os.environ.get("BENCH_QUICK") == "1"), indent=1), file=sys.stdout)
