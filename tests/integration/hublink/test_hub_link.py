"""The hub link against a real mosquitto over TLS, certificates from hub.provisioning."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubkit import PKI, Broker, Client, DevProc, device_config, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.alerts.model import parse_eve_time
from appliance.config import Config
from tests.fakes import FakeView

ROOT = "watchpost/v1/siteA/dev1"


def statuses(hub: Client, root: str = ROOT) -> list[dict[str, Any]]:
    return hub.json_on(f"{root}/status")


def by_id(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["watchpost"]["id"]: a for a in alerts}


def test_alerts_reach_the_hub_as_eve_json_on_the_contract_topic(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path, devproc: Callable[[Config], DevProc]
) -> None:
    dev = devproc(device_config(pki, broker, tmp_path / "state"))
    dev.start()
    wait_for(lambda: any(s["state"] == "ready" for s in statuses(hub)), what="status ready")
    dev.alerts(5, severity=1)
    got = wait_for(lambda: len(hub.on(f"{ROOT}/alerts")) >= 5 and hub.json_on(f"{ROOT}/alerts"))
    assert [a["watchpost"]["seq"] for a in got] == [1, 2, 3, 4, 5]
    recorded = {e["id"] for e in dev.events("recorded")}
    assert set(by_id(got)) == recorded
    for a in got:
        assert a["event_type"] == "alert"
        assert a["alert"]["severity"] == 1 and a["alert"]["signature_id"] == 9_100_001
        assert a["proto"] == "TCP" and a["dest_port"] == 22
        assert a["watchpost"]["device"] == "dev1" and a["watchpost"]["site"] == "siteA"
        parse_eve_time(a["timestamp"])
    assert all(m.qos == 1 for m in hub.on(f"{ROOT}/alerts"))
    stats = wait_for(lambda: (s := dev.stats())["outbox_depth"] == 0 and s, what="outbox empty")
    assert stats["hub_alerts_sent"] == 5 and stats["hub_state"] == "up"
    dev.stop()


def test_status_lifecycle_ready_disconnected_and_lost_by_will_with_the_same_bd_seq(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path, devproc: Callable[[Config], DevProc]
) -> None:
    config = device_config(pki, broker, tmp_path / "state")
    dev = devproc(config)
    dev.start()
    ready = wait_for(lambda: [s for s in statuses(hub) if s["state"] == "ready"])[0]
    first = statuses(hub)
    assert first[0]["state"] == "init" and first[0]["bd_seq"] == ready["bd_seq"]
    for key in ("version", "mode", "uptime", "intel_version", "leds", "link", "site", "device"):
        assert key in ready
    assert ready["mode"] == "monitor" and ready["link"]["problem"] == ""
    dev.stop()  # clean stop
    gone = wait_for(lambda: [s for s in statuses(hub) if s["state"] == "disconnected"])[0]
    assert gone["bd_seq"] == ready["bd_seq"]
    time.sleep(0.5)
    assert not [s for s in statuses(hub) if s["state"] == "lost"]  # no will after a clean stop

    dev.start()
    ready2 = wait_for(
        lambda: [s for s in statuses(hub) if s["state"] == "ready" and s["bd_seq"] > gone["bd_seq"]]
    )[0]
    dev.kill9()
    lost = wait_for(lambda: [s for s in statuses(hub) if s["state"] == "lost"])[0]
    assert lost["bd_seq"] == ready2["bd_seq"]
    # The retained status is what a hub that connects later sees first.
    late = Client(broker, pki.hub.cert, pki.hub.key, client_id="late")
    late.subscribe(f"{ROOT}/status")
    retained = wait_for(lambda: late.on("/status"))[0]
    assert retained.retain and json.loads(retained.payload)["state"] == "lost"
    late.close()


def test_outage_kill9_restart_every_alert_arrives_once_and_in_sequence(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path, devproc: Callable[[Config], DevProc]
) -> None:
    config = device_config(pki, broker, tmp_path / "state")
    dev = devproc(config)
    dev.start()
    wait_for(lambda: any(s["state"] == "ready" for s in statuses(hub)), what="status ready")
    dev.alerts(20)
    wait_for(lambda: len(hub.on(f"{ROOT}/alerts")) >= 20, what="first 20 alerts")
    hub.close()
    broker.stop()
    dev.alerts(30, severity=3)  # raised while the hub is away
    wait_for(lambda: dev.stats()["hub_state"] == "down", what="link down")
    dev.kill9()  # the daemon crashes while the hub is away
    dev.start()
    dev.alerts(25, severity=1)
    broker.start()
    hub2 = Client(broker, pki.hub.cert, pki.hub.key, client_id="hub-test-2")
    hub2.subscribe("watchpost/v1/#")
    wait_for(
        lambda: len(by_id(hub2.json_on(f"{ROOT}/alerts"))) >= 55,
        timeout=30,
        what="the 55 alerts raised during and after the outage",
    )
    received = hub.json_on(f"{ROOT}/alerts") + hub2.json_on(f"{ROOT}/alerts")
    unique = by_id(received)
    recorded = {e["id"]: e["seq"] for e in dev.events("recorded")}
    assert len(recorded) == 75
    assert set(unique) == set(recorded)  # every alert arrived
    assert sorted(a["watchpost"]["seq"] for a in unique.values()) == list(range(1, 76))
    assert {i: a["watchpost"]["seq"] for i, a in unique.items()} == recorded
    stats = wait_for(lambda: (s := dev.stats())["outbox_depth"] == 0 and s, what="outbox empty")
    assert stats["outbox_evicted"] == 0
    dev.stop()
    hub2.close()


def test_a_device_cannot_read_or_write_another_devices_topics(
    broker: Broker, hub: Client, pki: PKI
) -> None:
    d1 = pki.device("dev1")
    mallory = Client(broker, d1.cert, d1.key, client_id="dev1-rogue")
    mallory.subscribe("watchpost/v1/siteB/dev2/cmd", "watchpost/v1/siteA/dev3/#", "watchpost/#")
    # Not its topics: refused with 0x87 (not authorized), never delivered.
    for topic in (
        "watchpost/v1/siteB/dev2/alerts",  # another device
        "watchpost/v1/siteA/dev3/status",  # another device at its own site
        "watchpost/v1/siteB/dev1/alerts",  # its own id under another site
        "watchpost/v1/siteA/dev1/cmd",  # its own command topic is read-only
    ):
        rc = mallory.publish(topic, b'{"forged": true}')
        assert rc.value == 0x87, topic
    assert mallory.publish(f"{ROOT}/alerts", b'{"own": true}').value == 0  # its own: allowed
    hub.publish("watchpost/v1/siteB/dev2/cmd", b"for dev2")
    hub.publish("watchpost/v1/siteA/dev3/cmd", b"for dev3")
    hub.publish(f"{ROOT}/cmd", b"for dev1")
    wait_for(lambda: mallory.on("/cmd"), what="dev1's own command")
    time.sleep(0.5)
    assert [m.topic for m in mallory.messages] == [f"{ROOT}/cmd"]
    assert [m.payload for m in hub.on("/alerts")] == [b'{"own": true}']
    mallory.close()


class FakeHandler:
    """Stands in for appliance.hublink.commands.CommandHandler (same four methods)."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.desired: list[bytes] = []
        self.connects = 0
        self.publish: Any = None

    def attach(self, publish: Any) -> None:
        self.publish = publish

    def on_command(self, payload: bytes, reply: Callable[[dict[str, Any]], None]) -> None:
        self.commands.append(payload)
        reply({"id": json.loads(payload)["id"], "ok": True, "result": "pong"})

    def on_desired(self, payload: bytes) -> None:
        self.desired.append(payload)

    def on_connect(self) -> None:
        self.connects += 1
        self.publish("config/reported", {"version": 7}, True)


def test_commands_and_desired_config_reach_the_handler_and_answers_come_back(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path
) -> None:
    from appliance.hublink.link import HubLink

    hub.publish(f"{ROOT}/config/desired", b'{"cmd": "set-config"}', retain=True)
    handler = FakeHandler()
    link = HubLink(device_config(pki, broker, tmp_path / "state"), handler=handler)
    link.start()
    try:
        wait_for(lambda: handler.desired, what="retained desired config delivered on connect")
        assert handler.desired == [b'{"cmd": "set-config"}']
        reported = wait_for(lambda: hub.on(f"{ROOT}/config/reported"))[0]
        assert json.loads(reported.payload) == {"version": 7}
        late = Client(broker, pki.hub.cert, pki.hub.key, client_id="late")
        late.subscribe(f"{ROOT}/config/reported")
        assert wait_for(lambda: late.on("/config/reported"))[0].retain  # retained
        late.close()
        wait_for(lambda: any(s["state"] == "ready" for s in statuses(hub)))
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{ROOT}/cmd/res/op-1"
        props.CorrelationData = b"corr-42"
        hub.publish(f"{ROOT}/cmd", json.dumps({"id": "c1", "cmd": "ping"}), properties=props)
        wait_for(lambda: hub.on(f"{ROOT}/cmd/res/op-1"), what="answer on the response topic")
        answer = hub.on(f"{ROOT}/cmd/res/op-1")[0]
        assert json.loads(answer.payload) == {"id": "c1", "ok": True, "result": "pong"}
        assert answer.properties.CorrelationData == b"corr-42"
        res = wait_for(lambda: hub.json_on(f"{ROOT}/cmd/res"))
        assert res == [{"id": "c1", "ok": True, "result": "pong"}]
        # A response topic the device may not write to is not used (the answer is on cmd/res).
        props.ResponseTopic = "watchpost/v1/operators/op-2"
        hub.publish(f"{ROOT}/cmd", json.dumps({"id": "c2", "cmd": "ping"}), properties=props)
        wait_for(lambda: len(hub.json_on(f"{ROOT}/cmd/res")) == 2)
        assert not hub.on("operators/op-2")
        assert link.stats()["hub_refused"] == 0
    finally:
        link.close()


def test_telemetry_and_the_daily_summary_reach_the_hub(
    broker: Broker, hub: Client, pki: PKI, tmp_path: Path
) -> None:
    from appliance.alerts.model import Alert, Signature
    from appliance.alerts.pipeline import AlertPipeline
    from appliance.hublink.link import HubLink

    config = device_config(pki, broker, tmp_path / "state")
    link = HubLink(config)
    pipeline = AlertPipeline(config, [], journal=link.journal)

    view = FakeView(config, {"packets": 1234, "verdicts_block": 7, "verdicts_pass": 99}, [link])
    link.start(view)
    try:
        wait_for(lambda: link.stats()["hub_state"] == "up", what="link up")
        now = time.time()
        view.tick(now)
        tel = wait_for(lambda: hub.json_on(f"{ROOT}/telemetry"))[0]
        assert tel["counters"]["packets"] == 1234 and tel["counters"]["hub_state"] == "up"
        assert {"cpu_percent", "mem_used_percent", "temperature_c"} <= set(tel["system"])
        sig = Signature(9_100_003, "ssh brute force", "Attempted Login", 2)
        for i in range(3):
            pipeline(
                Alert(
                    "ssh",
                    sig,
                    now + i,
                    "198.51.100.23",
                    f"198.18.0.{11 + i}",
                    "TCP",
                    src_port=40000,
                    dest_port=22,
                    action="blocked",
                )
            )
        wait_for(lambda: len(hub.on(f"{ROOT}/alerts")) == 3, what="alerts")
        view.tick(now + 86400)  # the next day: yesterday's report goes out
        rep = wait_for(lambda: hub.json_on(f"{ROOT}/summary"))[0]
        assert rep["device"] == "dev1" and rep["alerts"] == 3 and rep["blocked"] == 3
        assert rep["top_sources"] == [{"ip": "198.51.100.23", "alerts": 3}]
        assert rep["top_ports"] == [{"port": "TCP/22", "alerts": 3}]
        assert rep["by_detector"] == {"ssh": 3}
        wait_for(lambda: not link.report.pending, what="summary acknowledged")
    finally:
        link.close()


def test_pattern_acl_mode_keeps_devices_to_their_own_id(pki: PKI, tmp_path: Path) -> None:
    b = Broker(pki, tmp_path / "broker", acl_mode="pattern")
    b.start()
    try:
        d1 = pki.device("dev1")
        dev = Client(b, d1.cert, d1.key, client_id="dev1")
        assert not dev.publish(f"{ROOT}/alerts", b"{}").is_failure  # 0x10: no subscribers
        assert dev.publish("watchpost/v1/siteB/dev2/alerts", b"{}").value == 0x87
        assert dev.publish(f"{ROOT}/cmd", b"{}").value == 0x87
        # The documented limit of this mode: the site level is a wildcard.
        assert not dev.publish("watchpost/v1/siteB/dev1/alerts", b"{}").is_failure
        dev.close()
    finally:
        b.stop()
