"""Hub test kit: a real mosquitto over TLS on 127.0.0.1, set up by hub.provisioning.

The PKI (one CA; devices dev1@siteA, dev2@siteB, dev3@siteA; the hub identity) is made once per
module; each test gets its own broker on a free port in a temporary directory (no systemd).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.config import Config, from_dict
from hub import provisioning as prov

REPO = Path(__file__).resolve().parents[3]
DEVPROC = Path(__file__).with_name("devproc.py")

if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `pred` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Ident:
    cert: Path
    key: Path
    ca: Path


@dataclass
class PKI:
    ca_dir: Path

    def device(self, name: str) -> Ident:
        d = self.ca_dir / "devices" / name
        return Ident(d / "device.pem", d / "device.key", d / "ca.pem")

    @property
    def hub(self) -> Ident:
        d = self.ca_dir / "hubs" / "hub"
        return Ident(d / "hub.pem", d / "hub.key", d / "ca.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca_dir = tmp_path_factory.mktemp("pki") / "ca"
    prov.create_ca(ca_dir)
    prov.issue_device(ca_dir, "dev1", "siteA")
    prov.issue_device(ca_dir, "dev2", "siteB")
    prov.issue_device(ca_dir, "dev3", "siteA")
    prov.issue_hub(ca_dir, "hub")
    return PKI(ca_dir)


class Broker:
    """mosquitto with the generated config; start/stop at will (persistence keeps retained)."""

    def __init__(self, pki: PKI, conf_dir: Path, acl_mode: str = "sites") -> None:
        self.pki = pki
        self.port = free_port()
        self.settings = prov.BrokerSettings(
            conf_dir=conf_dir, port=self.port, bind="127.0.0.1", user="root", acl_mode=acl_mode
        )
        self.conf = prov.write_broker_conf(pki.ca_dir, self.settings, ["127.0.0.1", "localhost"])
        self.log = conf_dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mosquitto did not start:\n{self.log.read_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def broker(pki: PKI, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(pki, tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Client:
    """A paho MQTT 5 client with one of the PKI's identities; collects what it receives."""

    def __init__(self, broker: Broker, cert: Path, key: Path, client_id: str = "") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, Any] = {}
        self.granted: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(broker.pki.ca_dir / "ca.pem"), certfile=cert, keyfile=key)
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        wait_for(self.connected.is_set, what="test client connected")

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.acks[mid] = rc

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], props: Any) -> None:
        with self._lock:
            self.granted[mid] = rcs

    def subscribe(self, *topics: str) -> None:
        _rc, mid = self.c.subscribe([(t, mqtt.SubscribeOptions(qos=1)) for t in topics])
        wait_for(lambda: mid in self.granted, what=f"SUBACK for {topics}")

    def publish(self, topic: str, payload: bytes | str, **kw: Any) -> Any:
        """Publish with QoS 1 and return the PUBACK reason code."""
        info = self.c.publish(topic, payload, qos=1, **kw)
        return wait_for(lambda: self.acks.get(info.mid), what=f"PUBACK on {topic}")

    def on(self, topic_suffix: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def json_on(self, topic_suffix: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(topic_suffix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def hub(broker: Broker, pki: PKI) -> Iterator[Client]:
    """The hub identity, subscribed to everything under watchpost/v1."""
    c = Client(broker, pki.hub.cert, pki.hub.key, client_id="hub-test")
    c.subscribe("watchpost/v1/#")
    yield c
    c.close()


def device_config(
    pki: PKI, broker: Broker, state: Path, device: str = "dev1", site: str = "siteA", **hub: Any
) -> Config:
    ident = pki.device(device)
    data: dict[str, Any] = {
        "device": {"id": device, "site": site, "state_dir": str(state)},
        "inline": {"home_nets": ["198.18.0.0/24"]},
        "alerts": {"rate_per_minute": 100_000, "burst": 100_000},
        "hub": {
            "host": "127.0.0.1",
            "port": broker.port,
            "ca": str(ident.ca),
            "cert": str(ident.cert),
            "key": str(ident.key),
            "outbox": str(state / "outbox.sqlite"),
            "keepalive": 5,
            **hub,
        },
    }
    return from_dict(data)


class DevProc:
    """tests/integration/hub/devproc.py: the pipeline + outbox + link in a process of its own,
    driven over stdin, so it can be killed with SIGKILL like the daemon."""

    def __init__(self, config_path: Path, wrap: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.wrap = wrap  # e.g. ("ip", "netns", "exec", NS): run it inside a lab namespace
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, str(DEVPROC), str(self.config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait_for(lambda: self.events("started"), what="device process started")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.lines if e["event"] == kind]

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def alerts(self, n: int, severity: int = 2) -> None:
        before = len(self.events("recorded"))
        self.send(f"alert {n} {severity}")
        wait_for(lambda: len(self.events("recorded")) >= before + n, what=f"{n} alerts recorded")

    def stats(self) -> dict[str, Any]:
        before = len(self.events("stats"))
        self.send("stats")
        return wait_for(lambda: self.events("stats")[before:], what="stats")[0]["stats"]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        with self._lock:
            self.lines = [e for e in self.lines if e["event"] == "recorded"]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.send("stop")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def devproc(tmp_path: Path) -> Iterator[Callable[[Config], DevProc]]:
    procs: list[DevProc] = []

    def make(config: Config) -> DevProc:
        path = tmp_path / f"device-{len(procs)}.toml"
        import tomli_w

        path.write_text(tomli_w.dumps(config.to_dict()))
        p = DevProc(path)
        procs.append(p)
        return p

    yield make
    for p in procs:
        if p.proc is not None:
            p.proc.kill()
            p.proc.wait()
