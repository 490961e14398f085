"""A hub that is unreachable, misconfigured or refusing never stops the device: alerts are still
numbered and stored, and the link says why it is down."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubkit import PKI, Broker, Client, device_config, free_port, wait_for

from appliance.alerts.model import Alert, Signature
from appliance.alerts.pipeline import AlertPipeline
from appliance.config import Config, ConfigError
from appliance.hublink.link import HubLink
from hub import provisioning as prov

SIG = Signature(9_100_002, "test finding", "Test", 2)


class Device:
    """Pipeline + outbox + link in this process."""

    def __init__(self, config: Config) -> None:
        self.link = HubLink(config, backoff=(0.2, 1.0), refusal_pause=0.5)
        self.seen: list[dict[str, Any]] = []
        self.pipeline = AlertPipeline(config, [self.seen.append], journal=self.link.journal)
        self.n = 0

    def alerts(self, n: int) -> None:
        for _ in range(n):
            self.n += 1
            self.pipeline(
                Alert(
                    "test",
                    SIG,
                    1_800_000_000.0 + self.n,
                    f"198.51.100.{self.n}",
                    "198.18.0.11",
                    "TCP",
                    src_port=5555,
                    dest_port=445,
                )
            )

    def stats(self) -> dict[str, Any]:
        return self.link.stats()


@pytest.fixture
def device() -> Iterator[Any]:
    made: list[Device] = []

    def make(config: Config) -> Device:
        d = Device(config)
        made.append(d)
        d.link.start()
        return d

    yield make
    for d in made:
        d.link.close()


def down_because(dev: Device, *words: str) -> str:
    def check() -> str:
        s = dev.stats()
        p = s["hub_problem"]
        return p if s["hub_state"] == "down" and all(w in p for w in words) else ""

    problem = wait_for(check, what=f"link down because of {words}: {dev.stats()['hub_problem']}")
    snap = dev.stats()
    hub = snap["hub"]  # what the LEDs (amber blinking) and the status page read
    assert hub["enabled"] and not hub["connected"] and hub["problem"] == snap["hub_problem"]
    # The rest keeps running: alerts are still numbered and stored while the link is down.
    before = dev.stats()["outbox_depth"]
    dev.alerts(3)
    # Handed to the outbox's journal thread; stored once it has written them.
    wait_for(lambda: dev.stats()["outbox_depth"] == before + 3, what="3 alerts stored")
    assert [a["watchpost"]["seq"] for a in dev.seen[-3:]] == [dev.n - 2, dev.n - 1, dev.n]
    return problem


def test_a_hub_certificate_from_another_ca_is_rejected(
    broker: Broker, pki: PKI, tmp_path: Path, device: Any
) -> None:
    other = prov.create_ca(tmp_path / "other-ca", name="Somebody else's CA")
    config = device_config(pki, broker, tmp_path / "state", ca=str(other.cert_path))
    down_because(device(config), "hub certificate rejected", "not signed by the pinned hub CA")


def test_an_expired_device_certificate_is_named_as_the_reason(
    broker: Broker, pki: PKI, tmp_path: Path, device: Any
) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    ident = prov.issue_device(
        pki.ca_dir, "old1", "siteA", out_dir=tmp_path / "old1", days=10, not_before=start
    )
    config = device_config(
        pki,
        broker,
        tmp_path / "state",
        device="old1",
        cert=str(ident.cert),
        key=str(ident.key),
        ca=str(ident.ca),
    )
    problem = down_because(device(config), "expired")
    # Both the device's own check and the broker's TLS alert say so.
    assert "the device certificate expired on" in problem
    assert "the hub rejected the TLS session" in problem


def test_an_unresolvable_hub_host_is_named(
    broker: Broker, pki: PKI, tmp_path: Path, device: Any
) -> None:
    config = device_config(pki, broker, tmp_path / "state", host="hub.invalid")
    down_because(device(config), "cannot resolve hub host 'hub.invalid'")


def test_a_closed_port_is_named(broker: Broker, pki: PKI, tmp_path: Path, device: Any) -> None:
    config = device_config(pki, broker, tmp_path / "state", port=free_port())
    down_because(device(config), "connection refused")


def test_missing_or_foreign_tls_files_are_named_without_dialling(
    broker: Broker, pki: PKI, tmp_path: Path, device: Any
) -> None:
    config = device_config(pki, broker, tmp_path / "s1", cert=str(tmp_path / "nope.pem"))
    down_because(device(config), "misconfigured: hub.cert", "nope.pem: no such file")
    d1 = pki.device("dev1")
    config = device_config(
        pki, broker, tmp_path / "s2", device="dev3", cert=str(d1.cert), key=str(d1.key)
    )
    dev = device(config)
    down_because(dev, "the certificate is for 'dev1', not for this device 'dev3'")
    assert dev.stats()["hub_connect_failures"] == 0  # never dialled


def test_refused_alerts_are_counted_kept_and_delivered_once_the_device_is_fixed(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path, device: Any
) -> None:
    # dev1 belongs to siteA; configured as siteB the broker refuses its alerts (0x87).
    config = device_config(pki, broker, tmp_path / "state", site="siteB")
    dev = device(config)
    wait_for(lambda: dev.stats()["hub_state"] == "up", what="link up")
    dev.alerts(4)
    s = wait_for(lambda: (s := dev.stats())["outbox_refused"] >= 4 and s, what="refusals")
    assert "the hub refuses alerts" in s["hub_problem"] and "0x87" in s["hub_problem"]
    assert s["outbox_depth"] == 4 and s["hub_alerts_sent"] == 0 and s["outbox_refused"] >= 4
    assert not hub.on("/alerts")
    # Retried after the pause, refused again: still never taken as delivered.
    wait_for(lambda: dev.stats()["outbox_refused"] >= 8, what="a retry after the pause")
    assert dev.stats()["outbox_depth"] == 4
    # The fix arrives as live configuration: the link reconnects and delivers them.
    fixed = device_config(pki, broker, tmp_path / "state", site="siteA")
    dev.link.configure(fixed)
    got = wait_for(lambda: len(hub.on("siteA/dev1/alerts")) >= 4 and hub.on("siteA/dev1/alerts"))
    assert len({m.payload for m in got}) == 4
    wait_for(lambda: dev.stats()["outbox_depth"] == 0, what="outbox empty")
    assert dev.stats()["hub_problem"] == ""


def test_configure_refuses_tls_files_that_cannot_work_and_changes_nothing(
    broker: Broker, pki: PKI, tmp_path: Path, device: Any
) -> None:
    config = device_config(pki, broker, tmp_path / "state")
    dev = device(config)
    wait_for(lambda: dev.stats()["hub_state"] == "up", what="link up")
    broken = tmp_path / "broken.key"
    shutil.copy(pki.device("dev2").key, broken)  # another device's key
    bad = device_config(pki, broker, tmp_path / "state", key=str(broken))
    with pytest.raises(ConfigError) as err:
        dev.link.configure(bad)
    assert err.value.key == "hub.key" and "does not belong to the certificate" in str(err.value)
    assert dev.link.config is config and dev.stats()["hub_state"] == "up"
    with pytest.raises(ConfigError, match="hub.outbox"):
        dev.link.configure(
            device_config(
                pki, broker, tmp_path / "state", outbox=str(tmp_path / "elsewhere.sqlite")
            )
        )
