"""`replay --workers N` gives the output of one process, byte for byte, on an office mix with
attacks of every detector family, on the dissector capture, and through the CLI."""

from __future__ import annotations

import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror

from appliance.alerts.pipeline import AlertPipeline
from appliance.config import from_dict, load
from appliance.detect import engine as engine_mod
from appliance.detect.engine import Engine
from appliance.detect.intel import IntelStore
from appliance.packet.decode import DecodeStats
from appliance.packet.flows import Flow
from appliance.replay import ReplayError, fast, parallel, replay
from appliance.replay.reader import Reader
from bench.engine import tls_client_hello
from bench.mix import RESOLVER, office_mix_timed, write_pcap

DATA = Path(__file__).resolve().parents[2] / "data"
WATCHPOST = str(Path(sys.executable).with_name("watchpost"))
LISTED = ("203.0.113.66", "198.51.100.77")


def _attacks(t0: float) -> list[tuple[float, bytes]]:
    """Scans both ways, UDP probes with ICMP answers, a traceroute, SSH brute force, an exposed
    RDP port, a random-subdomain flood, listed addresses: a packet list with timestamps."""
    rng = random.Random(3)
    out: list[tuple[float, bytes]] = []
    t = t0

    def add(pkt: IP, dt: float = 0.002) -> None:
        nonlocal t
        t += dt
        out.append((t, bytes(pkt)))

    inside, outside = "198.18.0.12", "198.51.100.23"
    for port in range(1, 160):  # inbound SYN scan of two office hosts, RSTs back
        for pc in (inside, "198.18.0.13"):
            add(IP(src=outside, dst=pc) / TCP(sport=54321, dport=port, flags="S"))
            add(IP(src=pc, dst=outside) / TCP(sport=port, dport=54321, flags="RA"))
    for port in range(1, 120):  # an office host scanning out, no answers
        add(IP(src="198.18.0.30", dst="203.0.113.90") / TCP(sport=40001, dport=port, flags="S"))
    for port in range(1, 60):  # UDP probes, ICMP port unreachable back
        probe = IP(src="198.18.0.31", dst="203.0.113.91") / UDP(sport=45000, dport=port)
        add(probe)
        add(
            IP(src="203.0.113.91", dst="198.18.0.31")
            / ICMP(type=3, code=3)
            / IPerror(bytes(probe)[:28])
        )
    for ttl in range(1, 6):  # traceroute: time exceeded from routers on the way
        probe = IP(src="198.18.0.32", dst="203.0.113.92", ttl=ttl) / UDP(
            sport=46000, dport=33434 + ttl
        )
        add(probe)
        add(
            IP(src=f"192.0.2.{ttl}", dst="198.18.0.32") / ICMP(type=11) / IPerror(bytes(probe)[:28])
        )
    for i in range(80):  # SSH brute force from outside, each attempt a short connection
        c, s, sp = (
            IP(src="198.51.100.40", dst=inside),
            IP(src=inside, dst="198.51.100.40"),
            30000 + i,
        )
        add(c / TCP(sport=sp, dport=22, flags="S"), 0.3)
        add(s / TCP(sport=22, dport=sp, flags="SA"))
        add(c / TCP(sport=sp, dport=22, flags="A"))
        add(c / TCP(sport=sp, dport=22, flags="PA") / b"SSH-2.0-libssh\r\n")
        add(c / TCP(sport=sp, dport=22, flags="FA"))
    for i in range(40):  # RDP reached from many outside hosts
        c = IP(src=f"203.0.113.{100 + i}", dst="198.18.0.14")
        add(c / TCP(sport=50000 + i, dport=3389, flags="S"), 0.05)
        add(IP(src="198.18.0.14", dst=c.src) / TCP(sport=3389, dport=50000 + i, flags="SA"))
        add(c / TCP(sport=50000 + i, dport=3389, flags="A"))
    resolver = ".".join(map(str, RESOLVER))
    for i in range(400):  # a random-subdomain flood from one office host
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
        q = IP(src="198.18.0.40", dst=resolver) / UDP(sport=20000 + i, dport=53)
        add(q / DNS(id=i, rd=1, qd=DNSQR(qname=f"{label}.flood.example.net")), 0.01)
    for i, addr in enumerate(LISTED * 10):  # listed addresses, both ways
        src = f"198.18.0.{50 + i % 5}"
        add(IP(src=src, dst=addr) / TCP(sport=41000 + i, dport=443, flags="S"), 0.1)
        add(IP(src=addr, dst=src) / TCP(sport=6000 + i, dport=41000 + i, flags="S"))
    return out


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("mix")
    office = office_mix_timed(20_000, seed=4)
    attacks = _attacks(office[0][0] + 5)
    packets = sorted(office + attacks, key=lambda p: p[0])
    pcap = d / "office-attacks.pcap"
    write_pcap(pcap, packets)
    intel = d / "intel.txt"
    intel.write_text("\n".join((*LISTED, "flood.example.net", "bad1.example.org")) + "\n")
    cfg = d / "w.toml"
    cfg.write_text(
        '[device]\nid = "r1"\nsite = "s"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n'
        f'[intel]\npaths = ["{intel}"]\n'
    )
    return pcap, cfg


def _eve(pcap: Path, cfg: Path, workers: int) -> list[str]:
    lines: list[str] = []
    result = replay(
        pcap, load(cfg), [lambda e: lines.append(repr(sorted(e.items())))], workers=workers
    )
    assert result.workers == workers
    return lines


def test_workers_give_one_process_output_on_an_attack_mix(mix: tuple[Path, Path]) -> None:
    pcap, cfg = mix
    one = _eve(pcap, cfg, 1)
    detectors = {line.split("'detector': '")[1].split("'")[0] for line in one}
    # Something to compare from every family the partition must keep whole.
    assert {"portscan", "bruteforce", "exposure", "intel", "dns-tunnel"} <= detectors, detectors
    assert len(one) >= 15
    assert _eve(pcap, cfg, 2) == one
    assert _eve(pcap, cfg, 3) == one
    assert _eve(pcap, cfg, 1) == one  # and one process is reproducible (ids from the capture)


def test_workers_on_the_handshake_capture_through_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('[device]\nid = "r1"\nsite = "s"\n[inline]\nhome_nets = ["10.0.0.0/8"]\n')
    pcap = DATA / "dissect" / "handshakes.pcap"
    outs = []
    for n in ("1", "2"):
        r = subprocess.run(
            [WATCHPOST, "replay", str(pcap), "--config", str(cfg), "--workers", n],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        outs.append(r.stdout)
        assert f"{n} worker" in r.stderr.decode()
    assert outs[0] == outs[1]


def test_a_detector_that_cannot_be_split_runs_in_one_process(mix: tuple[Path, Path]) -> None:
    pcap, cfg = mix
    config = load(cfg)
    engine = Engine(config, IntelStore(), AlertPipeline(config, []))
    assert parallel.split_problems(engine.detectors, config) == []
    engine.detectors[0].partition = "per-destination"
    assert parallel.split_problems(engine.detectors, config) == [
        "detector intel: state keyed 'per-destination'"
    ]
    block = from_dict({"inline": {"mode": "block", "home_nets": ["198.18.0.0/24"]}})
    assert parallel.split_problems(engine.detectors[1:], block)[0].startswith("block mode")
    result = replay(pcap, block, [], workers=2)
    assert result.workers == 1
    assert any("one process (block mode" in line for line in result.intel)


def _flags_times(f: Flow) -> tuple:
    return (f.tcp_flags_c, f.tcp_flags_s, f.first, f.last)


def _table(engine: Engine) -> list[list[tuple]]:
    return [
        [
            (k, f.client, f.client_port, f.direction, f.pkts_c, f.pkts_s, *_flags_times(f))
            for k, f in flows.items()
        ]
        for flows, _ in engine.flows._classes
    ]


def test_workers_pass_over_other_workers_packets_and_keep_the_whole_flow_table(
    mix: tuple[Path, Path],
) -> None:
    """A worker decodes only its own packets (and DNS, ICMP, first packets of flows), yet its
    flow table is one process's, entry for entry and in activity order."""
    pcap, cfg = mix
    config = load(cfg)
    one = Engine(config, IntelStore(), lambda a: None)
    stats = DecodeStats()
    with Reader(pcap) as r:
        frames = fast.run(r, stats, one.process)
    decoded = []
    for part in (0, 1):
        engine = parallel.PartitionEngine(config, IntelStore(), part, 2, [])
        wstats = DecodeStats()
        decoded.append(wstats)
        with Reader(pcap) as r:
            assert parallel.feed(engine, r, wstats) == frames
        assert (wstats.ok, wstats.errors) == (stats.ok, stats.errors)
        assert engine.stats.packets == one.stats.packets and engine.now == one.now
        assert _table(engine) == _table(one)
        # Most packets of the other worker's flows are passed over undecoded.
        assert engine.skipped > 0.35 * frames, (engine.skipped, frames)


def _relink(pcap: Path, out: Path, kind: str) -> None:
    """The capture again as pcapng with VLAN tags, or as raw IP (link type 101)."""
    rows = []
    with Reader(pcap) as r:
        for ts, _link, data in r:
            rows.append((ts, data))
    if kind == "raw":
        with open(out, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
            for ts, data in rows:
                sec = int(ts)
                f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data) - 14,
                                    len(data) - 14) + data[14:])  # fmt: skip
        return

    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    with open(out, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        f.write(block(1, struct.pack("<HHI", 1, 0, 0)))
        for ts, data in rows:
            tagged = data[:12] + b"\x81\x00\x00\x0a" + data[12:]
            t = round(ts * 1e6)
            f.write(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(tagged),
                                         len(tagged)) + tagged))  # fmt: skip


@pytest.mark.parametrize("kind", ["vlan-pcapng", "raw"])
def test_workers_give_one_process_output_on_other_link_layers(
    mix: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    pcap, cfg = mix
    other = tmp_path / f"c.{kind}"
    _relink(pcap, other, kind)
    one = _eve(other, cfg, 1)
    assert _eve(other, cfg, 2) == one
    # The same packets as the Ethernet capture, so the same alerts (ids come from the file).
    assert [re.sub("'id': '[^']*'", "", e) for e in one] == [
        re.sub("'id': '[^']*'", "", e) for e in _eve(pcap, cfg, 1)
    ]


def _split_hellos(path: Path, clients: int) -> None:
    """`clients` office hosts each open a TLS connection and send the first half of a
    ClientHello for a listed name; the second halves all come later."""
    hello = tls_client_hello("bad1.example.org")
    t = 1_800_000_000.0
    out: list[tuple[float, bytes]] = []
    hosts = [(f"198.18.0.{100 + i}", 42000 + i) for i in range(clients)]
    for c, port in hosts:
        for pkt in (
            IP(src=c, dst="203.0.113.200") / TCP(sport=port, dport=443, flags="S"),
            IP(src="203.0.113.200", dst=c) / TCP(sport=443, dport=port, flags="SA"),
            IP(src=c, dst="203.0.113.200") / TCP(sport=port, dport=443, flags="A"),
            IP(src=c, dst="203.0.113.200") / TCP(sport=port, dport=443, flags="PA")
            / hello[:160],
        ):  # fmt: skip
            t += 0.001
            out.append((t, bytes(pkt)))
    for c, port in hosts:
        t += 0.001
        pkt = IP(src=c, dst="203.0.113.200") / TCP(sport=port, dport=443, flags="PA") / hello[160:]
        out.append((t, bytes(pkt)))
    write_pcap(path, out)


def test_more_partial_hellos_than_one_process_holds_are_replayed_in_one_process(
    mix: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers would each hold up to HOLDING_FLOWS partial hellos, one process holds that
    many over all: when the workers' holds together pass the bound, the run is made again in
    one process (same output) and says so; under the bound the workers' output stands."""
    _pcap, cfg = mix
    pcap = tmp_path / "split.pcap"
    _split_hellos(pcap, 12)
    one = _eve(pcap, cfg, 1)
    assert len(one) == 12  # every flow's hello was whole in the end: the listed name, 12 times
    assert _eve(pcap, cfg, 2) == one
    monkeypatch.setattr(engine_mod, "HOLDING_FLOWS", 4)
    one = _eve(pcap, cfg, 1)
    assert len(one) == 4  # the 8 oldest gave up: judged on half a hello, no name
    lines: list[str] = []
    result = replay(pcap, load(cfg), [lambda e: lines.append(repr(sorted(e.items())))], workers=2)
    assert result.workers == 1 and lines == one
    assert any("one process (with 2 workers more than 4 flows" in n for n in result.intel)


def test_the_flow_table_bound_evicts_as_in_one_process(
    mix: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every worker keeps the whole flow table (other workers' flows too, updated without
    decoding), so inline.max_flows evicts the same flows at the same packets as one process."""
    pcap, cfg = mix
    small = tmp_path / "small.toml"
    small.write_text(cfg.read_text().replace("[inline]\n", "[inline]\nmax_flows = 256\n"))
    config = load(small)
    one = Engine(config, IntelStore(), lambda a: None)
    with Reader(pcap) as r:
        fast.run(r, DecodeStats(), one.process)
    assert one.flows.evicted > 1000
    engine = parallel.PartitionEngine(config, IntelStore(), 1, 2, [])
    with Reader(pcap) as r:
        parallel.feed(engine, r, DecodeStats())
    assert engine.flows.evicted == one.flows.evicted and _table(engine) == _table(one)
    assert _eve(pcap, small, 2) == _eve(pcap, small, 1)


def test_workers_report_a_cut_capture_and_refuse_a_corrupt_one(
    mix: tuple[Path, Path], tmp_path: Path
) -> None:
    pcap, cfg = mix
    data = pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2])
    results = [replay(cut, load(cfg), [], workers=w) for w in (1, 2)]
    assert results[0].truncated_at is not None
    assert [(r.packets, r.truncated_at, r.alerts) for r in results] == [
        (results[0].packets, results[0].truncated_at, results[0].alerts)
    ] * 2
    bad = bytearray(data)
    bad[24 + 8 : 24 + 12] = (10**7).to_bytes(4, "little")  # the first record's length
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(ReplayError, match="corrupt pcap at byte offset 24"):
        replay(corrupt, load(cfg), [], workers=2)


def test_a_worker_ends_on_the_clock_of_the_last_packet_even_when_it_passed_it_over(
    tmp_path: Path,
) -> None:
    """The end-of-capture tick is at the last packet's time + 1e9 in every worker: here worker
    0's last packets are another worker's (one of a known flow, then a flow's first)."""
    other, own = "198.18.0.12", "198.18.0.10"  # crc32 % 2: worker 1, worker 0
    pkts = [
        IP(src=other, dst="203.0.113.5") / TCP(sport=40000, dport=443, flags="S"),
        IP(src=own, dst="203.0.113.5") / TCP(sport=40001, dport=443, flags="S"),
        IP(src=other, dst="203.0.113.5") / TCP(sport=40000, dport=443, flags="A"),
        IP(src=other, dst="203.0.113.6") / TCP(sport=40002, dport=443, flags="S"),
    ]
    pcap = tmp_path / "end.pcap"
    write_pcap(pcap, [(1_800_000_000.0 + i * 0.25, bytes(p)) for i, p in enumerate(pkts)])
    config = from_dict({"inline": {"home_nets": ["198.18.0.0/24"]}})
    engine = parallel.PartitionEngine(config, IntelStore(), 0, 2, [])
    with Reader(pcap) as r:
        assert parallel.feed(engine, r, DecodeStats()) == 4
    assert engine.skipped == 3 and engine.now == 1_800_000_000.75
