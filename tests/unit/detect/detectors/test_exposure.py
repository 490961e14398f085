"""exposure: completed inbound handshakes to risky office services, and what is not one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from appliance.config import ConfigError
from appliance.detect.detectors import exposure
from tests.helpers import Harness, alert_key, at, make_config, replay_alerts, write_pcap

ATK = "198.51.100.23"
PC1 = "198.18.0.11"
PC2 = "198.18.0.12"
T0 = 1_800_000_000.0


def connect(src, dst, dport, ts, sport=40000, stage="ack"):
    """A TCP connection up to `stage`: syn, synack, rst (refused), ack (established)."""
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    pkts = [at(c / TCP(sport=sport, dport=dport, flags="S"), ts)]
    if stage == "rst":
        return [*pkts, at(s / TCP(sport=dport, dport=sport, flags="RA"), ts + 0.001)]
    if stage == "syn":
        return pkts
    pkts.append(at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.001))
    if stage == "ack":
        pkts += [
            at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.002),
            at(c / TCP(sport=sport, dport=dport, flags="PA") / b"\x03\x00\x00\x13", ts + 0.003),
            at(s / TCP(sport=dport, dport=sport, flags="PA") / b"\x03\x00\x00\x13", ts + 0.01),
            at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.02),
        ]
    return pkts


def exp_alerts(h: Harness) -> list[dict]:
    h.finish()
    return h.by_detector("exposure")


@pytest.mark.parametrize(
    ("port", "sig", "service"),
    [
        (3389, exposure.REMOTE, "Remote Desktop (RDP)"),
        (5900, exposure.REMOTE, "VNC remote desktop"),
        (23, exposure.REMOTE, "Telnet"),
        (445, exposure.FILES, "Windows file sharing (SMB)"),
        (3306, exposure.DATABASE, "MySQL database"),
        (1433, exposure.DATABASE, "Microsoft SQL Server"),
        (9100, exposure.PRINTER, "printer (JetDirect)"),
        (631, exposure.PRINTER, "printer (IPP)"),
        (515, exposure.PRINTER, "printer (LPD)"),
    ],
)
def test_internet_host_reaching_a_risky_service(port: int, sig, service: str) -> None:
    h = Harness()
    h.feed(connect(ATK, PC2, port, T0))
    (alert,) = exp_alerts(h)
    assert alert["alert"]["signature_id"] == sig.sid
    assert alert["alert"]["severity"] == sig.severity
    assert alert["src_ip"] == ATK and alert["dest_ip"] == PC2 and alert["dest_port"] == port
    d = alert["watchpost"]["details"]
    assert d["service"] == service and d["connections"] == 1 and d["direction"] == "inbound"
    assert alert["watchpost"]["direction"] == "inbound"


def test_attempts_without_a_handshake_are_not_exposure() -> None:
    pkts = connect(ATK, PC2, 3389, T0, stage="syn")
    pkts += connect(ATK, PC2, 3389, T0 + 1, sport=40001, stage="rst")
    pkts += connect(ATK, PC2, 3389, T0 + 2, sport=40002, stage="synack")  # SYN scan: no ACK
    h = Harness()
    h.feed(pkts)
    assert exp_alerts(h) == []


def test_office_host_reaching_out_is_not_exposure() -> None:
    h = Harness()
    h.feed(connect(PC1, "203.0.113.10", 3389, T0) + connect(PC1, PC2, 445, T0 + 1))
    assert exp_alerts(h) == []


def test_safe_services_are_not_reported() -> None:
    h = Harness()
    h.feed(connect(ATK, PC2, 443, T0) + connect(ATK, PC2, 80, T0 + 1, sport=40001))
    assert exp_alerts(h) == []


def test_one_alert_then_a_summary_per_repeat_period() -> None:
    pkts = []
    for i in range(50):  # 50 connections from 25 hosts over 10 minutes
        pkts += connect(f"198.51.100.{i % 25 + 1}", PC2, 3389, T0 + i * 12, sport=41000 + i)
    h = Harness(make_config(detect={"exposure": {"repeat": 3600.0}}))
    h.feed(pkts)
    alerts = exp_alerts(h)
    assert len(alerts) == 2
    assert [a["watchpost"]["count"] for a in alerts] == [1, 49]
    d = alerts[1]["watchpost"]["details"]
    assert d["connections"] == 49 and d["outside_hosts"] == 25 and len(d["sample_sources"]) == 10


def test_repeat_period_gives_periodic_summaries() -> None:
    pkts = []
    for i in range(30):  # one connection a minute for half an hour
        pkts += connect(ATK, PC2, 22, T0 + i * 60, sport=42000 + i)
    h = Harness(make_config(detect={"exposure": {"repeat": 600.0}}))
    h.feed(pkts)
    alerts = exp_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    assert 3 <= len(alerts) <= 5


def test_allow_list_silences_a_deliberate_exposure() -> None:
    cfg = make_config(detect={"exposure": {"allow": [f"{PC2}:22", "198.18.0.64/26"]}})
    h = Harness(cfg)
    h.feed(
        connect(ATK, PC2, 22, T0)
        + connect(ATK, "198.18.0.70", 3389, T0 + 1)
        + connect(ATK, PC2, 3389, T0 + 2, sport=40009)
    )
    alerts = exp_alerts(h)
    assert [(a["dest_ip"], a["dest_port"]) for a in alerts] == [(PC2, 3389)]


def test_unknown_direction_counts_unless_both_ends_are_lan() -> None:
    h = Harness(make_config(inline={"home_nets": ["10.0.0.0/8"]}))
    h.feed(
        connect(ATK, PC2, 3389, T0)  # neither side home, not both LAN-private: reported
        + connect("192.168.1.20", "192.168.1.5", 445, T0 + 1)  # both LAN-private: internal
    )
    alerts = exp_alerts(h)
    assert len(alerts) == 1
    assert alerts[0]["alert"]["signature_id"] == exposure.UNKNOWN.sid
    assert alerts[0]["watchpost"]["direction"] == "unknown"


def test_a_connection_counts_once() -> None:
    # Retransmitted SYN and many ACKs in the head of one connection: still one connection.
    c, s = IP(src=ATK, dst=PC2), IP(src=PC2, dst=ATK)
    pkts = [
        at(c / TCP(sport=40000, dport=5432, flags="S"), T0),
        at(c / TCP(sport=40000, dport=5432, flags="S"), T0 + 1),
        at(s / TCP(sport=5432, dport=40000, flags="SA"), T0 + 1.001),
    ] + [at(c / TCP(sport=40000, dport=5432, flags="A"), T0 + 1.01 + i) for i in range(5)]
    h = Harness()
    h.feed(pkts)
    (alert,) = exp_alerts(h)
    assert alert["watchpost"]["count"] == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"allow": ["198.18.0.12:99999"]}, "detect.exposure.allow[0]"),
        ({"allow": ["pc2"]}, "detect.exposure.allow[0]"),
        ({"ports": [0]}, "detect.exposure.ports[0]"),
        ({"repeat": 0.0}, "detect.exposure.repeat"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Harness(make_config(detect={"exposure": options}))
    assert e.value.key == key


def test_ipv6_allow_entry_with_port() -> None:
    cfg = make_config(
        inline={"home_nets": ["2001:db8:1::/48"]},
        detect={"exposure": {"allow": ["[2001:db8:1::12]:3389"]}},
    )
    h = Harness(cfg)
    c, s = (
        IPv6(src="2001:db8:99::1", dst="2001:db8:1::12"),
        IPv6(src="2001:db8:1::12", dst="2001:db8:99::1"),
    )
    for port, t in ((3389, T0), (445, T0 + 1)):
        h.feed(
            [
                at(c / TCP(sport=40000, dport=port, flags="S"), t),
                at(s / TCP(sport=port, dport=40000, flags="SA"), t + 0.001),
                at(c / TCP(sport=40000, dport=port, flags="A"), t + 0.002),
            ]
        )
    alerts = exp_alerts(h)
    assert [a["dest_port"] for a in alerts] == [445]


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = []
    for i in range(10):
        pkts += connect(f"198.51.100.{i + 1}", PC2, 3389, T0 + i * 5, sport=43000 + i)
    pkts += connect(ATK, PC2, 9100, T0 + 100)
    pcap = write_pcap(pkts, tmp_path / "exp.pcap")
    h = Harness()
    h.feed(pkts)
    inline = exp_alerts(h)
    replayed = replay_alerts(pcap, "exposure")

    def key(a: dict) -> tuple:
        return alert_key(a, "last_seen")

    assert sorted(map(key, inline)) == sorted(map(key, replayed))
    assert sum(a["watchpost"]["count"] for a in replayed) == 11


def test_pseudonymised_alerts_name_no_office_address() -> None:
    h = Harness(make_config(privacy={"pseudonymize": True, "key": "k" * 32}))
    pkts = []
    for i in range(5):
        pkts += connect(ATK, PC2, 3389, T0 + i * 1000, sport=44000 + i)
    h.feed(pkts)
    alerts = exp_alerts(h)
    assert alerts and all(a["src_ip"] == ATK for a in alerts)
    text = json.dumps(alerts)
    assert "198.18.0." not in text and "office-" in text
