"""Roles at the broker, against a real mosquitto with the generated config: consumer and
operator identities, the client id bound to the certificate CN, revocation by CRL, renewal."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from hub import provisioning as prov
from hub.renewal import RenewalService
from tests.integration.hublink.hubkit import PKI, Broker, Client, wait_for


@pytest.fixture(scope="module")
def rpki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca_dir = tmp_path_factory.mktemp("rpki") / "ca"
    prov.create_ca(ca_dir)
    for dev, site in (("dev1", "siteA"), ("dev2", "siteA"), ("dev3", "siteB")):
        prov.issue_device(ca_dir, dev, site)
    prov.issue_hub(ca_dir, "collector-1", role="consumer")
    prov.issue_hub(ca_dir, "ops", role="operator")
    return PKI(ca_dir)


class BoundBroker(Broker):
    def __init__(self, pki: PKI, conf_dir: Path) -> None:
        super().__init__(pki, conf_dir)
        self.settings = prov.BrokerSettings(
            conf_dir=conf_dir, port=self.port, bind="127.0.0.1", user="root", bind_client_id=True
        )
        self.conf = prov.write_broker_conf(pki.ca_dir, self.settings, ["127.0.0.1"])


@pytest.fixture
def bbroker(rpki: PKI, tmp_path: Path) -> Iterator[BoundBroker]:
    b = BoundBroker(rpki, tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def ident(pki: PKI, name: str) -> tuple[Path, Path]:
    d = pki.ca_dir / ("devices" if name.startswith("dev") else "hubs") / name
    stem = "device" if name.startswith("dev") else "hub"
    return d / f"{stem}.pem", d / f"{stem}.key"


def connect(broker: Broker, pki: PKI, name: str, client_id: str = "") -> Client:
    cert, key = ident(pki, name)
    return Client(broker, cert, key, client_id=client_id or name)


def test_consumer_reads_reports_but_cannot_publish_commands(
    bbroker: BoundBroker, rpki: PKI
) -> None:
    consumer = connect(bbroker, rpki, "collector-1")
    consumer.subscribe("$share/g/watchpost/v1/+/+/alerts", "watchpost/v1/+/+/status")
    ops = connect(bbroker, rpki, "ops")
    dev = connect(bbroker, rpki, "dev1")
    try:
        assert not dev.publish("watchpost/v1/siteA/dev1/alerts", b"{}").is_failure
        wait_for(lambda: consumer.on("/dev1/alerts"), what="the consumer gets alerts")
        for t in ("watchpost/v1/siteA/dev1/cmd", "watchpost/v1/siteA/dev1/config/desired",
                  "watchpost/v1/siteA/dev1/alerts"):  # fmt: skip
            rc = consumer.publish(t, b"{}")
            assert rc.is_failure and rc.value == 0x87, (t, rc)  # Not authorized
        # The operator writes commands and desired configs, not device reports.
        assert not ops.publish("watchpost/v1/siteA/dev1/cmd", b"{}").is_failure
        assert not ops.publish("watchpost/v1/siteA/dev1/config/desired", b"").is_failure
        assert ops.publish("watchpost/v1/siteA/dev1/alerts", b"{}").is_failure
        # A consumer cannot read commands.
        consumer.subscribe("watchpost/v1/+/+/cmd")
        ops.publish("watchpost/v1/siteA/dev1/cmd", b'{"x": 1}')
        dev.publish("watchpost/v1/siteA/dev1/alerts", b"{}")
        wait_for(lambda: len(consumer.on("/dev1/alerts")) >= 2, what="second alert")
        assert consumer.on("/dev1/cmd") == []
    finally:
        for c in (consumer, ops, dev):
            c.close()


def test_another_devices_certificate_cannot_take_its_session(
    bbroker: BoundBroker, rpki: PKI
) -> None:
    victim = connect(bbroker, rpki, "dev1")
    dropped = threading.Event()
    victim.c.on_disconnect = lambda *a: dropped.set()
    collector = connect(bbroker, rpki, "collector-1")
    cdropped = threading.Event()
    collector.c.on_disconnect = lambda *a: cdropped.set()
    # A stolen dev2 certificate, claiming dev1's and the collector's client ids.
    thief = connect(bbroker, rpki, "dev2", client_id="dev1")
    thief2 = None
    try:
        # The broker made the thief "dev2": it cannot write as dev1 either.
        assert thief.publish("watchpost/v1/siteA/dev1/alerts", b"{}").is_failure
        thief.close()
        thief2 = connect(bbroker, rpki, "dev2", client_id="collector-1")
        assert not dropped.wait(1.5) and not cdropped.is_set()
        assert not victim.publish("watchpost/v1/siteA/dev1/alerts", b"{}").is_failure
        assert not thief2.publish("watchpost/v1/siteA/dev2/alerts", b"{}").is_failure
    finally:
        for c in (victim, collector, thief2):
            if c is not None:
                c.close()


def _tls_refused(broker: Broker, pki: PKI, name: str) -> bool:
    cert, key = ident(pki, name)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca_dir / "ca.pem"), certfile=cert, keyfile=key)
    ok = threading.Event()
    c.on_connect = lambda *a: ok.set()
    try:
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        return not ok.wait(3)
    except (ssl.SSLError, OSError):
        return True
    finally:
        c.loop_stop()


def test_a_revoked_device_is_refused_by_the_broker(bbroker: BoundBroker, rpki: PKI) -> None:
    assert not _tls_refused(bbroker, rpki, "dev3")
    serials = prov.revoke(rpki.ca_dir, "dev3")
    prov.write_broker_conf(rpki.ca_dir, bbroker.settings, ["127.0.0.1"])
    crl = x509.load_pem_x509_crl((bbroker.settings.conf_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serials[0], 16)) is not None
    assert "dev3" not in (bbroker.settings.conf_dir / "acl").read_text()
    bbroker.stop()
    bbroker.start()
    assert _tls_refused(bbroker, rpki, "dev3")
    assert not _tls_refused(bbroker, rpki, "dev1")  # everyone else still gets in
    with pytest.raises(prov.ProvisionError, match="revoked"):
        prov.renew_csr(rpki.ca_dir, _csr("dev3"), "dev3", "siteB")


def _csr(cn: str, key: Any = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_renewal_by_csr_gives_a_certificate_the_broker_accepts(
    bbroker: BoundBroker, rpki: PKI, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for bad, cn, site, msg in ((b"junk", "dev1", "siteA", "not a PEM"),
                               (_csr("dev2", key), "dev1", "siteA", "exactly 'dev1'"),
                               (_csr("dev1", key), "dev1", "siteB", "not enrolled")):  # fmt: skip
        with pytest.raises(prov.ProvisionError, match=msg):
            prov.renew_csr(rpki.ca_dir, bad, cn, site)
    pem = prov.renew_csr(rpki.ca_dir, _csr("dev1", key), "dev1", "siteA", days=30)
    cert = x509.load_pem_x509_certificate(pem)
    assert prov.needs_renewal(_write(tmp_path / "new.pem", pem), before_days=31)
    assert not prov.needs_renewal(tmp_path / "new.pem", before_days=29)
    reg = prov.registry(rpki.ca_dir)["devices"]["dev1"]
    assert reg["serial"] == format(cert.serial_number, "x") and reg["previous_serials"]
    key_path = _write(tmp_path / "new.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    c = Client(bbroker, tmp_path / "new.pem", key_path, client_id="dev1")
    c.close()


def test_renewal_over_mqtt_signed_by_the_operator_side(bbroker: BoundBroker, rpki: PKI) -> None:
    cert, key = ident(rpki, "ops")
    svc = RenewalService("127.0.0.1", bbroker.port, str(rpki.ca_dir / "ca.pem"), str(cert),
                         str(key), rpki.ca_dir, days=60)  # fmt: skip
    assert svc.ready.wait(10)
    dev = connect(bbroker, rpki, "dev1")
    thief = connect(bbroker, rpki, "dev2")
    try:
        dev.subscribe("watchpost/v1/siteA/dev1/cert/issued")
        thief.subscribe("watchpost/v1/siteA/dev2/cert/issued")
        new_key = ec.generate_private_key(ec.SECP256R1())
        assert not dev.publish("watchpost/v1/siteA/dev1/cert/csr", _csr("dev1", new_key)).is_failure
        (ans,) = wait_for(lambda: dev.json_on("/dev1/cert/issued"), what="the renewed cert")
        assert ans["ok"] is True
        got = x509.load_pem_x509_certificate(ans["cert"].encode())
        assert got.subject.rfc4514_string() == "CN=dev1"
        assert got.public_key().public_numbers() == new_key.public_key().public_numbers()
        # dev2 asking, on its own topic, for a certificate in dev1's name: refused.
        thief.publish("watchpost/v1/siteA/dev2/cert/csr", _csr("dev1"))
        (no,) = wait_for(lambda: thief.json_on("/dev2/cert/issued"), what="the refusal")
        assert no["ok"] is False and "exactly 'dev2'" in no["error"]
        # and it cannot even write a CSR under dev1's topic
        assert thief.publish("watchpost/v1/siteA/dev1/cert/csr", _csr("dev1")).is_failure
    finally:
        dev.close()
        thief.close()
        svc.close()


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p
