"""The hub link without a broker: failure reasons, preflight checks, acknowledgement
bookkeeping (including PUBACKs that arrive before publish() returns), bd_seq, payloads."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from appliance.alerts.outbox import Outbox
from appliance.config import Config, from_dict
from appliance.hublink import link as link_mod
from appliance.hublink.link import HubLink, describe_failure, preflight
from hub import provisioning as prov
from tests.fakes import FakeView


def config(tmp_path: Path, device: str = "dev1", **hub: Any) -> Config:
    d = tmp_path / "ca" / "devices" / "dev1"
    return from_dict(
        {
            "device": {"id": device, "site": "siteA", "state_dir": str(tmp_path / "state")},
            "hub": {
                "host": "hub.example.net",
                "ca": str(d / "ca.pem"),
                "cert": str(d / "device.pem"),
                "key": str(d / "device.key"),
                "outbox": str(tmp_path / "state" / "outbox.sqlite"),
                **hub,
            },
        }
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    prov.create_ca(tmp_path / "ca")
    prov.issue_device(tmp_path / "ca", "dev1", "siteA")
    return tmp_path / "ca"


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve hub host 'h'"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused by h:8883"),
        (TimeoutError("timed out"), "no answer from h:8883"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"),
            "TLS handshake with h:8883 failed: wrong version number",
        ),
        (None, "cannot connect to h:8883"),
    ],
)
def test_failures_are_described_in_a_few_words(exc: BaseException | None, words: str) -> None:
    assert words in describe_failure(exc, "h", 8883)


def test_a_certificate_verification_failure_names_the_pinned_ca() -> None:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_message = "unable to get local issuer certificate"
    text = describe_failure(e, "h", 8883)
    assert text.startswith("hub certificate rejected: unable to get local issuer certificate")
    assert "not signed by the pinned hub CA" in text


def test_preflight_accepts_good_files_and_builds_a_strict_tls_context(
    pki: Path, tmp_path: Path
) -> None:
    pre = preflight(config(tmp_path))
    assert pre.fatal == () and pre.notes == ()
    ctx = pre.context
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1  # only the pinned hub CA, no system CAs


def test_preflight_names_missing_mismatched_and_foreign_files(pki: Path, tmp_path: Path) -> None:
    assert preflight(config(tmp_path, ca=str(tmp_path / "x.pem"))).fatal[0][0] == "hub.ca"
    bad = tmp_path / "garbage.pem"
    bad.write_text("not a certificate")
    assert "not a PEM certificate" in preflight(config(tmp_path, cert=str(bad))).fatal[0][1]
    other = prov.issue_device(pki, "dev2", "siteA")
    key, problem = preflight(config(tmp_path, key=str(other.key))).fatal[0]
    assert key == "hub.key" and "does not belong to the certificate" in problem
    key, problem = preflight(config(tmp_path, device="dev9")).fatal[0]
    assert key == "hub.cert" and "is for 'dev1', not for this device 'dev9'" in problem


def test_preflight_notes_an_expired_certificate_only_when_the_clock_is_plausible(
    pki: Path, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20 * 365)
    assert "expired on" in preflight(cfg, now=later.timestamp()).notes[0]
    assert preflight(cfg, now=0.0).notes == ()  # a Pi that booted in 1970: no verdict


class FakeClient:
    """Stands in for paho's client: acknowledges inside publish(), as paho's thread can."""

    def __init__(self, link: HubLink, reason: int = 0, early: bool = True) -> None:
        self.link = link
        self.reason = reason
        self.early = early
        self.mid = 0
        self.published: list[tuple[str, bytes, bool]] = []
        self.later: list[int] = []

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Any = None
    ) -> mqtt.MQTTMessageInfo:
        self.mid += 1
        self.published.append((topic, payload, retain))
        if self.early:
            self.ack(self.mid)
        else:
            self.later.append(self.mid)
        info = mqtt.MQTTMessageInfo(self.mid)
        info.rc = mqtt.MQTT_ERR_SUCCESS
        return info

    def ack(self, mid: int) -> None:
        rc = ReasonCode(PacketTypes.PUBACK, identifier=self.reason)
        self.link._on_publish(self, None, mid, rc, None)  # type: ignore[arg-type]


def linked(
    tmp_path: Path, pki: Path, reason: int = 0, early: bool = True
) -> tuple[HubLink, FakeClient]:
    link = HubLink(config(tmp_path))
    client = FakeClient(link, reason, early)
    link._client = client  # type: ignore[assignment]
    link._connected = True
    return link, client


def test_an_acknowledgement_that_arrives_before_publish_returns_is_not_lost(
    pki: Path, tmp_path: Path
) -> None:
    link, _client = linked(tmp_path, pki, early=True)
    done: list[Any] = []
    link._publish("t", b"x", done=done.append)
    assert len(done) == 1 and not done[0].is_failure
    assert link._early == {} and link._waiting == {}


def test_stored_alerts_are_deleted_on_puback_and_kept_on_refusal(pki: Path, tmp_path: Path) -> None:
    link, client = linked(tmp_path, pki, early=False)
    box = link.outbox
    assert box is not None
    for _ in range(3):
        box.record({"alert": {"severity": 2}, "watchpost": {"id": "x"}})
    for seq, body in box.next_batch(10):
        link._publish(link.topic("alerts"), body, done=link._alert_done(seq))
    assert [t for t, _, _ in client.published] == ["watchpost/v1/siteA/dev1/alerts"] * 3
    client.ack(client.later[0])
    client.reason = 0x87
    client.ack(client.later[1])
    link._settle()
    assert box.depth() == 2  # seq 1 delivered; seq 2 refused (kept); seq 3 in flight
    s = link.stats()
    assert s["hub_alerts_sent"] == 1 and s["hub_refused"] == 1 and s["outbox_refused"] == 1
    assert "0x87" in s["hub_problem"]
    box.close()


def test_bd_seq_is_persisted_and_the_will_carries_the_next_one(pki: Path, tmp_path: Path) -> None:
    link = HubLink(config(tmp_path))
    wills: list[tuple[str, Any]] = []

    class WillClient:
        def will_set(self, topic: str, payload: Any, qos: int, retain: bool) -> None:
            assert qos == 1 and retain
            wills.append((topic, payload))

    c = WillClient()
    link._client = c  # type: ignore[assignment]
    link._on_pre_connect(c, None)  # type: ignore[arg-type]
    link._on_pre_connect(c, None)  # type: ignore[arg-type]
    assert link._bd_seq == 2
    assert wills[-1][0] == "watchpost/v1/siteA/dev1/status"
    assert '"state":"lost"' in wills[-1][1] and '"bd_seq":2' in wills[-1][1]
    link.outbox.close()  # type: ignore[union-attr]
    assert HubLink(config(tmp_path))._bd_seq == 2


def test_a_stop_during_the_backoff_wait_ends_it_at_once(pki: Path, tmp_path: Path) -> None:
    link = HubLink(config(tmp_path), backoff=(60.0, 60.0))
    link._client = c = object()  # type: ignore[assignment]
    link._failures = 3
    threading.Timer(0.2, link._stopping.set).start()
    with pytest.raises(OSError, match="stopping"):
        link._on_pre_connect(c, None)  # type: ignore[arg-type]


def test_status_and_telemetry_payloads(pki: Path, tmp_path: Path) -> None:
    link = HubLink(config(tmp_path))

    numbers = {"mode": "block", "intel_version": "2026-11-26.1", "leds": {"green": "on"},
               "update": {"id": "u1", "state": "checking", "version": "0.2.0"}}  # fmt: skip
    view = FakeView(config(tmp_path), {**numbers, "packets": 10}, [link])
    view.tick(1_800_000_000.0)  # not started: nothing is published, the snapshot is kept
    st = link._status("ready")
    assert st["state"] == "ready" and st["mode"] == "block"
    assert st["intel_version"] == "2026-11-26.1" and st["leds"] == {"green": "on"}
    assert st["version"] and "problem" in st["link"] and "since" in st["link"]
    assert st["update"] == {"id": "u1", "state": "checking", "version": "0.2.0"}
    tel = link.telemetry()
    assert tel["counters"]["packets"] == 10 and tel["counters"]["outbox_depth"] == 0
    assert "temperature_c" in tel["system"] and "cpu_percent" in tel["system"]
    assert tel["rates"] == {}  # the first telemetry has nothing to compare with
    link._service_stats["packets"] = 110
    link._last_counts = (link._last_counts[0] - 10.0, link._last_counts[1])  # type: ignore[index]
    rates = link.telemetry()["rates"]
    assert 9.0 < rates["packets_per_s"] <= 10.0 and rates["alerts_per_s"] == 0.0
    link.outbox.close()  # type: ignore[union-attr]


def test_without_a_hub_there_is_no_outbox_and_the_link_is_disabled(tmp_path: Path) -> None:
    cfg = from_dict({"device": {"id": "d", "state_dir": str(tmp_path)}})
    link = HubLink(cfg)
    link.start()
    link.tick(0.0, {})
    assert link.journal is None and link.stats()["hub_state"] == "disabled"
    assert link.stats()["hub"]["enabled"] is False and not link.stats()["hub"]["connected"]
    link.stop()
    assert link_mod.component(cfg) is None


def test_reason_codes_at_or_above_0x80_are_failures() -> None:
    assert link_mod._failed(ReasonCode(PacketTypes.PUBACK, identifier=0x87))
    assert not link_mod._failed(ReasonCode(PacketTypes.PUBACK, identifier=0x10))  # no subscribers
    assert link_mod._failed(0x80) and not link_mod._failed(0) and not link_mod._failed(None)


def test_outbox_passed_in_is_used(tmp_path: Path, pki: Path) -> None:
    box = Outbox(tmp_path / "mine.sqlite")
    link = HubLink(config(tmp_path), outbox=box)
    assert link.journal is box
    box.close()
