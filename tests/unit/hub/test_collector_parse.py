"""From an MQTT message to a store row, or to quarantine with the reason."""

from __future__ import annotations

import json

import pytest

from hub.collector.parse import Registry, parse, reason_of
from hub.store import AlertRow, BadRow, StatusRow, SummaryRow, TelemetryRow

T = "watchpost/v1/s1/d1/"
REG = Registry({"d1": "s1"})


def eve(**wp: object) -> bytes:
    body = {"timestamp": "2027-01-15T08:00:00.000000+0000", "src_ip": "203.0.113.9",
            "dest_ip": "198.18.0.5", "dest_port": 22, "proto": "TCP",
            "alert": {"signature_id": 8102001, "signature": "Port scan", "severity": 2},
            "watchpost": {"id": "a1", "seq": 1, "device": "d1", **wp}}  # fmt: skip
    return json.dumps(body).encode()


def p(sub: str, payload: bytes, **kw: object) -> object:
    return parse(T + sub, payload, retain=False, now=1.8e9, registry=REG, **kw)  # type: ignore[arg-type]


def test_alert_identity_from_the_topic_not_the_body() -> None:
    row = p("alerts", eve(device="someone-else", site="elsewhere"))
    assert isinstance(row, AlertRow)
    assert (row.device, row.site, row.seq, row.signature_id, row.dest_port) == (
        "d1", "s1", 1, 8102001, 22)  # fmt: skip
    assert row.id == "d1:a1"  # an id is the device's own: no device can shadow another's


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (T + "alerts", b"\xff\xfe", "not JSON"),
        (T + "alerts", b"[1]", "wrong shape"),
        (T + "alerts", eve(id=""), "wrong shape"),
        (T + "alerts", eve(seq=0), "wrong shape"),
        (T + "alerts", eve(seq="3"), "wrong shape"),
        (T + "alerts", eve().replace(b"2027-01-15T", b"2227-01-15T"), "wrong shape"),
        (T + "alerts", b"{" + b" " * 70_000 + b"}", "oversized"),
        (T + "alerts", eve(id="a\ud800"), "wrong shape"),  # PostgreSQL jsonb refuses these
        (T + "alerts", eve(id="a\x00"), "wrong shape"),
        ("watchpost/v1/s1/intruder/alerts", eve(), "unknown device"),
        ("watchpost/v1/s2/d1/alerts", eve(), "site mismatch"),
        ("elsewhere/x", eve(), "not a device topic"),
        (T + "cmd", b"{}", "unknown sub-topic"),
        (T + "status", b'{"bd_seq": 1}', "wrong shape"),
        (T + "status", b'{"state": "ready", "bd_seq": "x"}', "wrong shape"),
        (T + "telemetry", b'{"counters": {}}', "wrong shape"),
        (T + "summary", b'{"day": "yesterday"}', "wrong shape"),
    ],
)
def test_bad_messages_are_quarantined_with_a_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    row = parse(topic, payload, retain=False, now=1.8e9, registry=REG)
    assert isinstance(row, BadRow), row
    assert reason_of(row) == reason
    assert len(row.payload) <= 4096


def test_other_kinds() -> None:
    st = p("status", b'{"state": "ready", "bd_seq": 3, "ts": 1.0}')
    assert isinstance(st, StatusRow) and st.seen_at == 1.8e9
    old = parse(T + "status", b'{"state": "ready", "ts": 100.0}', retain=True, now=1.8e9,
                registry=REG)  # fmt: skip
    assert isinstance(old, StatusRow) and old.seen_at == 100.0  # an old retained status
    assert isinstance(p("telemetry", b'{"ts": 5, "counters": {"outbox_depth": 2}}'), TelemetryRow)
    assert isinstance(p("summary", b'{"day": "2027-01-14", "alerts": 3}'), SummaryRow)
    anyone = parse("watchpost/v1/x/y/alerts", eve(), retain=False, now=1.8e9, registry=Registry())
    assert isinstance(anyone, AlertRow)  # no registry given: every device accepted
