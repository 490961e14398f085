"""Engine throughput on a synthetic office mix, against scapy and tshark in the same run.

The mix is what the kernel hands to Python: flow heads (handshakes, TLS ClientHellos, HTTP
requests, QUIC Initials), all DNS, a little ICMP. Templates are built once with scapy and
varied by patching ports and addresses in the bytes, so building the mix costs little.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import PcapWriter

from appliance.alerts.pipeline import AlertPipeline
from appliance.config import from_dict
from appliance.detect import intel as intel_mod
from appliance.detect.dissect.quic import build_initial
from appliance.detect.engine import Engine
from appliance.detect.registry import create_detectors
from appliance.packet.decode import DecodeStats, decode_ip

OFFICE = [f"198.18.0.{i}" for i in range(10, 40)]
INTERNET = [f"203.0.113.{i}" for i in range(2, 250)] + [f"198.51.100.{i}" for i in range(2, 250)]


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def tls_client_hello(sni: str) -> bytes:
    """A browser-like TLS 1.3 ClientHello record (SNI, ALPN, groups, signature algorithms)."""
    name = sni.encode()
    sni_entry = b"\x00" + struct.pack("!H", len(name)) + name
    alpn = b"".join(bytes((len(p),)) + p for p in (b"h2", b"http/1.1"))
    exts = b"".join(
        [
            _ext(0x0000, struct.pack("!H", len(sni_entry)) + sni_entry),
            _ext(0x000A, bytes.fromhex("0006001d00170018")),
            _ext(0x000B, bytes.fromhex("0100")),
            _ext(0x000D, bytes.fromhex("00100403080404010503080505010806" + "0601")),
            _ext(0x0010, struct.pack("!H", len(alpn)) + alpn),
            _ext(0x002B, bytes.fromhex("0403040303")),
            _ext(0x0033, bytes.fromhex("0024001d0020") + bytes(32)),
        ]
    )
    ciphers = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x20"
        + bytes(32)
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def quic_initial(sni: str) -> bytes:
    """A real, protected QUIC v1 client Initial carrying a ClientHello (padded to 1200 bytes)."""
    hello = tls_client_hello(sni)[5:]  # the handshake message without the record layer
    crypto = b"\x06\x00" + bytes((0x40 | (len(hello) >> 8), len(hello) & 0xFF)) + hello
    return build_initial(bytes(range(8)), b"\x01\x02\x03\x04", crypto + bytes(1100 - len(crypto)))


def _flow_templates() -> list[tuple[list[bytes], bool]]:
    """Packet sequences for one flow of each kind (client 198.18.0.10:40000), and whether the
    server address must be kept (the DNS resolver)."""
    c, s = "198.18.0.10", "203.0.113.10"
    tls = [
        IP(src=c, dst=s) / TCP(sport=40000, dport=443, flags="S"),
        IP(src=s, dst=c) / TCP(sport=443, dport=40000, flags="SA"),
        IP(src=c, dst=s) / TCP(sport=40000, dport=443, flags="A"),
        IP(src=c, dst=s)
        / TCP(sport=40000, dport=443, flags="PA")
        / tls_client_hello("www.example.com"),
        IP(src=s, dst=c) / TCP(sport=443, dport=40000, flags="A"),
        IP(src=s, dst=c) / TCP(sport=443, dport=40000, flags="PA") / (b"\x16\x03\x03" + bytes(600)),
    ]
    http = [
        IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="S"),
        IP(src=s, dst=c) / TCP(sport=80, dport=40000, flags="SA"),
        IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="A"),
        IP(src=c, dst=s)
        / TCP(sport=40000, dport=80, flags="PA")
        / b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0\r\n\r\n",
        IP(src=s, dst=c) / TCP(sport=80, dport=40000, flags="PA") / b"HTTP/1.1 200 OK\r\n\r\n",
    ]
    dns = [
        IP(src=c, dst="203.0.113.53")
        / UDP(sport=40000, dport=53)
        / DNS(id=1, rd=1, qd=DNSQR(qname="www.example.com", qtype="A")),
        IP(src="203.0.113.53", dst=c)
        / UDP(sport=53, dport=40000)
        / DNS(
            id=1,
            qr=1,
            qd=DNSQR(qname="www.example.com", qtype="A"),
            an=DNSRR(rrname="www.example.com", type="A", rdata="203.0.113.10", ttl=60),
        ),
    ]
    quic = [
        IP(src=c, dst=s) / UDP(sport=40000, dport=443) / (b"\xc3\x00\x00\x00\x01" + bytes(1195))
    ]
    refused = [
        IP(src=c, dst=s) / TCP(sport=40000, dport=8443, flags="S"),
        IP(src=s, dst=c) / TCP(sport=8443, dport=40000, flags="RA"),
    ]
    icmp = [
        IP(src=c, dst=s) / ICMP(type=8, id=7) / bytes(56),
        IP(src=s, dst=c) / ICMP(type=0, id=7),
    ]
    kinds = [tls] * 5 + [http] * 2 + [dns] * 6 + [quic] * 2 + [refused] + [icmp]
    return [([bytes(p) for p in seq], seq is dns) for seq in kinds]


def _patch(raw: bytes, client: bytes, server: bytes, cport: int, from_client: bool) -> bytes:
    b = bytearray(raw)
    src, dst = (client, server) if from_client else (server, client)
    b[12:16], b[16:20] = src, dst
    ihl = (b[0] & 0x0F) * 4
    if b[9] in (6, 17):
        off = ihl if from_client else ihl + 2
        struct.pack_into("!H", b, off, cport)
    return bytes(b)


def office_mix(n_packets: int, seed: int = 7) -> list[bytes]:
    """About `n_packets` raw IP packets of interleaved office flows."""
    rng = random.Random(seed)
    templates = _flow_templates()
    office = [bytes(map(int, a.split("."))) for a in OFFICE]
    internet = [bytes(map(int, a.split("."))) for a in INTERNET]
    out: list[bytes] = []
    active: list[list[bytes]] = []
    port = 20000
    while len(out) < n_packets:
        if len(active) < 64:
            seq, keep_server = rng.choice(templates)
            client = rng.choice(office)
            server = bytes([203, 0, 113, 53]) if keep_server else rng.choice(internet)
            port = 20000 + (port - 19999) % 40000
            flow = []
            for raw in seq:
                from_client = raw[12:16] == bytes([198, 18, 0, 10])
                flow.append(_patch(raw, client, server, port, from_client))
            active.append(flow)
        i = rng.randrange(len(active))
        out.append(active[i].pop(0))
        if not active[i]:
            active.pop(i)
    return out


def _config() -> Any:
    return from_dict(
        {"device": {"id": "bench", "site": "bench"}, "inline": {"home_nets": ["198.18.0.0/24"]}}
    )


def _intel(tmp: Path) -> intel_mod.IntelStore:
    lines = [f"198.51.{i >> 8}.{i & 255}" for i in range(0, 20_000, 2)]
    lines += [f"bad{i}.example.org" for i in range(10_000)]
    p = tmp / "bench-intel.txt"
    p.write_text("\n".join(lines) + "\n")
    return intel_mod.load_files([str(p)])


def engine_pps(packets: list[bytes], store: Any, all_detectors: bool, seconds: float) -> float:
    config = _config()
    sink = AlertPipeline(config, [])
    dets = create_detectors()
    if not all_detectors:
        dets = [d for d in dets if d.name == "intel"]
    engine = Engine(config, store, sink, detectors=dets)
    engine.tickers.append(sink.tick)
    stats = DecodeStats()
    done = 0
    ts = 1_800_000_000.0
    start = time.perf_counter()
    deadline = start + seconds
    process = engine.process
    while time.perf_counter() < deadline:
        for raw in packets:
            ts += 0.0001
            pkt = decode_ip(raw, ts, stats)
            if pkt is not None:
                process(pkt)
        done += len(packets)
    return done / (time.perf_counter() - start)


def scapy_pps(packets: list[bytes], seconds: float) -> float:
    """The baseline: scapy dissecting each packet and reading the same header fields."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for raw in packets[:2000]:
            p = IP(raw)
            _ = (
                p.src,
                p.dst,
                p.proto,
                p.payload.fields.get("sport"),
                p.payload.fields.get("dport"),
            )
            done += 1
    return done / (time.perf_counter() - start)


def replay_vs_tshark(packets: list[bytes], tmp: Path) -> dict[str, float]:
    if shutil.which("tshark") is None:
        return {}
    pcap = tmp / "mix.pcap"
    eth = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"
    with PcapWriter(str(pcap), linktype=1, sync=False) as w:
        w.write_header(None)
        for i, raw in enumerate(packets):
            w.write_packet(eth + raw, sec=1_800_000_000 + i // 10_000, usec=(i % 10_000) * 100)
    cfg = tmp / "replay.toml"
    cfg.write_text('[device]\nid = "bench"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n')
    exe = Path(sys.executable).with_name("watchpost")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "replay", str(pcap), "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    t_replay = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(
        ["tshark", "-r", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    t_tshark = time.perf_counter() - t0
    n = len(packets)
    return {
        "replay_pps": round(n / t_replay),
        "tshark_pps": round(n / t_tshark),
        "replay_vs_tshark_ratio": round(t_tshark / t_replay, 2),
    }


def run(quick: bool) -> dict[str, Any]:
    seconds = 2.0 if quick else 6.0
    n = 20_000 if quick else 60_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        packets = office_mix(n)
        store = _intel(tmp)
        print(f"bench.engine: {len(packets)} packets in the mix", file=sys.stderr)
        # Alternated twice, best of each: the same treatment for engine and baseline, and a
        # busy moment on the shared machine does not decide the figure.
        pps = pps_all = s_pps = 0.0
        for _ in range(2):
            pps = max(pps, engine_pps(packets, store, all_detectors=False, seconds=seconds / 2))
            s_pps = max(s_pps, scapy_pps(packets, seconds=seconds / 4))
            pps_all = max(
                pps_all, engine_pps(packets, store, all_detectors=True, seconds=seconds / 2)
            )
        out: dict[str, Any] = {
            "engine_pps": round(pps),
            "engine_pps_all_detectors": round(pps_all),
            "scapy_pps": round(s_pps),
            "engine_vs_scapy_ratio": round(pps / s_pps, 1),
        }
        out.update(replay_vs_tshark(packets[: 50_000 if not quick else 20_000], tmp))
    out["engine_cpu_count"] = os.cpu_count() or 0
    return out
