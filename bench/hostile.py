"""Memory under hostile flow heads: `rss_mb_hostile_flows`.

65 536 flows (16 384 with BENCH_QUICK=1), each sending the worst-case partial handshake the
engine accepts to hold: half TCP flows with three segments of a ClientHello that never ends,
half QUIC flows with three client Initials whose CRYPTO stream never completes. Measured in a
fresh child process: the engine's RSS growth (all detectors on) after the last packet, next to
the same flows sending nothing the engine holds (a plain SYN and one ordinary segment:
`rss_mb_plain_flows`, the flow table's own cost). Goal: <= 150 MB.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from typing import Any

FLOWS = 65_536
QUICK_FLOWS = 16_384


def _rss_kb() -> int:
    for line in open("/proc/self/status"):  # noqa: SIM115 (tiny read)
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ip4(src: int, dst: int, proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                       src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + l4  # fmt: skip


def _tcp(sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 1) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + payload


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _payloads() -> tuple[list[bytes], list[bytes]]:
    """Three TCP segments of a ~16 KB ClientHello record, and three QUIC Initials of a CRYPTO
    stream that never completes (each datagram decrypts; the hello is always partial)."""
    from appliance.detect.dissect.quic import build_initial
    from bench.dissect import browser_hello

    hello = bytearray(browser_hello("hostile.example"))
    pad = 15_000
    # Grow the hello by a padding extension so it spans many segments: append the extension,
    # then fix the extensions block length and the handshake length.
    off = 4 + 2 + 32
    off += 1 + hello[off]  # session id
    off += 2 + int.from_bytes(hello[off : off + 2], "big")  # cipher suites
    off += 1 + hello[off]  # compression methods
    exts = int.from_bytes(hello[off : off + 2], "big")
    hello += struct.pack("!HH", 0x0015, pad) + bytes(pad)
    hello[off : off + 2] = (exts + 4 + pad).to_bytes(2, "big")
    hello[1:4] = (len(hello) - 4).to_bytes(3, "big")
    record = b"\x16\x03\x01" + struct.pack("!H", len(hello)) + bytes(hello)
    tcp = [record[i * 1400 : (i + 1) * 1400] for i in range(3)]
    stream = bytes(hello)
    quic = []
    for i in range(3):
        chunk = stream[i * 1000 : (i + 1) * 1000]
        frame = b"\x06" + bytes([0x40 | ((i * 1000) >> 8), (i * 1000) & 0xFF])
        frame += bytes([0x40 | (len(chunk) >> 8), len(chunk) & 0xFF]) + chunk
        frame += bytes(1200 - len(frame)) if len(frame) < 1200 else b""
        quic.append(build_initial(bytes(range(8)), b"\x01\x02\x03\x04", frame, pn=i))
    return tcp, quic


def _measure(flows: int, hostile: bool) -> float:
    code = f"""
import json, sys
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).resolve().parents[1])!r})
from bench.hostile import run_child
print(json.dumps(run_child({flows}, {hostile})))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["rss_mb"])


def run_child(flows: int, hostile: bool) -> dict[str, float]:
    from appliance.config import from_dict
    from appliance.detect.engine import Engine
    from appliance.detect.intel import IntelStore
    from appliance.packet.decode import DecodeStats, decode_ip

    tcp, quic = _payloads()
    cfg = from_dict({"inline": {"home_nets": ["198.18.0.0/15"], "max_flows": 262_144},
                     "alerts": {"rate_per_minute": 1, "burst": 1}})  # fmt: skip
    engine = Engine(cfg, IntelStore(), lambda alert: None)
    stats = DecodeStats()
    client0, server = int.from_bytes(bytes([198, 18, 0, 0]), "big"), 0xCB007100  # 203.0.113.0
    before = _rss_kb()
    ts = 1_800_000_000.0
    for i in range(flows):
        src = client0 + (i >> 12)
        sport = 1024 + (i & 0xFFF)
        dst = server + 1 + (i % 200)
        ts += 0.00001
        if i % 2 == 0:
            heads = [_tcp(sport, 443, 0x02)]
            heads += [_tcp(sport, 443, 0x18, seg, seq=2 + n * 1400) for n, seg in enumerate(tcp)]
            if not hostile:
                heads = [heads[0], _tcp(sport, 443, 0x18, b"GET / HTTP/1.1\r\n\r\n")]
            raws = [_ip4(src, dst, 6, h) for h in heads]
        else:
            dgrams = quic if hostile else [b"\x40" + bytes(40)]
            raws = [_ip4(src, dst, 17, _udp(sport, 443, d)) for d in dgrams]
        for raw in raws:
            pkt = decode_ip(raw, ts, stats)
            if pkt is not None:
                engine.process(pkt)
    return {"rss_mb": (_rss_kb() - before) / 1024, "flows": len(engine.flows)}


def run(quick: bool) -> dict[str, Any]:
    flows = QUICK_FLOWS if quick else FLOWS
    hostile = _measure(flows, True)
    plain = _measure(flows, False)
    return {
        "rss_mb_hostile_flows": round(hostile * (FLOWS / flows), 1),
        "rss_mb_plain_flows": round(plain * (FLOWS / flows), 1),
        "hostile_flows_measured": flows,
    }
