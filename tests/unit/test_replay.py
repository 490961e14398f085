"""`watchpost replay` over captures of every supported kind, and clear errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.utils import PcapWriter, wrpcap, wrpcapng

from appliance.packet.decode import DecodeStats
from appliance.replay import ReplayError, read_capture, replay

WATCHPOST = str(Path(sys.executable).with_name("watchpost"))
LISTED = "203.0.113.66"


def syn(dst: str = LISTED) -> IP:
    return IP(src="198.18.0.11", dst=dst) / TCP(sport=40000, dport=443, flags="S")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    intel = tmp_path / "intel.txt"
    intel.write_text(f"# lab list\n{LISTED}\n")
    c = tmp_path / "w.toml"
    c.write_text(
        '[device]\nid = "r1"\nsite = "s"\n[inline]\nhome_nets = ["198.18.0.0/24"]\n'
        f'[intel]\npaths = ["{intel}"]\n'
    )
    return c


def run_replay(pcap: Path, cfg: Path) -> tuple[int, list[dict], str]:
    r = subprocess.run(
        [WATCHPOST, "replay", str(pcap), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    alerts = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return r.returncode, alerts, r.stderr


@pytest.mark.parametrize(
    ("frame", "linktype"),
    [
        (Ether() / syn(), None),
        (Ether() / Dot1Q(vlan=10) / syn(), None),
        (Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / syn(), None),
        (Ether() / PPPoE(sessionid=1) / PPP(proto=0x0021) / syn(), None),
        (CookedLinux(proto=0x0800) / syn(), 113),
        (syn(), 101),
        (syn(), 12),  # DLT_RAW as OpenBSD numbers it
        (syn(), 14),  # DLT_RAW as BSD/OS numbers it
    ],
)
def test_link_types_give_the_alert(tmp_path: Path, cfg: Path, frame, linktype) -> None:
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), [frame], linktype=linktype)
    code, alerts, err = run_replay(pcap, cfg)
    assert code == 0, err
    assert [a["dest_ip"] for a in alerts] == [LISTED]
    assert alerts[0]["watchpost"]["detector"] == "intel"
    assert alerts[0]["watchpost"]["direction"] == "outbound"


def test_pcapng_and_sll2(tmp_path: Path, cfg: Path) -> None:
    ng = tmp_path / "c.pcapng"
    wrpcapng(str(ng), [Ether() / syn(), Ether() / syn("203.0.113.10")])
    code, alerts, err = run_replay(ng, cfg)
    assert code == 0, err
    assert len(alerts) == 1
    # SLL2 (link type 276): scapy writes the header bytes we give it.
    hdr = bytes.fromhex("08000000") + (3).to_bytes(4, "big") + bytes.fromhex("00010006") + bytes(8)
    sll2 = tmp_path / "sll2.pcap"
    with PcapWriter(str(sll2), linktype=276) as w:
        w.write(hdr + bytes(syn()))
    code, alerts, err = run_replay(sll2, cfg)
    assert code == 0, err
    assert len(alerts) == 1


def test_same_engine_in_process(tmp_path: Path, cfg: Path) -> None:
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), [Ether() / syn(), Ether() / b"\x08\x00junk"])
    got: list[dict] = []
    from appliance.config import load

    result = replay(pcap, load(cfg), [got.append])
    assert result.alerts == 1 and len(got) == 1
    assert result.malformed == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a pcap"),
        (b"this is not a capture file at all" * 10, "not a pcap"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path: Path, cfg: Path, content: bytes, message) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    code, alerts, err = run_replay(bad, cfg)
    assert code != 0 and not alerts
    assert err.strip().startswith("error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_file_and_truncated_capture(tmp_path: Path, cfg: Path) -> None:
    code, _, err = run_replay(tmp_path / "absent.pcap", cfg)
    assert code != 0 and "no such file" in err
    pcap = tmp_path / "cut.pcap"
    wrpcap(str(pcap), [Ether() / syn(), Ether() / syn()])
    data = pcap.read_bytes()
    pcap.write_bytes(data[:-10])  # half-written last record
    code, alerts, err = run_replay(pcap, cfg)
    assert code == 0, err
    assert len(alerts) == 1


def test_unsupported_linktype_is_named(tmp_path: Path) -> None:
    pcap = tmp_path / "usb.pcap"
    with PcapWriter(str(pcap), linktype=189) as w:  # USB
        w.write(b"\x00" * 40)
    with pytest.raises(ReplayError, match="unsupported link type 189"):
        list(read_capture(pcap, DecodeStats()))


def test_replay_without_config_uses_defaults(tmp_path: Path) -> None:
    pcap = tmp_path / "c.pcap"
    wrpcap(str(pcap), [Ether() / syn()])
    r = subprocess.run([WATCHPOST, "replay", str(pcap)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == ""
    assert "1 packets" in r.stderr
