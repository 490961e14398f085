"""The collector's lean MQTT 5 session (hub/collector/mqtt.py) against a real mosquitto (TLS,
the project's ACL): persistent session, what is acknowledged is gone, what is not comes again,
PUBACKs of a batch in one write, keep-alive, a session takeover."""

from __future__ import annotations

import json
import select
import threading
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.collector import Collector, CollectorSettings
from hub.collector.mqtt import Message, ProtocolError, Session
from hub.store import open_store
from hub.tls import client_context
from tests.integration.hublink.hubkit import PKI, Broker, Client, wait_for


def _session(broker: Broker, pki: PKI, client_id: str = "hub-lean", **kw: object) -> Session:
    ctx = client_context(str(pki.hub.ca), str(pki.hub.cert), str(pki.hub.key))
    return Session("127.0.0.1", broker.port, ctx, client_id, session_expiry=300,
                   receive_maximum=100, **kw)  # type: ignore[arg-type]  # fmt: skip


def _read(sess: Session, n: int, timeout: float = 5.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if sess.has_buffered() or select.select([sess.sock], [], [], 0.1)[0]:
            got += sess.read()
    return got


def test_session_receives_acks_in_one_write_and_gets_back_only_the_unacknowledged(
    broker: Broker, pki: PKI
) -> None:
    sess = _session(broker, pki)
    assert not sess.session_present
    assert sess.subscribe([("$share/g/watchpost/v1/+/+/alerts", 1)]) == [1]
    dev = Client(broker, pki.device("dev1").cert, pki.device("dev1").key, client_id="dev1")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("trace", "x" * 200)]
    payloads = [b"small", b"y" * 300_000]  # the large one spans several reads
    payloads += [f"alert {i}".encode() for i in range(20)]
    for p in payloads:
        assert not dev.publish("watchpost/v1/siteA/dev1/alerts", p, properties=props).is_failure
    got = _read(sess, len(payloads))
    assert [m.payload for m in got] == payloads
    assert {m.topic for m in got} == {"watchpost/v1/siteA/dev1/alerts"}
    assert all(m.qos == 1 and not m.dup for m in got)
    sess.ack([m.mid for m in got[:12]])  # the first 12 "committed": one write of 12 PUBACKs
    sess.flush()
    sess.close()
    # Same client id, clean start off: the session is there and only the other 10 come again.
    sess = _session(broker, pki)
    assert sess.session_present
    again = _read(sess, 10)
    assert [m.payload for m in again] == payloads[12:]
    assert all(m.dup for m in again)
    sess.ack([m.mid for m in again])
    sess.flush()
    sess.close()
    sess = _session(broker, pki)
    assert _read(sess, 1, timeout=1.0) == []
    sess.close()
    dev.close()


def test_keepalive_pings_are_answered_and_a_takeover_ends_the_connection(
    broker: Broker, pki: PKI
) -> None:
    sess = _session(broker, pki, keepalive=1)
    sess.subscribe([("watchpost/v1/+/+/status", 1)])
    deadline = time.monotonic() + 3.0
    pings = 0
    while time.monotonic() < deadline:
        sent = sess._ping_sent
        sess.keepalive_due()
        pings += sess._ping_sent != sent and sess._ping_sent > 0
        if sess.has_buffered() or select.select([sess.sock], [], [], 0.1)[0]:
            sess.read()
    assert pings >= 2  # each answered (else keepalive_due raises), the connection stays up
    sess.close()
    # A second connection with our client id takes the session over: the first one ends (with
    # a DISCONNECT "Session taken over" where the broker sends one; mosquitto 2.0.11 just
    # closes) and the collector reconnects after its back-off.
    first = _session(broker, pki)
    second = _session(broker, pki)
    with pytest.raises(ProtocolError, match="Session taken over|closed the connection"):
        _read(first, 1, timeout=3.0)
    first.close(graceful=False)
    second.close()


def test_a_clean_stop_acknowledges_everything_it_stored_and_nothing_comes_again(
    broker: Broker, pki: PKI, tmp_path: Path
) -> None:
    """Stopped mid-stream, a collector reads no more, commits what it read and writes those
    PUBACKs before its DISCONNECT: the same session, restarted, gets only the rest (a
    redelivery would show as a duplicate)."""
    store = open_store(f"sqlite://{tmp_path / 'hub.sqlite'}")
    ident = pki.hub
    s = CollectorSettings(host="127.0.0.1", port=broker.port, ca=str(ident.ca),
                          cert=str(ident.cert), key=str(ident.key), client_id="hub-stop",
                          batch_max=5, batch_wait=0.05, upkeep_every=60)  # fmt: skip
    col = Collector(s, store)
    col.start()
    dev = Client(broker, pki.device("dev1").cert, pki.device("dev1").key, client_id="dev1")

    def publish() -> None:  # paced, so the stop comes while alerts still arrive
        for seq in range(1, 401):
            wp = {"id": f"a{seq}", "seq": seq}
            eve = {"timestamp": "2026-12-06T21:00:00.000000+0000", "event_type": "alert",
                   "alert": {"signature": "t"}, "watchpost": wp}  # fmt: skip
            dev.c.publish("watchpost/v1/siteA/dev1/alerts", json.dumps(eve), qos=1)
            time.sleep(0.003)

    sender = threading.Thread(target=publish)
    sender.start()
    wait_for(lambda: store.alert_count() >= 20, what="first alerts stored")
    col.stop()  # mid-stream: batches read but not yet committed are finished first
    first = col.stored
    again = Collector(s, store)
    again.start()
    sender.join()
    wait_for(lambda: store.alert_count() == 400, what="the rest stored by the same session")
    time.sleep(0.5)  # a redelivered batch would arrive within this
    again.stop()
    dev.close()
    assert 0 < first < 400 and first + again.stored == 400
    assert again.metrics.alerts_duplicate._value.get() == 0
    assert store.seqs("dev1") == list(range(1, 401))
    store.close()
