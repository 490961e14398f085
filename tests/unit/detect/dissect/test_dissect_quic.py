"""QUIC Initial dissection: the RFC 9001 Appendix A client Initial, crafted Initials with
scattered CRYPTO frames (as Chrome sends them), hellos over two packets, QUIC v2, and tshark's
own decryption of the same packets as the cross-check."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from appliance.detect.dissect import Dissectors
from appliance.detect.dissect.quic import (
    QUIC_V1,
    QUIC_V2,
    build_initial,
    client_initial_keys,
    crypto_frames,
    decrypt_initial,
    parse_initial,
    parse_initials,
)
from appliance.detect.dissect.tls import parse_handshake
from tests.unit.detect.dissect.build import (
    RFC_CLIENT_HP,
    RFC_CLIENT_IV,
    RFC_CLIENT_KEY,
    RFC_DCID,
    RFC_HELLO,
    RFC_PAYLOAD,
    RFC_PROTECTED,
    client_hello,
    crypto_frame,
    default_extensions,
    ext,
    ext_sni,
    ext_versions,
    ja4_reference,
    write_udp_pcap,
)
from tests.unit.detect.dissect.capture import tshark_fields, tshark_hellos

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

DCID = bytes.fromhex("0011223344556677")
SCID = bytes.fromhex("a1a2a3a4")


def _padded(frames: bytes, size: int = 1162) -> bytes:
    return frames + bytes(max(0, size - len(frames)))


def _quic_hello(sni: str = "h3.example.com") -> bytes:
    """A browser-like QUIC ClientHello: TLS 1.3 only, ALPN h3, transport parameters."""
    exts = default_extensions(sni=sni, alpn=(b"h3",))
    exts.append(ext(0x0039, bytes.fromhex("0104800075300304800fffff")))
    return client_hello([0x1301, 0x1302, 0x1303], exts)


# -- RFC 9001 Appendix A -------------------------------------------------------------------------


def test_rfc9001_client_initial_keys() -> None:
    assert client_initial_keys(RFC_DCID) == (RFC_CLIENT_KEY, RFC_CLIENT_IV, RFC_CLIENT_HP)


def test_rfc9001_client_initial_protection_is_reproduced() -> None:
    """Protecting A.2's payload (packet number 2) gives A.2's protected packet byte for byte."""
    assert build_initial(RFC_DCID, b"", RFC_PAYLOAD, pn=2) == RFC_PROTECTED


def test_rfc9001_client_initial_decrypts_to_its_payload() -> None:
    got = decrypt_initial(RFC_PROTECTED)
    assert got == (QUIC_V1, RFC_PAYLOAD)


def test_rfc9001_client_initial_hello() -> None:
    hello = parse_initial(RFC_PROTECTED)
    assert hello is not None
    assert hello.quic and not hello.partial
    assert hello.sni == "example.com"
    assert hello.alpn == ["alpn"]
    assert hello.supported_versions == [0x0304]
    # As ja4plus 1.4.0 (an independent implementation, run once) computes it for this packet.
    assert hello.ja4 == "q13d0211an_62ed6f6ca7ad_4d634acda6c0"
    assert hello == parse_handshake(RFC_HELLO, quic=True)
    assert hello.eve() == {"quic": {"sni": "example.com", "ja4": hello.ja4}}


@needs_tshark
def test_rfc9001_client_initial_agrees_with_tshark(tmp_path: Path) -> None:
    pcap = write_udp_pcap(tmp_path / "rfc9001.pcap", [RFC_PROTECTED], 443)
    fields = tshark_fields(
        pcap, ["tls.handshake.extensions_server_name", "tls.handshake.ja3_full", "quic.version"]
    )
    hello = parse_initial(RFC_PROTECTED)
    assert hello is not None
    assert fields[1]["quic.version"] == ["0x00000001"]
    assert hello.sni == fields[1]["tls.handshake.extensions_server_name"][0]
    assert hello.ja3 == fields[1]["tls.handshake.ja3_full"][0]
    assert hello.ja4 == ja4_reference(tshark_hellos(pcap)[1], quic=True)


# -- crafted Initials ----------------------------------------------------------------------------


def _scattered(hello: bytes, seed: int) -> bytes:
    """The hello in CRYPTO frames of random sizes, shuffled, with PING and PADDING between
    them and an ACK in front: the frame soup Chrome's Initials are made of."""
    rng = random.Random(seed)
    chunks, off = [], 0
    while off < len(hello):
        size = rng.randint(1, 60)
        chunks.append(crypto_frame(off, hello[off : off + size]))
        off += size
    rng.shuffle(chunks)
    frames = b"\x02\x00\x00\x00\x00"  # ACK: largest 0, delay 0, no extra ranges, first range 0
    for c in chunks:
        frames += c + rng.choice([b"", b"\x01", bytes(rng.randint(1, 20))])
    return _padded(frames, max(1162, len(frames)))


def test_scattered_crypto_frames_are_reassembled() -> None:
    hello = _quic_hello()
    want = parse_handshake(hello, quic=True)
    assert want is not None and want.sni == "h3.example.com"
    for seed in range(20):
        packet = build_initial(DCID, SCID, _scattered(hello, seed), pn=seed)
        assert parse_initial(packet) == want, seed


def test_overlapping_crypto_frames() -> None:
    hello = _quic_hello()
    frames = (
        crypto_frame(50, hello[50:]) + crypto_frame(0, hello[:80]) + crypto_frame(30, hello[30:60])
    )
    got = parse_initial(build_initial(DCID, SCID, _padded(frames)))
    assert got == parse_handshake(hello, quic=True)


@needs_tshark
def test_scattered_initial_agrees_with_tshark(tmp_path: Path) -> None:
    hello = _quic_hello("scattered.example.org")
    packets = [build_initial(bytes([i]) * 8, SCID, _scattered(hello, i)) for i in range(3)]
    pcap = write_udp_pcap(tmp_path / "scattered.pcap", packets, 443)
    fields = tshark_fields(pcap, ["tls.handshake.extensions_server_name"])
    hellos = tshark_hellos(pcap)
    for frame, packet in enumerate(packets, start=1):
        got = parse_initial(packet)
        assert got is not None
        assert got.sni == fields[frame]["tls.handshake.extensions_server_name"][0]
        assert got.ja4 == ja4_reference(hellos[frame], quic=True)


def test_hello_over_two_initial_packets() -> None:
    """A post-quantum-sized hello: the first packet gives a partial record with the SNI sent
    early; the second packet (stream offset > 0 only) gives nothing."""
    exts = [ext_sni("pq.example.com"), ext(0x0033, b"\x00" * 1500), ext_versions([0x0304])]
    hello = client_hello([0x1301], exts)
    first = build_initial(DCID, SCID, _padded(crypto_frame(0, hello[:1000])), pn=0)
    second = build_initial(DCID, SCID, _padded(crypto_frame(1000, hello[1000:])), pn=1)
    got = parse_initial(first)
    assert got is not None
    assert got.partial and got.sni == "pq.example.com" and got.ja4 == ""
    assert parse_initial(second) is None
    whole = parse_handshake(hello, quic=True)
    assert parse_initials([first, second]) == whole
    assert parse_initials([second, b"junk", first]) == whole  # any order, undecryptable skipped
    assert parse_initials([second]) is None


def test_quic_v2_initial() -> None:
    hello = _quic_hello("v2.example.com")
    packet = build_initial(DCID, SCID, _padded(crypto_frame(0, hello)), version=QUIC_V2)
    assert packet[0] & 0x30 == 0x10  # v2 numbers Initial as type 1
    got = parse_initial(packet)
    assert got is not None and got.sni == "v2.example.com" and got.ja4.startswith("q13d")
    # v1 keys do not open a v2 packet: the version decides the salt and labels.
    relabelled = bytearray(packet)
    relabelled[1:5] = QUIC_V1.to_bytes(4, "big")
    assert parse_initial(bytes(relabelled)) is None


def test_payload_with_only_padding_and_ping() -> None:
    packet = build_initial(DCID, SCID, _padded(b"\x01"))
    assert decrypt_initial(packet) is not None
    assert parse_initial(packet) is None


def test_unknown_frame_stops_the_frame_walk() -> None:
    hello = _quic_hello()
    frames = crypto_frame(0, hello) + b"\x1c\x00\x00\x00" + crypto_frame(len(hello), b"junk")
    buf = crypto_frames(_padded(frames))
    assert buf is not None and buf.contiguous() == hello


def _flip(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x40
    return bytes(out)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        RFC_PROTECTED[:30],  # truncated
        RFC_PROTECTED[:-1],  # one byte short of its Length
        _flip(RFC_PROTECTED, 600),  # ciphertext altered: the tag does not verify
        _flip(RFC_PROTECTED, 8),  # DCID altered: other keys
        bytes([0xE0]) + RFC_PROTECTED[1:],  # a Handshake packet (type 2), not Initial
        bytes([0x40]) + RFC_PROTECTED[1:],  # a short header
        RFC_PROTECTED[:1] + bytes.fromhex("ff00001d") + RFC_PROTECTED[5:],  # draft-29
        RFC_PROTECTED[:5] + b"\x15" + bytes(21) + RFC_PROTECTED[14:],  # DCID longer than 20
    ],
)
def test_not_a_client_initial(packet: bytes) -> None:
    assert parse_initial(packet) is None


def test_coalesced_datagram_reads_the_first_packet() -> None:
    datagram = RFC_PROTECTED + build_initial(DCID, SCID, _padded(b"\x01"))
    hello = parse_initial(datagram)
    assert hello is not None and hello.sni == "example.com"


def test_dissectors_counts_quic() -> None:
    d = Dissectors()
    assert d.quic(RFC_PROTECTED) is not None
    assert d.quic(_flip(RFC_PROTECTED, 600)) is None
    assert d.parsed["quic"] == 1 and d.malformed["quic"] == 1
