"""portscan: vertical and horizontal scans of every probe kind, and what only looks like one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import IPv6

from appliance.config import ConfigError
from appliance.detect.detectors import portscan
from tests.helpers import Harness, alert_key, at, make_config, replay_alerts, write_pcap

ATK = "198.51.100.23"
PC1 = "198.18.0.11"
PC2 = "198.18.0.12"
T0 = 1_800_000_000.0


def syn_probe(src, dst, sport, dport, ts, answer="rst", v6=False):
    """A SYN probe and what the target answers: rst, none, synack (then the prober's RST),
    or open (SYN-ACK, ACK: a completed connection, as a connect scan or a real client)."""
    ip = IPv6 if v6 else IP
    out = [at(ip(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=100), ts)]
    back = ip(src=dst, dst=src)
    if answer == "rst":
        out.append(at(back / TCP(sport=dport, dport=sport, flags="RA", ack=101), ts + 0.0005))
    elif answer in ("synack", "open"):
        out.append(at(back / TCP(sport=dport, dport=sport, flags="SA", ack=101), ts + 0.0005))
        flags = "R" if answer == "synack" else "A"
        out.append(
            at(ip(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags), ts + 0.001)
        )
    return out


def vertical(src=ATK, dst=PC2, ports=range(1, 1001), answer="rst", step=0.002, t0=T0, v6=False):
    pkts = []
    for i, port in enumerate(ports):
        pkts += syn_probe(src, dst, 54321, port, t0 + i * step, answer, v6)
    return pkts


def portscan_alerts(h: Harness) -> list[dict]:
    h.finish()
    return h.by_detector("portscan")


def test_1000_port_syn_scan_is_two_alerts_counting_1000_ports() -> None:
    h = Harness()
    h.feed(vertical())
    alerts = portscan_alerts(h)
    assert 1 <= len(alerts) <= 5
    assert sum(a["watchpost"]["count"] for a in alerts) == 1000
    assert {a["alert"]["signature_id"] for a in alerts} == {portscan.IN_VERTICAL.sid}
    assert all(a["src_ip"] == ATK and a["dest_ip"] == PC2 for a in alerts)
    assert all(a["watchpost"]["direction"] == "inbound" for a in alerts)
    last = alerts[-1]["watchpost"]["details"]
    assert last["ports"] == 1000 and last["hosts"] == 1 and last["status"] == "ended"
    assert last["port_range"] == [1, 1000] and last["targets"] == [PC2]
    assert last["direction"] == "inbound"
    first = alerts[0]
    assert first["watchpost"]["details"]["status"] == "started"
    assert first["alert"]["severity"] == 2 and first["alert"]["category"] == "Port scan"


def test_fires_at_the_threshold_not_before() -> None:
    h = Harness()
    h.feed(vertical(ports=range(1, 10)))
    assert portscan_alerts(h) == []
    h = Harness()
    h.feed(vertical(ports=range(1, 11)))
    (alert,) = portscan_alerts(h)
    assert alert["watchpost"]["count"] == 10


def test_threshold_is_an_option() -> None:
    h = Harness(make_config(detect={"portscan": {"ports": 5}}))
    h.feed(vertical(ports=range(1, 6)))
    assert len(portscan_alerts(h)) == 1


def test_filtered_ports_count_after_the_probe_timeout() -> None:
    # No answers at all (a firewall drops the probes): each fails when its timeout passes.
    h = Harness()
    h.feed(vertical(ports=range(1, 51), answer="none"))
    assert h.by_detector("portscan") == []  # nothing yet: all probes are still pending
    h.feed([at(IP(src=PC1, dst="203.0.113.10") / ICMP(), T0 + 30)])  # time passes
    alerts = h.by_detector("portscan")
    assert len(alerts) == 1 and alerts[0]["watchpost"]["details"]["status"] == "started"
    assert sum(a["watchpost"]["count"] for a in portscan_alerts(h)) == 50


def test_half_open_syn_scan_of_open_ports() -> None:
    h = Harness()
    h.feed(vertical(ports=range(8000, 8020), answer="synack"))
    alerts = portscan_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 20
    assert alerts[-1]["watchpost"]["details"]["probe_types"] == ["TCP half-open (SYN scan)"]


def test_connect_scan_counts_closed_ports_only() -> None:
    pkts = vertical(ports=range(1, 30), answer="rst") + vertical(
        ports=range(30, 35), answer="open", t0=T0 + 1
    )
    h = Harness()
    h.feed(pkts)
    alerts = portscan_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 29


@pytest.mark.parametrize(
    ("flags", "kind"), [("F", "TCP FIN"), ("", "TCP NULL"), ("FPU", "TCP Xmas")]
)
def test_stealth_scans(flags: str, kind: str) -> None:
    pkts = []
    for i, port in enumerate(range(1, 101)):
        probe = IP(src=ATK, dst=PC2) / TCP(sport=40000, dport=port, flags=flags)
        pkts.append(at(probe, T0 + i * 0.001))
        if port % 2:  # closed ports answer with RST, open ones stay silent
            reply = IP(src=PC2, dst=ATK) / TCP(sport=port, dport=40000, flags="RA")
            pkts.append(at(reply, T0 + i * 0.001 + 0.0002))
    h = Harness()
    h.feed(pkts)
    alerts = portscan_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 100
    assert alerts[-1]["watchpost"]["details"]["probe_types"] == [kind]


def udp_scan(ports, src=ATK, dst=PC2, t0=T0, unreachable=True):
    pkts = []
    for i, port in enumerate(ports):
        probe = IP(src=src, dst=dst) / UDP(sport=45000, dport=port)
        pkts.append(at(probe, t0 + i * 0.01))
        if unreachable:
            icmp = IP(src=dst, dst=src) / ICMP(type=3, code=3) / IPerror(bytes(probe)[:28])
            pkts.append(at(icmp, t0 + i * 0.01 + 0.001))
    return pkts


def test_udp_scan_with_icmp_port_unreachable() -> None:
    h = Harness()
    h.feed(udp_scan(range(100, 130)))
    alerts = portscan_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    assert alerts[0]["proto"] == "UDP"
    assert alerts[-1]["watchpost"]["details"]["probe_types"] == ["UDP"]


def test_udp_probes_are_judged_when_their_timeout_passes() -> None:
    # Unanswered (or ICMP-refused) UDP probes fail once probe_timeout has passed, not before.
    h = Harness()
    h.feed(udp_scan(range(100, 112)))
    assert h.by_detector("portscan") == []
    h.feed([at(IP(src=PC1, dst="203.0.113.10") / ICMP(), T0 + 6)])
    assert len(h.by_detector("portscan")) == 1


def test_refused_tcp_probes_count_at_once() -> None:
    h = Harness()
    h.feed(vertical(ports=range(1, 11)))
    assert len(h.by_detector("portscan")) == 1  # no tick needed: the RSTs are the answer


def test_outbound_horizontal_scan_by_an_office_host() -> None:
    # An office PC trying SMB on 30 internet hosts, no answers: a worm looking for victims.
    pkts = []
    for i in range(30):
        probe = IP(src=PC1, dst=f"203.0.113.{100 + i}") / TCP(sport=50000 + i, dport=445, flags="S")
        pkts.append(at(probe, T0 + i * 0.1))
    h = Harness()
    h.feed(pkts)
    alerts = portscan_alerts(h)
    assert {a["alert"]["signature_id"] for a in alerts} == {portscan.OUT_HORIZONTAL.sid}
    assert alerts[0]["alert"]["severity"] == 1
    assert "may be infected" in alerts[0]["alert"]["signature"]
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    details = alerts[-1]["watchpost"]["details"]
    assert details["scan"] == "horizontal" and details["port"] == 445 and details["hosts"] == 30
    assert alerts[0]["dest_port"] == 445 and alerts[0]["watchpost"]["direction"] == "outbound"


def test_internal_scan_is_an_office_host_scanning() -> None:
    h = Harness()
    h.feed(vertical(src=PC1, dst=PC2, ports=range(1, 21)))
    alerts = portscan_alerts(h)
    assert alerts[0]["alert"]["signature_id"] == portscan.OUT_VERTICAL.sid
    assert alerts[0]["watchpost"]["direction"] == "internal"


def test_direction_unknown_when_neither_side_is_home() -> None:
    h = Harness(make_config(inline={"home_nets": ["10.0.0.0/8"]}))
    h.feed(vertical(ports=range(1, 21)))
    alerts = portscan_alerts(h)
    assert {a["alert"]["signature_id"] for a in alerts} == {portscan.VERTICAL.sid}
    assert alerts[0]["watchpost"]["direction"] == "unknown"
    assert alerts[0]["watchpost"]["details"]["direction"] == "unknown"


def test_ipv6_scan() -> None:
    h = Harness(make_config(inline={"home_nets": ["2001:db8:1::/48"]}))
    h.feed(vertical(src="2001:db8:99::23", dst="2001:db8:1::12", ports=range(1, 101), v6=True))
    alerts = portscan_alerts(h)
    assert sum(a["watchpost"]["count"] for a in alerts) == 100
    assert alerts[0]["alert"]["signature_id"] == portscan.IN_VERTICAL.sid


def test_two_scans_far_apart_are_two_episodes() -> None:
    pkts = vertical(ports=range(1, 21)) + vertical(ports=range(1, 21), t0=T0 + 600)
    h = Harness()
    h.feed(pkts)
    alerts = portscan_alerts(h)
    assert [a["watchpost"]["details"]["status"] for a in alerts] == [
        "started",
        "ended",
        "started",
        "ended",
    ]
    assert sum(a["watchpost"]["count"] for a in alerts) == 40


def test_ignored_scanner_is_not_reported() -> None:
    h = Harness(make_config(detect={"portscan": {"ignore": ["198.51.100.0/24"]}}))
    h.feed(vertical(ports=range(1, 101)))
    assert portscan_alerts(h) == []


# -- benign look-alikes ---------------------------------------------------------------------------


def test_browser_reaching_many_sites_is_no_scan() -> None:
    pkts = []
    for i in range(60):
        pkts += syn_probe(PC1, f"203.0.113.{i + 1}", 40000 + i, 443, T0 + i * 0.05, "open")
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_passive_ftp_data_ports_are_no_scan() -> None:
    # One client, one server, many high ports: every data connection completes.
    pkts = []
    for i in range(40):
        pkts += syn_probe(PC1, "203.0.113.10", 41000 + i, 50000 + i, T0 + i * 0.2, "open")
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_answered_udp_is_no_scan() -> None:
    # DNS queries to many servers, and many ports on one server (RTP), all answered.
    pkts = []
    for i in range(40):
        q = IP(src=PC1, dst=f"203.0.113.{i + 1}") / UDP(sport=30000 + i, dport=53)
        pkts += [
            at(q, T0 + i * 0.01),
            at(IP(src=q.dst, dst=PC1) / UDP(sport=53, dport=q.sport), T0 + i * 0.01 + 0.002),
        ]
        r = IP(src=PC1, dst="203.0.113.99") / UDP(sport=16000 + 2 * i, dport=20000 + 2 * i)
        pkts += [
            at(r, T0 + i * 0.01),
            at(IP(src=r.dst, dst=PC1) / UDP(sport=r.dport, dport=r.sport), T0 + i * 0.01 + 0.003),
        ]
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_traceroute_is_no_scan() -> None:
    # UDP probes to 33434+ with rising TTLs: routers answer "time exceeded", some stay silent,
    # the destination answers "port unreachable".
    pkts = []
    t = T0
    port = 33434
    for hop in range(1, 21):
        for _ in range(3):
            probe = IP(src=PC1, dst="203.0.113.10", ttl=hop) / UDP(sport=42000, dport=port)
            pkts.append(at(probe, t))
            if hop < 20 and hop % 3:
                err = IP(src=f"192.0.2.{hop}", dst=PC1) / ICMP(type=11) / IPerror(bytes(probe)[:28])
                pkts.append(at(err, t + 0.01))
            elif hop == 20:
                err = (
                    IP(src="203.0.113.10", dst=PC1)
                    / ICMP(type=3, code=3)
                    / IPerror(bytes(probe)[:28])
                )
                pkts.append(at(err, t + 0.01))
            port += 1
            t += 0.05
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_retrying_one_dead_port_is_no_scan() -> None:
    # An app retrying a dead server for minutes, new source port each time: one target.
    pkts = [
        at(
            IP(src=PC1, dst="203.0.113.10") / TCP(sport=30000 + i, dport=8443, flags="S"),
            T0 + i * 3,
        )
        for i in range(100)
    ]
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_sliding_window_forgets_old_failures() -> None:
    # 9 failed ports, four minutes of quiet, 9 more: never 10 within a minute.
    pkts = vertical(ports=range(1, 10)) + vertical(ports=range(10, 19), t0=T0 + 240)
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


def test_mid_stream_packets_are_no_probes() -> None:
    # A capture that starts mid-connection: ACKs, FIN-ACKs, RSTs on many ports.
    pkts = []
    for i in range(50):
        flags = ("A", "FA", "R", "PA")[i % 4]
        pkts.append(
            at(IP(src=PC1, dst=PC2) / TCP(sport=40000, dport=1000 + i, flags=flags), T0 + i)
        )
    h = Harness()
    h.feed(pkts)
    assert portscan_alerts(h) == []


# -- bounded state, config, replay ----------------------------------------------------------------


def test_state_stays_bounded_under_a_random_flood() -> None:
    cfg = make_config(detect={"portscan": {"max_sources": 64}})
    h = Harness(cfg)
    det = next(d for d in h.engine.detectors if d.name == "portscan")
    rnd = random.Random(7)
    pkts = []
    for i in range(3000):
        src = f"198.51.{rnd.randrange(256)}.{rnd.randrange(256)}"
        probe = IP(src=src, dst=PC2) / TCP(
            sport=rnd.randrange(1024, 65535), dport=rnd.randrange(1, 65536), flags="S"
        )
        pkts.append(at(probe, T0 + i * 0.001))
    h.feed(pkts)
    h.feed([at(IP(src=PC1, dst=PC2) / ICMP(), T0 + 10)])
    s = det.stats()
    assert s["sources"] <= 64 and s["pending"] == 0 and s["episodes"] <= portscan.MAX_EPISODES


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"ports": 1}, "detect.portscan.ports"),
        ({"hosts": 5000}, "detect.portscan.hosts"),
        ({"window": 0.5}, "detect.portscan.window"),
        ({"probe_timeout": 120.0}, "detect.portscan.probe_timeout"),
        ({"ignore": ["not-a-net"]}, "detect.portscan.ignore[0]"),
        ({"max_sources": 3}, "detect.portscan.max_sources"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Harness(make_config(detect={"portscan": options}))
    assert e.value.key == key


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        make_config(detect={"portscan": {"treshold": 5}})
    assert e.value.key == "detect.portscan.treshold"


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = vertical(ports=range(1, 201)) + udp_scan(range(1, 40), t0=T0 + 5)
    pcap = write_pcap(pkts, tmp_path / "scan.pcap")
    h = Harness()
    h.feed(pkts)
    inline = portscan_alerts(h)
    replayed = replay_alerts(pcap, "portscan")

    def key(a: dict) -> tuple:
        return alert_key(a, "first_seen", "last_seen")

    assert sorted(map(key, inline)) == sorted(map(key, replayed))
    assert sum(a["watchpost"]["count"] for a in replayed) == 200 + 39


def test_pseudonymised_alerts_name_no_office_address() -> None:
    cfg = make_config(privacy={"pseudonymize": True, "key": "k" * 32})
    pkts = vertical(ports=range(1, 30))  # inbound: the office host is the target
    for i in range(30):  # outbound horizontal: the office host is the scanner
        probe = IP(src=PC1, dst=f"198.18.0.{100 + i}") / TCP(sport=50000 + i, dport=445, flags="S")
        pkts.append(at(probe, T0 + 1 + i * 0.1))
    h = Harness(cfg)
    h.feed(pkts)
    alerts = portscan_alerts(h)
    assert len(alerts) >= 2
    text = json.dumps(alerts)
    assert "198.18.0." not in text and "office-" in text
