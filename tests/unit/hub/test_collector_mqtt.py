"""The collector's MQTT 5 packet code (hub/collector/mqtt.py), checked against paho's encoder:
what paho builds, the lean reader cuts out and decodes the same way."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.collector.mqtt import (
    ProtocolError,
    decode_publish,
    parse_properties,
    publish_packet,
    reason_text,
    split_packets,
)


def _paho_publish(topic: str, payload: bytes, mid: int, props: Properties | None) -> bytes:
    """A PUBLISH as paho 2.x encodes it (its properties code), built by hand around them."""
    p = props.pack() if props is not None else b"\x00"
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + p + payload
    n, length = len(body), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        length.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes([0x32 | 0x08]) + bytes(length) + body  # QoS 1, DUP


def test_publish_with_properties_and_a_long_length_decodes_to_topic_payload_mid() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("k", "v" * 300)]  # properties longer than 127 bytes: 2-byte length
    props.MessageExpiryInterval = 60
    payload = b"{" + b"x" * 20000 + b"}"  # a 3-byte remaining length
    raw = _paho_publish("watchpost/v1/s/d/alerts", payload, 513, props)
    packets, used = split_packets(bytearray(raw))
    assert used == len(raw) and len(packets) == 1
    m = decode_publish(*packets[0])
    assert (m.topic, m.payload, m.qos, m.mid, m.dup, m.retain) == (
        "watchpost/v1/s/d/alerts", payload, 1, 513, True, False)  # fmt: skip


def test_packets_arriving_in_pieces_are_cut_only_when_whole() -> None:
    raw = b"".join(publish_packet(f"t/{i}", b"p" * (i * 50), i + 1) for i in range(6))
    buf = bytearray()
    got = []
    for i in range(0, len(raw), 7):  # 7 bytes at a time, across every header and length
        buf += raw[i : i + 7]
        packets, used = split_packets(buf)
        del buf[:used]
        got += [decode_publish(f, b) for f, b in packets]
    assert not buf
    assert [(m.topic, len(m.payload), m.mid) for m in got] == [
        (f"t/{i}", i * 50, i + 1) for i in range(6)]  # fmt: skip


def test_broker_properties_are_read_and_reason_codes_named() -> None:
    props = Properties(PacketTypes.CONNACK)
    props.ServerKeepAlive = 20
    props.ReasonString = "quota"
    props.UserProperty = [("a", "b")]
    parsed, end = parse_properties(props.pack(), 0)
    assert parsed[0x13] == 20 and parsed[0x1F] == b"quota" and end == len(props.pack())
    assert reason_text(PacketTypes.CONNACK, 0x87, parsed) == "Not authorized (quota)"
    assert reason_text(PacketTypes.SUBACK, 0x87) == "Not authorized"


@pytest.mark.parametrize(
    ("first", "body"),
    [
        (0x34, b"\x00\x01t\x00\x01\x00"),  # QoS 2: never granted by our subscriptions
        (0x32, b"\x00\x00\x00\x01\x00"),  # no topic (aliases are not enabled)
    ],
)
def test_what_the_collector_does_not_speak_is_a_protocol_error(first: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_publish(first, body)


def test_an_absurd_length_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(ProtocolError):
        split_packets(bytearray(b"\x30\xff\xff\xff\x7f"))  # 256 MiB
