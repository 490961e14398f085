"""The replay capture reader against scapy's readers on the same files, and its errors."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, PcapWriter, RawPcapNgReader, RawPcapReader

from appliance.packet.decode import DecodeStats
from appliance.replay import ProgressBar, ReplayError, read_capture
from appliance.replay.reader import CaptureError, Reader

DATA = Path(__file__).resolve().parents[2] / "data"


def frames(n: int = 50) -> list:
    out = []
    for i in range(n):
        p = Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(sport=1000 + i, dport=443)
        p.time = 1_800_000_000 + i * 0.001234
        out.append(p)
    out.append(Ether() / IP(src="198.18.0.11", dst="203.0.113.53") / UDP(dport=53) / (b"x" * 7))
    out[-1].time = 1_800_000_001.5
    return out


def scapy_frames(path: Path) -> list[tuple[float, bytes]]:
    reader = RawPcapReader(str(path))
    out = []
    with reader:
        for data, meta in reader:
            if isinstance(reader, RawPcapNgReader):
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
            else:
                ts = meta.sec + meta.usec / (1e9 if getattr(reader, "nano", False) else 1e6)
            out.append((ts, data))
    return out


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_frames_equal_scapys(tmp_path: Path, nano: bool, endian: str) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path), nano=nano, endianness=endian) as w:
        w.write(frames())
    ours = [(ts, data) for ts, _link, data in Reader(path)]
    theirs = scapy_frames(path)
    assert [d for _, d in ours] == [d for _, d in theirs]
    assert all(abs(a - b) < 1e-6 for (a, _), (b, _) in zip(ours, theirs, strict=True))


def test_pcapng_frames_equal_scapys(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    with PcapNgWriter(str(path)) as w:
        w.write(frames())
    ours = [(ts, link, data) for ts, link, data in Reader(path)]
    theirs = scapy_frames(path)
    assert [d for _, _, d in ours] == [d for _, d in theirs] and {x[1] for x in ours} == {1}
    assert all(abs(a[0] - b[0]) < 1e-5 for a, b in zip(ours, theirs, strict=True))


def _block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def test_pcapng_interfaces_tsresol_simple_blocks_and_sections(tmp_path: Path) -> None:
    raw_ip = bytes(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=80))
    eth = bytes(Ether() / IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=443))
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_eth = _block(1, struct.pack("<HHI", 1, 0, 65535))  # µs by default
    ns = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9
    idb_raw = _block(1, struct.pack("<HHI", 101, 0, 65535) + ns)
    t_us, t_ns = 1_800_000_000_250_000, 1_800_000_000_000_000_500
    epb = _block(
        6, struct.pack("<IIIII", 0, t_us >> 32, t_us & 0xFFFFFFFF, len(eth), len(eth)) + eth
    )
    epb2 = _block(6, struct.pack("<IIIII", 1, t_ns >> 32, t_ns & 0xFFFFFFFF, len(raw_ip),
                                 len(raw_ip)) + raw_ip)  # fmt: skip
    spb = _block(3, struct.pack("<I", len(eth)) + eth)
    path = tmp_path / "multi.pcapng"
    epb3 = _block(6, struct.pack("<IIIII", 0, t_ns >> 32, t_ns & 0xFFFFFFFF, len(raw_ip),
                                 len(raw_ip)) + raw_ip)  # fmt: skip
    path.write_bytes(shb + idb_eth + idb_raw + epb + epb2 + spb + shb + idb_raw + epb3)
    got = list(Reader(path))
    assert [(link, data) for _, link, data in got] == [(1, eth), (101, raw_ip), (1, eth),
                                                       (101, raw_ip)]  # fmt: skip
    assert got[0][0] == pytest.approx(1_800_000_000.25)
    assert got[1][0] == pytest.approx(1_800_000_000.0000005)
    stats = DecodeStats()
    assert len(list(read_capture(path, stats))) == 4 and stats.ok == 4


def test_corrupt_record_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        w.write(frames(3))
    data = bytearray(path.read_bytes())
    second = 24 + 16 + struct.unpack_from("<I", data, 24 + 8)[0]
    struct.pack_into("<I", data, second + 8, 50_000_000)  # absurd record length
    path.write_bytes(bytes(data))
    with pytest.raises(ReplayError, match=rf"c\.pcap: corrupt pcap at byte offset {second}: "):
        list(read_capture(path, DecodeStats()))
    ng = tmp_path / "c.pcapng"
    ng.write_bytes(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
                   + struct.pack("<II", 6, 13) + bytes(20))  # fmt: skip
    with pytest.raises(CaptureError, match=r"c\.pcapng: corrupt pcapng at byte offset 28: block"):
        list(Reader(ng))


def test_cut_last_record_ends_the_capture_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        w.write(frames(3))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    r = Reader(path)
    assert len(list(r)) == 3 and r.truncated_at is not None and r.truncated_at > 24


def test_dissect_capture_decodes_like_before() -> None:
    pcap = DATA / "dissect" / "handshakes.pcap"
    assert [d for _, _, d in Reader(pcap)] == [d for _, d in scapy_frames(pcap)]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_and_is_silent_when_piped(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        w.write(frames(10))
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(stream)
        list(read_capture(path, DecodeStats(), progress=bar))
        bar.finish()
    assert "100.0%" in tty.getvalue() and "packets/s" in tty.getvalue()
    assert pipe.getvalue() == ""
