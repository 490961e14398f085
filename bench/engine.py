"""Engine throughput on the honest office mix, against scapy and tshark in the same run.

The mix (bench/mix.py) has the session shares of a real office capture: mostly short TLS
sessions with ClientHellos, DNS with answers, some HTTP, QUIC, NTP, ICMP, with its own
timestamps (the engine ticks and ages state as inline); each pass over it starts with no flows.
Figures: ``engine_pps`` (intel only)
and ``engine_pps_all_detectors`` next to ``scapy_pps`` (scapy dissecting the same packets);
``replay_pps`` (`watchpost replay` end to end on a pcap of the mix: 1 M packets, 200 k quick)
next to ``tshark_pps`` (``tshark -q -z io,phs``: every packet dissected), alternated, medians;
``replay_cpu_s`` / ``tshark_cpu_s`` (CPU seconds, replay's workers included) and the load
average the runs started at go with them.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP

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
    """About `n_packets` raw IP packets of the honest office mix (bench/mix.py), in time order."""
    from bench.mix import office_mix_timed

    return [raw for _, raw in office_mix_timed(n_packets, seed)]


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


def engine_pps(
    packets: list[tuple[float, bytes]], store: Any, all_detectors: bool, seconds: float
) -> float:
    config = _config()
    sink = AlertPipeline(config, [])
    dets = create_detectors()
    if not all_detectors:
        dets = [d for d in dets if d.name == "intel"]
    engine = Engine(config, store, sink, detectors=dets)
    engine.tickers.append(sink.tick)
    stats = DecodeStats()
    done = 0
    span = packets[-1][0] - packets[0][0] + 1.0
    shift = 0.0
    start = time.perf_counter()
    deadline = start + seconds
    process = engine.process
    while time.perf_counter() < deadline:
        # Each pass is the mix as it came, with its own share of flow heads: without the reset
        # its flows (idle less than their timeout) would all be known and judged from the
        # second pass on, which measured mostly lookups (about twice the pps).
        engine.reset_flows()
        for ts, raw in packets:
            pkt = decode_ip(raw, ts + shift, stats)
            if pkt is not None:
                process(pkt)
        done += len(packets)
        shift += span  # the mix again, later: time keeps going forward
    return done / (time.perf_counter() - start)


def scapy_pps(packets: list[tuple[float, bytes]], seconds: float) -> float:
    """The baseline: scapy dissecting each packet and reading the same header fields."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _, raw in packets[:2000]:
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


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (the command and its children: replay's workers) of a run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def replay_vs_tshark(n: int, tmp: Path, rounds: int) -> dict[str, float]:
    from bench.mix import office_mix_timed, write_pcap

    if shutil.which("tshark") is None:
        return {}
    pcap = tmp / "mix.pcap"
    write_pcap(pcap, office_mix_timed(n, seed=11))
    cfg = tmp / "replay.toml"
    cfg.write_text('[device]\nid = "bench"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n')
    exe = str(Path(sys.executable).with_name("watchpost"))
    t_replay, t_tshark = [], []
    load = os.getloadavg()[0]
    for _ in range(rounds):  # alternated: drift of the shared machine hits both alike
        t_replay.append(_timed([exe, "replay", str(pcap), "--config", str(cfg)]))
        t_tshark.append(_timed(["tshark", "-r", str(pcap), "-q", "-z", "io,phs"]))
    r, t = statistics.median(w for w, _ in t_replay), statistics.median(w for w, _ in t_tshark)
    return {
        "replay_pps": round(n / r),
        "tshark_pps": round(n / t),
        "replay_vs_tshark_ratio": round(t / r, 2),
        "replay_capture_packets": n,
        # CPU seconds (replay: its workers' too) next to the wall-clock figures, and the load
        # the runs started at: on a shared machine the wall clock says how busy it was.
        "replay_cpu_s": round(statistics.median(c for _, c in t_replay), 2),
        "tshark_cpu_s": round(statistics.median(c for _, c in t_tshark), 2),
        "replay_load_avg": round(load, 2),
    }


def run(quick: bool) -> dict[str, Any]:
    from bench.mix import office_mix_timed

    seconds = 2.0 if quick else 6.0
    n = 20_000 if quick else 60_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        packets = office_mix_timed(n)
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
            "engine_mix": "office (bench/mix.py shares)",
        }
        out.update(replay_vs_tshark(200_000 if quick else 1_000_000, tmp, 1 if quick else 3))
    out["engine_cpu_count"] = os.cpu_count() or 0
    return out
