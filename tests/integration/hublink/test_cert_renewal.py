"""Device certificate renewal end to end: the real hub link, a real mosquitto with the generated
config (roles, client id bound to the CN) and the hub's `renewals` service with an operator
identity. The device clock is moved forward so the renewal falls due; TLS still runs on the
real clock."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hubkit import PKI, Broker, Client, device_config, wait_for

from appliance.hublink.link import HubLink
from appliance.hublink.renewal import IDENTITY, identity_paths, make_csr
from appliance.leds import BLINK, ON, Leds
from appliance.status.present import overview
from hub import provisioning as prov
from hub.renewal import RenewalService

DAY = 86400.0
ROOT = "watchpost/v1/siteA/dev1"


@pytest.fixture
def rbroker(tmp_path: Path) -> Iterator[Broker]:
    ca_dir = tmp_path / "ca"
    prov.create_ca(ca_dir)
    prov.issue_device(ca_dir, "dev1", "siteA")
    prov.issue_hub(ca_dir, "hub")
    prov.issue_hub(ca_dir, "ops", role="operator")
    b = Broker(PKI(ca_dir), tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def test_the_device_renews_its_certificate_refuses_a_bad_answer_and_reconnects_with_the_new_one(
    rbroker: Broker, tmp_path: Path
) -> None:
    pki = rbroker.pki
    config = device_config(pki, rbroker, tmp_path / "state")
    shift = [0.0]
    link = HubLink(config, clock=lambda: time.time() + shift[0], backoff=(0.2, 1.0))
    link.renewal.backoff = (0.3, 1.0)
    hub = Client(rbroker, pki.hub.cert, pki.hub.key, client_id="hub-test")
    hub.subscribe(f"{ROOT}/#")
    leds = Leds(config.leds)

    def tick() -> dict:
        link.tick(time.time() + shift[0], {})
        return link.stats()

    old = x509.load_pem_x509_certificate(Path(config.hub.cert).read_bytes())
    link.start(None)
    try:
        wait_for(lambda: tick()["hub"]["connected"], what="the link up")
        assert link.stats()["hub"]["cert"]["state"] == "ok"
        assert not hub.on(f"{ROOT}/cert/csr")  # not due yet
        # 330 days into a 365-day certificate: due (67 %) and past half the renewal window.
        shift[0] = 330 * DAY
        (csr_msg,) = wait_for(lambda: tick() and hub.on(f"{ROOT}/cert/csr"), what="a CSR")
        assert b"PRIVATE KEY" not in csr_msg.payload
        csr = x509.load_pem_x509_csr(csr_msg.payload)
        assert csr.subject.rfc4514_string() == "CN=dev1" and csr.is_signature_valid
        assert link.stats()["hub"]["cert"]["state"] == "waiting"
        # A CA-signed certificate for another key: refused with the reason, the old pair kept.
        other = prov.renew_csr(pki.ca_dir, make_csr(ec.generate_private_key(ec.SECP256R1()),
                               "dev1"), "dev1", "siteA")  # fmt: skip
        ops = Client(rbroker, *_ops(pki), client_id="ops")
        ops.publish(f"{ROOT}/cert/issued", json.dumps({"ok": True, "cert": other.decode()}))
        cert = wait_for(lambda: (c := tick()["hub"]["cert"])["state"] == "failed" and c)
        assert "not for this device's new key" in cert["error"], cert
        assert cert["serial"] == format(old.serial_number, "x") and cert["refused"] == 1
        assert identity_paths(config) == (config.hub.cert, config.hub.key)
        # Close to the end and failing: the amber LED blinks and the page says why.
        stats = link.stats()
        assert "renewal failed" in stats["hub"]["cert_problem"], stats["hub"]
        leds.update({"running": True, **stats})
        assert leds.shown()["amber"] == BLINK
        page = overview({**stats, "state": "running"}, 0.1, time.time())
        assert page["health"] == "warn" and "renewal failed" in page["headline"], page
        ops.close()

        # The hub's renewals service (operator identity) answers the retry.
        cert_pem, key_pem = map(str, _ops(pki))
        ca = str(pki.ca_dir / "ca.pem")
        svc = RenewalService(
            "127.0.0.1", rbroker.port, ca, cert_pem, key_pem, pki.ca_dir, days=730, client_id="ops"
        )
        try:
            assert svc.ready.wait(10)
            connects = link.counters["connects"]
            cert = wait_for(
                lambda: (
                    (c := tick()["hub"])["connected"]
                    and link.counters["connects"] > connects
                    and c["cert"]
                ),
                timeout=30,
                what="renewed and reconnected",
            )
        finally:
            svc.close()
        new = x509.load_pem_x509_certificate(Path(identity_paths(config)[0]).read_bytes())
        assert cert["state"] == "ok" and cert["error"] == "" and cert["installed"] == 1
        assert cert["serial"] == format(new.serial_number, "x") != format(old.serial_number, "x")
        assert new.public_key() == csr.public_key()  # the key of the CSR: made on the device
        assert prov.registry(pki.ca_dir)["devices"]["dev1"]["serial"] == cert["serial"]
        key_path = Path(identity_paths(config)[1])
        assert (tmp_path / "state" / IDENTITY).is_symlink()  # switched in one rename
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert Path(config.hub.cert).read_bytes() != Path(identity_paths(config)[0]).read_bytes()
        assert not (tmp_path / "state" / "renewal" / "pending.key").exists()
        # The retained answer arrives again on the new connection and is left alone.
        stats = tick()
        assert stats["hub"]["cert"]["refused"] == 1 and stats["hub"]["cert_problem"] == ""
        leds.update({"running": True, **stats})
        assert leds.shown()["amber"] == ON
        # A restart uses the renewed pair.
        link.stop()
        link = HubLink(config, clock=lambda: time.time() + shift[0])
        link.start(None)
        wait_for(lambda: tick()["hub"]["connected"], what="reconnected after a restart")
        assert link.stats()["hub"]["cert"]["serial"] == cert["serial"]
    finally:
        link.stop()
        hub.close()
        leds.close()


def _ops(pki: PKI) -> tuple[Path, Path]:
    d = pki.ca_dir / "hubs" / "ops"
    return d / "hub.pem", d / "hub.key"
