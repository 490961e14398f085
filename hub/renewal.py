"""Certificate renewal over MQTT, the operator side (`watchpost-hub renewals --dir CA`).

A device publishes a CSR (PEM, its own new key, CN = its id) on
``watchpost/v1/<site>/<id>/cert/csr``. This service, running with an **operator** identity
(which may write ``cert/issued``) next to the CA, takes the device's identity and site from the
TOPIC, never from the CSR, has `hub.provisioning.renew_csr` check the CSR against them and the
registry, and answers on ``watchpost/v1/<site>/<id>/cert/issued`` (retained, QoS 1, so a device
that reconnects still finds it)::

    {"ok": true, "cert": "-----BEGIN CERTIFICATE-----...", "not_after": "2027-..."}
    {"ok": false, "error": "CSR from dev1: subject CN must be exactly 'dev1'"}
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub import provisioning as prov
from hub.operator.connection import Ctx, fail
from hub.operator.group import hub
from hub.tls import client_context
from protocol import topics

log = logging.getLogger("watchpost.hub.renewal")
CSR = "cert/csr"
ISSUED = "cert/issued"
MAX_CSR = 8192


def answer(ca_dir: Path, topic_name: str, payload: bytes, days: int) -> tuple[str, bytes] | None:
    """The (topic, payload) to publish for one CSR message, or None for a foreign topic."""
    try:
        site, device, sub = topics.split(topic_name)
    except ValueError:
        return None
    if sub != CSR:
        return None
    reply = topics.topic(site, device, ISSUED)
    try:
        if len(payload) > MAX_CSR:
            raise prov.ProvisionError(f"CSR from {device}: over {MAX_CSR} bytes")
        pem = prov.renew_csr(ca_dir, payload, device, site, days=days)
    except prov.ProvisionError as e:
        log.warning("renewal refused: %s", e)
        return reply, json.dumps({"ok": False, "error": str(e)}).encode()
    cert = x509.load_pem_x509_certificate(pem)
    log.info("renewed %s at %s until %s", device, site, cert.not_valid_after_utc)
    body = {"ok": True, "cert": pem.decode(), "not_after": cert.not_valid_after_utc.isoformat()}
    return reply, json.dumps(body).encode()


class RenewalService:
    def __init__(self, host: str, port: int, ca: str, cert: str, key: str, ca_dir: Path,
                 days: int = prov.DEVICE_DAYS, client_id: str = "renewals") -> None:  # fmt: skip
        self.ca_dir, self.days = ca_dir, days
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.tls_set_context(client_context(ca, cert, key))
        c.on_connect = lambda cl, *a: cl.subscribe(
            [(f"{topics.ROOT}/+/+/{CSR}", SubscribeOptions(qos=1))]
        )
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = self._on_message
        self.client = c
        c.connect(host, port)
        c.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        out = answer(self.ca_dir, msg.topic, bytes(msg.payload), self.days)
        if out is not None:
            client.publish(out[0], out[1], qos=1, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@hub.command()
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The CA directory (signs the renewals).")  # fmt: skip
@click.option("--days", default=prov.DEVICE_DAYS, show_default=True)
@click.pass_obj
def renewals(obj: Ctx, ca_dir: Path, days: int) -> None:
    """Sign device certificate renewals (CSRs on cert/csr) with an operator identity."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = obj.settings
    if not s.host:
        fail("no broker host: pass --host, set WATCHPOST_HUB_HOST or operator.host")
    try:
        prov.load_ca(ca_dir)
        svc = RenewalService(s.host, s.port, s.ca, s.cert, s.key, ca_dir, days)
    except (prov.ProvisionError, OSError, ValueError) as e:
        fail(str(e))
        raise
    if not svc.ready.wait(15):
        fail("renewals: no subscription acknowledged by the broker")
    click.echo("renewals: waiting for CSRs", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        svc.close()
