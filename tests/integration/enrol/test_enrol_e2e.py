"""First boot end to end: real mosquitto over TLS with the enrolment listener, the hub's enrol
service, and the real `watchpost enrol` command on a fresh state directory with the bundle on a
fake boot partition. The device's key is made by the device; the hub never sees it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from appliance.enrol import setupcode, state
from hub import enrol as hub_enrol
from hub import provisioning as prov
from hub.operator import Connection, Settings
from protocol import enrol as wire
from protocol.envelope import generate_keypair
from tests.integration.hublink.hubkit import Client, free_port, wait_for

REPO = Path(__file__).resolve().parents[3]
WATCHPOST = REPO / ".venv/bin/watchpost"
SHIPPED_CONFIG = REPO / "image-build/overlay/etc/watchpost/watchpost.toml"

if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)


@dataclass
class Hub:
    ca_dir: Path
    conf_dir: Path
    port: int
    enrol_port: int
    proc: subprocess.Popen[bytes]
    command_pub: str

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # mosquitto rereads the ACL and password file in its loop

    def ident(self, name: str) -> tuple[Path, Path]:
        d = self.ca_dir / "hubs" / name
        return d / "hub.pem", d / "hub.key"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    ca_dir = tmp_path / "ca"
    prov.create_ca(ca_dir)
    prov.issue_hub(ca_dir, "hub")
    conf_dir = tmp_path / "broker"
    port, enrol_port = free_port(), free_port()
    settings = prov.BrokerSettings(
        conf_dir=conf_dir, port=port, bind="127.0.0.1", user="root", enrol_port=enrol_port
    )
    conf = prov.write_broker_conf(ca_dir, settings, ["127.0.0.1", "localhost"])
    log = open(conf_dir / "mosquitto.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    for p in (port, enrol_port):
        while True:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    conf_dir / "mosquitto.log"
                ).read_text()
                time.sleep(0.05)
    _priv, pub = generate_keypair()
    h = Hub(ca_dir, conf_dir, port, enrol_port, proc, pub.decode())
    yield h
    proc.terminate()
    proc.wait(10)
    log.close()


class EnrolService:
    """`hub.enrol.Server` on the hub identity, stepping in a thread."""

    def __init__(self, hub: Hub) -> None:
        cert, key = hub.ident("hub")
        s = Settings(host="127.0.0.1", port=hub.port, ca=str(hub.ca_dir / "ca.pem"))
        s = Settings(**{**s.__dict__, "cert": str(cert), "key": str(key)})
        self.conn = Connection(s, client_id="hub-enrol-test")
        self.server = hub_enrol.Server(self.conn, hub.ca_dir, hub.conf_dir, hub.reload)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.server.step(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.conn.close()


@pytest.fixture
def service(hub: Hub) -> Iterator[EnrolService]:
    svc = EnrolService(hub)
    yield svc
    svc.close()


@dataclass
class Device:
    root: Path
    boot: Path
    etc: Path
    state: Path
    console: Path

    @property
    def bundle(self) -> Path:
        return self.boot / "watchpost-enrol.toml"

    def enrol(self, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(WATCHPOST),
                "enrol",
                "--config",
                str(self.etc / "watchpost.toml"),
                "--boot-dir",
                str(self.boot),
                "--state-dir",
                str(self.state),
                "--console",
                str(self.console),
                "--unit-dropin",
                str(self.root / "hub.conf"),
                "--timeout",
                str(timeout),
            ],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )


def new_device(tmp_path: Path, name: str = "dev") -> Device:
    root = tmp_path / name
    d = Device(root, root / "boot/firmware", root / "etc/watchpost", root / "state", root / "tty")
    for p in (d.boot, d.etc, d.state):
        p.mkdir(parents=True)
    d.console.write_text("")
    # The image's shipped config, with this test's state directory.
    text = SHIPPED_CONFIG.read_text().replace("/var/lib/watchpost", str(d.state))
    (d.etc / "watchpost.toml").write_text(text)
    return d


def make_bundle(hub: Hub, device: Device, dev_id: str = "wp-0042", site: str = "siteA") -> str:
    tok = hub_enrol.create_token(hub.ca_dir, dev_id, site, hours=1)
    text = hub_enrol.bundle_text(
        tok,
        "127.0.0.1",
        (hub.ca_dir / "ca.pem").read_text(),
        hub.command_pub,
        hub_port=hub.port,
        enrol_port=hub.enrol_port,
    )
    device.bundle.write_text(text)
    hub_enrol.write_broker_files(hub.ca_dir, hub.conf_dir, "sites")
    hub.reload()
    return tok.token


def client(hub: Hub, cert: Path, key: Path, client_id: str) -> Client:
    """hubkit's test client on this broker's certificate listener."""
    broker = SimpleNamespace(pki=SimpleNamespace(ca_dir=hub.ca_dir), port=hub.port)
    return Client(broker, cert, key, client_id=client_id)  # type: ignore[arg-type]


def files_under(*dirs: Path) -> Iterator[bytes]:
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file():
                yield p.read_bytes()


def test_first_boot_enrolment(tmp_path: Path, hub: Hub, service: EnrolService) -> None:
    cert, key = hub.ident("hub")
    spy = client(hub, cert, key, "spy")
    spy.subscribe("watchpost/v1/#")
    dev = new_device(tmp_path)
    token = make_bundle(hub, dev)

    r = dev.enrol()
    assert r.returncode == 0, r.stderr
    assert "enrol: enrolled as wp-0042 at siteA with hub 127.0.0.1" in r.stderr

    # The key was made on the device and stays there, 0600.
    key_path = dev.etc / "device.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    device_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    device_cert = x509.load_pem_x509_certificate((dev.etc / "device.pem").read_bytes())
    assert device_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wp-0042"
    assert device_cert.public_key() == device_key.public_key()
    # The config now names the device and its hub, and still passes check-config.
    cfg = tomllib.loads((dev.etc / "watchpost.toml").read_text())
    assert cfg["device"]["id"] == "wp-0042" and cfg["device"]["site"] == "siteA"
    assert cfg["hub"]["enabled"] is True and cfg["hub"]["host"] == "127.0.0.1"
    assert cfg["hub"]["port"] == hub.port and cfg["hub"]["key"] == str(key_path)
    assert cfg["inline"]["uplink"] == "auto"  # the rest of the shipped config is kept
    ok = subprocess.run(
        [str(WATCHPOST), "check-config", str(dev.etc / "watchpost.toml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    # The daemon's unit may reach the hub: its own list allows loopback and the private ranges,
    # so this hub (127.0.0.1) needs no drop-in; only public addresses go there (never "any").
    assert not (dev.root / "hub.conf").exists()
    seen = json.loads((dev.state / "hub-addresses.json").read_text())
    assert seen["found"] == ["127.0.0.1"] and seen["addresses"] == []
    assert seen["refused"][0]["why"].startswith("not a public address")
    # The token is gone from the boot partition; the stamp stops the unit from running again.
    assert token not in dev.bundle.read_text() and 'token = ""' in dev.bundle.read_text()
    assert state.enrolled(dev.state) and state.problem(dev.state) is None
    # The setup code: on the console, in the log, on the hub's sheet; only its hash on disk.
    code = dev.console.read_text().split("setup code ")[1].split()[0]
    assert setupcode.check(dev.state, code)
    assert f"status page setup code: {code}" in r.stderr
    sheet = (hub.ca_dir / "enrolled/wp-0042.json").read_text()
    assert f'"setup_code": "{code}"' in sheet
    assert code.replace("-", "") not in (dev.state / setupcode.FILE).read_text()
    again = dev.enrol()
    assert again.returncode == 0 and "already enrolled" in again.stderr

    # The device connects with its own key; its status closes the token at the hub.
    own = client(hub, dev.etc / "device.pem", key_path, "wp-0042")
    rc = own.publish("watchpost/v1/siteA/wp-0042/status", b'{"state": "ready"}', retain=True)
    assert not rc.is_failure, rc
    tid = wire.token_id(token)
    wait_for(
        lambda: prov.registry(hub.ca_dir)["enrol"][tid]["state"] == "done",
        what="the token closed after the device's own status",
    )
    wait_for(lambda: "enrol-" not in (hub.conf_dir / "enrol.passwd").read_text(), what="passwd")
    own.close()

    # The hub never saw the private key: not in any message, nor in any hub or broker file.
    spy.close()
    der = device_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = device_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    scalar = device_key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    seen = [m.payload for m in spy.messages]
    assert any(b'"csr"' in p for p in seen), "the spy saw the enrolment request"
    for blob in [*seen, *files_under(hub.ca_dir, hub.conf_dir)]:
        assert pem not in blob and der not in blob and scalar not in blob
        assert scalar.hex().encode() not in blob

    # The used bundle cannot enrol a second device (a copied SD card).
    copy = new_device(tmp_path, "copy")
    original = dev.bundle.read_text().replace('token = ""', f'token = "{token}"')
    copy.bundle.write_text(original)
    r2 = copy.enrol(timeout=5)
    assert r2.returncode == 1, r2.stderr  # the unit retries: the operator may not have reloaded
    assert "the hub refused the enrolment token (wrong, already used or expired)" in r2.stderr


def status_reason(dev: Device) -> str:
    st = state.read_status(dev.state)
    assert st is not None and st["state"] == "failed"
    problem = state.problem(dev.state)
    assert problem == f"not enrolled with the hub: {st['reason']}"
    return str(st["reason"])


def test_bad_and_partial_bundles(tmp_path: Path, hub: Hub) -> None:
    dev = new_device(tmp_path)
    r = dev.enrol(timeout=2)
    assert r.returncode == 3
    assert "error: not enrolled: bad enrolment bundle: no enrolment bundle" in r.stderr
    assert status_reason(dev).startswith("bad enrolment bundle: no enrolment bundle")
    make_bundle(hub, dev)
    full = dev.bundle.read_text()
    dev.bundle.write_text(full[: len(full) // 3])  # the SD card was pulled while writing
    r = dev.enrol(timeout=2)
    assert r.returncode == 3 and "not valid TOML" in r.stderr
    dev.bundle.write_text(full.replace("hub_port = ", "hub_port = -").replace('site = "siteA"', ""))
    r = dev.enrol(timeout=2)
    assert r.returncode == 3
    assert "watchpost-enrol.toml: site: missing" in r.stderr
    assert "watchpost-enrol.toml: hub_port: expected an integer 1-65535" in r.stderr
    assert not (dev.etc / "device.pem").exists() and not state.enrolled(dev.state)


def test_wrong_token_and_wrong_device(tmp_path: Path, hub: Hub, service: EnrolService) -> None:
    dev = new_device(tmp_path)
    token = make_bundle(hub, dev)
    good = dev.bundle.read_text()
    dev.bundle.write_text(good.replace(token, "A" * 43))
    r = dev.enrol(timeout=5)
    assert r.returncode == 1
    assert "the hub refused the enrolment token (wrong, already used or expired)" in r.stderr
    # The right token, but the bundle was edited to claim another device id.
    dev.bundle.write_text(good.replace('device_id = "wp-0042"', 'device_id = "wp-0099"'))
    r = dev.enrol(timeout=10)
    assert r.returncode == 1
    assert (
        "the hub refused the enrolment: the token is for wp-0042 at siteA, the request is for "
        "wp-0099 at siteA" in status_reason(dev)
    )
    assert "wp-0099" not in prov.registry(hub.ca_dir)["devices"]
    # Put right, the same device enrols with the same key it made on the first try.
    key_before = (dev.etc / "device.key").read_bytes()
    dev.bundle.write_text(good)
    r = dev.enrol(timeout=10)
    assert r.returncode == 0, r.stderr
    assert (dev.etc / "device.key").read_bytes() == key_before


def test_hub_silent_unreachable_or_not_ours(tmp_path: Path, hub: Hub) -> None:
    dev = new_device(tmp_path)
    make_bundle(hub, dev)  # no enrol service runs: the broker takes the request, nobody answers
    r = dev.enrol(timeout=2)
    assert r.returncode == 1
    assert status_reason(dev) == f"the hub at 127.0.0.1:{hub.enrol_port} did not answer within 2 s"
    good = dev.bundle.read_text()
    closed = free_port()
    dev.bundle.write_text(good.replace(f"enrol_port = {hub.enrol_port}", f"enrol_port = {closed}"))
    r = dev.enrol(timeout=2)
    assert r.returncode == 1
    assert status_reason(dev).startswith(f"cannot reach the hub at 127.0.0.1:{closed}")
    other = tmp_path / "other-ca"
    prov.create_ca(other)
    wrong_ca = good.split('hub_ca = """')[1].split('"""')[0]
    dev.bundle.write_text(good.replace(wrong_ca, (other / "ca.pem").read_text()))
    r = dev.enrol(timeout=2)
    assert r.returncode == 1
    assert status_reason(dev).startswith(
        f"the hub at 127.0.0.1:{hub.enrol_port} is not the one of the bundle (TLS:"
    )
    assert not state.enrolled(dev.state)


def test_token_user_is_confined_to_its_topics(tmp_path: Path, hub: Hub) -> None:
    """The ACL: the token's user may write its request and read its result, nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    dev = new_device(tmp_path)
    token = make_bundle(hub, dev)
    tid = wire.token_id(token)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(hub.ca_dir / "ca.pem"))
    c.username_pw_set(wire.username(tid), token)
    acks: dict[int, object] = {}
    subs: dict[int, list[object]] = {}
    c.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc)
    c.on_subscribe = lambda _c, _u, mid, rcs, _p: subs.__setitem__(mid, rcs)
    c.connect("127.0.0.1", hub.enrol_port)
    c.loop_start()
    try:
        results = {}
        for topic in (
            wire.request_topic(tid),
            wire.request_topic("0123456789abcdef"),
            "watchpost/v1/siteA/wp-0042/status",
        ):
            info = c.publish(topic, b"{}", qos=1)
            results[topic] = wait_for(lambda i=info: acks.get(i.mid), what=f"PUBACK {topic}")
        assert not results[wire.request_topic(tid)].is_failure  # type: ignore[attr-defined]
        assert results[wire.request_topic("0123456789abcdef")].value == 0x87  # type: ignore[attr-defined]
        assert results["watchpost/v1/siteA/wp-0042/status"].value == 0x87  # type: ignore[attr-defined]
        # mosquitto grants wildcard subscriptions and filters each delivery by the ACL.
        got: list[str] = []
        c.on_message = lambda _c, _u, msg: got.append(msg.topic)
        _rc, mid = c.subscribe([("watchpost/v1/#", 1)])
        wait_for(lambda: subs.get(mid), what="SUBACK")
        cert, key = hub.ident("hub")
        op = client(hub, cert, key, "operator")
        for topic in (
            "watchpost/v1/siteA/wp-0042/cmd",
            wire.result_topic("0123456789abcdef"),
            wire.result_topic(tid),
        ):
            assert not op.publish(topic, b"{}").is_failure
        op.close()
        wait_for(lambda: got, what="the token's own result")
        time.sleep(0.3)
        assert got == [wire.result_topic(tid)]
    finally:
        c.disconnect()
        c.loop_stop()
