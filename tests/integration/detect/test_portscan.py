"""portscan in the lab: real nmap and hping3 scans through the inline appliance, and replay of
the same traffic captured on its uplink port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.detect.detectors import portscan
from lab.netns import Lab

from .behaviour_lab import Watch, ended, start_watch, totals

pytestmark = pytest.mark.root

ATK, PC1, PC2, WEB = "198.51.100.23", "198.18.0.11", "198.18.0.12", "203.0.113.10"


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("portscan"))
    yield w
    w.daemon.stop()


def scans_between(alerts: list[dict], src: str, dst: str) -> list[dict]:
    return [a for a in alerts if a["src_ip"] == src and a["dest_ip"] == dst]


def test_nmap_1000_port_syn_scan_gives_at_most_5_alerts_with_the_count(watch: Watch) -> None:
    mark = watch.mark()
    with watch.capture("nmap-sS") as pcap:
        watch.lab.exec("atk", "nmap", "-sS", "-Pn", "-n", "-T4", "-p", "1-1000", PC2, timeout=90)
    alerts = scans_between(watch.wait(mark, ended(ATK, PC2), "portscan"), ATK, PC2)
    assert 1 <= len(alerts) <= 5, alerts
    assert {a["alert"]["signature_id"] for a in alerts} == {portscan.IN_VERTICAL.sid}
    assert sum(a["watchpost"]["count"] for a in alerts) == 1000
    last = alerts[-1]["watchpost"]
    assert last["details"]["ports"] == 1000 and last["details"]["port_range"] == [1, 1000]
    assert last["direction"] == "inbound"
    replayed = watch.replay(pcap)
    assert totals(replayed, "portscan") == totals(alerts, "portscan")


def test_nmap_connect_scan_from_an_office_host(watch: Watch, serve) -> None:
    serve.http("web", 80)  # one open port: a completed connection, not a failed probe
    mark = watch.mark()
    with watch.capture("nmap-sT") as pcap:
        watch.lab.exec("pc1", "nmap", "-sT", "-Pn", "-n", "-T4", "-p", "60-99", WEB, timeout=60)
    alerts = scans_between(watch.wait(mark, ended(PC1, WEB), "portscan"), PC1, WEB)
    assert alerts and {a["alert"]["signature_id"] for a in alerts} == {portscan.OUT_VERTICAL.sid}
    assert alerts[0]["alert"]["severity"] == 1
    assert sum(a["watchpost"]["count"] for a in alerts) == 39  # 40 ports, port 80 open
    assert alerts[-1]["watchpost"]["direction"] == "outbound"
    assert totals(watch.replay(pcap), "portscan") == totals(alerts, "portscan")


def test_nmap_udp_scan(watch: Watch) -> None:
    # Linux rate-limits ICMP errors to about one a second; lift that in pc2 for a quick scan.
    lab = watch.lab
    old = lab.exec("pc2", "sysctl", "-n", "net.ipv4.icmp_ratelimit").stdout.strip()
    lab.exec("pc2", "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
    try:
        mark = watch.mark()
        with watch.capture("nmap-sU") as pcap:
            lab.exec("atk", "nmap", "-sU", "-Pn", "-n", "-T4", "-p", "2000-2029", PC2, timeout=60)
        alerts = scans_between(watch.wait(mark, ended(ATK, PC2), "portscan"), ATK, PC2)
    finally:
        lab.exec("pc2", "sysctl", "-qw", f"net.ipv4.icmp_ratelimit={old}")
    assert alerts, "no alert for a UDP scan"
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    assert alerts[0]["proto"] == "UDP"
    assert "UDP" in alerts[-1]["watchpost"]["details"]["probe_types"]
    assert totals(watch.replay(pcap), "portscan") == totals(alerts, "portscan")


def test_hping3_syn_sweep_over_ports(watch: Watch) -> None:
    mark = watch.mark()
    with watch.capture("hping3-S") as pcap:
        watch.lab.exec(
            "atk", "hping3", "-q", "-S", "-p", "++3000", "-c", "40", "-i", "u10000", PC2,
            check=False, timeout=30,
        )  # fmt: skip
    alerts = scans_between(watch.wait(mark, ended(ATK, PC2), "portscan"), ATK, PC2)
    assert sum(a["watchpost"]["count"] for a in alerts) == 40
    assert totals(watch.replay(pcap), "portscan") == totals(alerts, "portscan")


def test_hping3_fin_scan_inline_and_replayed(watch: Watch) -> None:
    # FIN probes belong to no connection (conntrack INVALID): the ruleset queues them at a
    # bounded rate, and replay must see the same scan.
    mark = watch.mark()
    with watch.capture("hping3-F") as pcap:
        watch.lab.exec(
            "atk", "hping3", "-q", "-F", "-p", "++4000", "-c", "30", "-i", "u10000", PC2,
            check=False, timeout=30,
        )  # fmt: skip
    alerts = scans_between(watch.wait(mark, ended(ATK, PC2), "portscan", 8.0), ATK, PC2)
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    replayed = [a for a in watch.replay(pcap) if a["watchpost"]["detector"] == "portscan"]
    assert sum(a["watchpost"]["count"] for a in replayed) == 30
    assert replayed[-1]["watchpost"]["details"]["probe_types"] == ["TCP FIN"]


def test_ordinary_office_traffic_is_no_scan(watch: Watch, serve) -> None:
    serve.http("web", 80)
    mark = watch.mark()
    for _ in range(15):
        watch.lab.exec("pc1", "curl", "-s", "-o", "/dev/null", "-m", "3", f"http://{WEB}/")
        watch.lab.exec("pc2", "dig", "+short", "+time=1", "+tries=1", "www.example.com")
    assert watch.settle(mark, "portscan", quiet=4.0) == []
