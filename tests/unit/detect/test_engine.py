"""The engine: verdicts, split ClientHellos, failing detectors, block mode and its allow-list."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP

from appliance.alerts.model import Signature
from appliance.detect.base import Detector
from appliance.detect.dissect.quic import build_initial
from appliance.packet.flows import VERDICT_BLOCK, VERDICT_NONE, VERDICT_PASS
from bench.engine import tls_client_hello
from tests.helpers import Harness, make_config

PC1, WEB, EVIL = "198.18.0.11", "203.0.113.10", "203.0.113.66"


def big_hello(sni: str) -> bytes:
    """A ClientHello with a post-quantum-sized key share (~1.3 KB), as one TLS record."""
    rec = bytearray(tls_client_hello(sni))
    share = struct.pack("!HH", 0x33, 1222) + struct.pack("!H", 1220)
    share += struct.pack("!HH", 0x11EC, 1216) + bytes(1216)
    body_len = int.from_bytes(rec[6:9], "big") + len(share)
    # The extensions' length field: walk version, random, session id, ciphers, compression.
    off = 9 + 2 + 32
    off += 1 + rec[off]
    off += 2 + int.from_bytes(rec[off : off + 2], "big")
    off += 1 + rec[off]
    ext_len = int.from_bytes(rec[off : off + 2], "big") + len(share)
    rec[off : off + 2] = ext_len.to_bytes(2, "big")
    rec += share
    rec[6:9] = body_len.to_bytes(3, "big")
    rec[3:5] = (len(rec) - 5).to_bytes(2, "big")
    return bytes(rec)


def tcp(payload: bytes = b"", flags: str = "PA", sport: int = 40000, dport: int = 443):
    return IP(src=PC1, dst=WEB) / TCP(sport=sport, dport=dport, flags=flags) / payload


def intel(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "intel.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def handshake(dport: int = 443, sport: int = 40000):
    return [
        tcp(flags="S", sport=sport, dport=dport),
        IP(src=WEB, dst=PC1) / TCP(sport=dport, dport=sport, flags="SA"),
        tcp(flags="A", sport=sport, dport=dport),
    ]


def test_flow_is_judged_after_its_first_client_payload(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "listed.example")])
    verdicts = h.feed([*handshake(), tcp(tls_client_hello("www.example.com"))])
    assert verdicts == [VERDICT_NONE] * 3 + [VERDICT_PASS]


def test_split_client_hello_is_joined(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "listed.example")])
    rec = big_hello("www.listed.example")
    assert len(rec) > 1400
    verdicts = h.feed([*handshake(), tcp(rec[:1000]), tcp(rec[1000:])])
    assert verdicts[3] == VERDICT_NONE  # held, not yet judged
    assert verdicts[4] == VERDICT_PASS
    sni = [a for a in h.finish() if a.get("tls", {}).get("sni") == "www.listed.example"]
    assert len(sni) == 1 and sni[0]["alert"]["signature_id"] == 8100005
    assert sni[0]["tls"]["ja4"].startswith("t13d")


def test_quic_hello_over_two_initials(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, "quic.listed.example")])
    hello = big_hello("quic.listed.example")[5:]
    half = 700

    def crypto(offset: int, data: bytes) -> bytes:
        return b"\x06" + struct.pack("!HH", 0x4000 | offset, 0x4000 | len(data)) + data

    dcid, scid = bytes(range(8)), b"\x01\x02\x03\x04"
    first = build_initial(dcid, scid, crypto(0, hello[:half]).ljust(1150, b"\0"))
    second = build_initial(dcid, scid, crypto(half, hello[half:]).ljust(1150, b"\0"), pn=1)
    u = IP(src=PC1, dst=WEB) / UDP(sport=50000, dport=443)
    h.feed([u / first, u / second])
    hits = [a for a in h.finish() if a["watchpost"]["detector"] == "intel"]
    assert len(hits) == 1 and hits[0]["quic"]["sni"] == "quic.listed.example"


class Broken(Detector):
    name = "broken"
    signatures = (Signature(8199998, "Test: never", "Test", 3),)

    def packet(self, ctx, pkt, flow, from_client) -> None:
        raise RuntimeError("detector bug")


def test_a_failing_detector_is_counted_and_the_packet_still_judged(tmp_path: Path) -> None:
    h = Harness()
    h.engine.detectors.append(Broken())
    h.engine.configure(h.config, first=True)
    verdicts = h.feed(handshake())
    assert verdicts == [VERDICT_NONE] * 3
    assert h.engine.stats.hook_errors["broken.packet"] == 3


def test_block_mode_and_allow_list(tmp_path: Path) -> None:
    listed = intel(tmp_path, EVIL, WEB)
    cfg = make_config(inline={"mode": "block", "never_block": [WEB + "/32"]})
    blocked: list[tuple[str, int]] = []
    h = Harness(cfg, intel_paths=[listed])
    h.engine.blocker = type("B", (), {"block": lambda self, a, t: blocked.append((a, t))})()
    v_evil = h.feed([IP(src=PC1, dst=EVIL) / TCP(sport=1, dport=443, flags="S")])
    v_web = h.feed([IP(src=PC1, dst=WEB) / TCP(sport=2, dport=443, flags="S")])
    assert v_evil == [VERDICT_BLOCK] and v_web == [VERDICT_NONE]
    assert blocked == [(EVIL, cfg.inline.block_ttl)]
    actions = {a["dest_ip"]: a["alert"]["action"] for a in h.finish()}
    assert actions == {EVIL: "blocked", WEB: "allowed"}


def test_monitor_mode_never_blocks(tmp_path: Path) -> None:
    h = Harness(intel_paths=[intel(tmp_path, EVIL)])
    assert h.feed([IP(src=PC1, dst=EVIL) / TCP(sport=1, dport=443, flags="S")]) == [VERDICT_NONE]
    assert [a["alert"]["action"] for a in h.finish()] == ["allowed"]


def test_deep_ports_keep_flows_unjudged() -> None:
    h = Harness()
    assert h.engine.deep_ports().get(21, 0) > 8
    verdicts = h.feed([*handshake(dport=21), tcp(b"USER bob\r\n", dport=21)])
    assert verdicts[-1] == VERDICT_NONE
