"""bruteforce: many accepted connections to one login service, and what only looks like it."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from appliance.config import ConfigError
from appliance.detect.detectors import bruteforce
from tests.helpers import Harness, alert_key, at, make_config, replay_alerts, write_pcap

ATK = "198.51.100.23"
PC1 = "198.18.0.11"
PC2 = "198.18.0.12"
T0 = 1_800_000_000.0


def session(src, dst, dport, sport, ts, answer="accept", end=True):
    """One login attempt: handshake, a little data each way, and the server closing.
    `answer="refuse"` is a closed port (RST), `"none"` an unanswered SYN."""
    c = IP(src=src, dst=dst)
    s = IP(src=dst, dst=src)
    pkts = [at(c / TCP(sport=sport, dport=dport, flags="S"), ts)]
    if answer == "refuse":
        return [*pkts, at(s / TCP(sport=dport, dport=sport, flags="RA"), ts + 0.001)]
    if answer == "none":
        return pkts
    pkts += [
        at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.001),
        at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.002),
        at(s / TCP(sport=dport, dport=sport, flags="PA") / b"SSH-2.0-OpenSSH_9.2\r\n", ts + 0.01),
        at(c / TCP(sport=sport, dport=dport, flags="PA") / b"SSH-2.0-hydra\r\n", ts + 0.02),
    ]
    if end:
        pkts.append(at(s / TCP(sport=dport, dport=sport, flags="FA"), ts + 0.5))
    return pkts


def attempts(n, src=ATK, dst=PC2, dport=22, every=2.0, t0=T0, **kw):
    pkts = []
    for i in range(n):
        pkts += session(src, dst, dport, 40000 + i, t0 + i * every, **kw)
    return pkts


def bf_alerts(h: Harness) -> list[dict]:
    h.finish()
    return h.by_detector("bruteforce")


def test_ssh_brute_force_from_the_internet() -> None:
    h = Harness()
    h.feed(attempts(30))
    alerts = bf_alerts(h)
    assert len(alerts) == 2
    assert {a["alert"]["signature_id"] for a in alerts} == {bruteforce.INBOUND.sid}
    assert sum(a["watchpost"]["count"] for a in alerts) == 30
    first, last = alerts
    assert (
        first["watchpost"]["count"] == 10 and first["watchpost"]["details"]["status"] == "started"
    )
    d = last["watchpost"]["details"]
    assert d["service"] == "SSH" and d["attempts"] == 30 and d["status"] == "ended"
    assert d["direction"] == "inbound" and last["watchpost"]["direction"] == "inbound"
    assert first["src_ip"] == ATK and first["dest_ip"] == PC2 and first["dest_port"] == 22
    assert first["alert"]["severity"] == 1 and first["alert"]["category"] == "Brute force"


@pytest.mark.parametrize(
    ("port", "service"),
    [
        (3389, "Remote Desktop (RDP)"),
        (445, "Windows file sharing (SMB)"),
        (21, "FTP"),
        (23, "Telnet"),
        (5900, "VNC remote desktop"),
        (1433, "Microsoft SQL Server"),
        (3306, "MySQL database"),
        (5432, "PostgreSQL database"),
    ],
)
def test_every_login_service(port: int, service: str) -> None:
    h = Harness()
    h.feed(attempts(12, dport=port, end=False))
    alerts = bf_alerts(h)
    assert alerts and alerts[0]["watchpost"]["details"]["service"] == service


def test_outbound_brute_force_by_an_office_host() -> None:
    h = Harness()
    h.feed(attempts(15, src=PC1, dst="203.0.113.10", dport=3389))
    alerts = bf_alerts(h)
    assert alerts[0]["alert"]["signature_id"] == bruteforce.OUTBOUND.sid
    assert "may be infected" in alerts[0]["alert"]["signature"]
    assert alerts[0]["watchpost"]["direction"] == "outbound"


def test_internal_brute_force() -> None:
    h = Harness()
    h.feed(attempts(15, src=PC1, dst=PC2, dport=445))
    assert bf_alerts(h)[0]["alert"]["signature_id"] == bruteforce.INTERNAL.sid


def test_direction_unknown_when_neither_side_is_home() -> None:
    h = Harness(make_config(inline={"home_nets": ["10.0.0.0/8"]}))
    h.feed(attempts(15))
    alerts = bf_alerts(h)
    assert alerts[0]["alert"]["signature_id"] == bruteforce.UNKNOWN.sid
    assert alerts[0]["watchpost"]["direction"] == "unknown"


def test_options_change_the_threshold_and_ports() -> None:
    cfg = make_config(detect={"bruteforce": {"attempts": 5, "ports": [2222]}})
    h = Harness(cfg)
    h.feed(attempts(5, dport=2222) + attempts(20, dport=22, t0=T0 + 1000))
    alerts = bf_alerts(h)
    assert len(alerts) == 1 and alerts[0]["dest_port"] == 2222
    assert alerts[0]["watchpost"]["details"]["service"] == "TCP port 2222"


# -- benign look-alikes ---------------------------------------------------------------------------


def test_a_few_logins_are_fine() -> None:
    h = Harness()
    h.feed(attempts(5))
    assert bf_alerts(h) == []


def test_slow_attempts_spread_over_hours_are_not_a_run() -> None:
    # A backup job logging in by SSH every five minutes.
    h = Harness()
    h.feed(attempts(40, every=300.0))
    assert bf_alerts(h) == []


def test_refused_or_unanswered_connections_are_not_logins() -> None:
    # Knocking on a closed or filtered SSH port is a scan's business, not a login attempt.
    h = Harness()
    h.feed(attempts(30, answer="refuse") + attempts(30, answer="none", t0=T0 + 100))
    assert bf_alerts(h) == []


def test_many_connections_to_a_web_server_are_not_logins() -> None:
    h = Harness()
    h.feed(attempts(100, src=PC1, dst="203.0.113.10", dport=443, every=0.2))
    assert bf_alerts(h) == []


def test_many_users_each_logging_in_once() -> None:
    # Twenty office hosts opening file shares on one server: one source each.
    pkts = []
    for i in range(20):
        pkts += session(f"198.18.0.{100 + i}", PC2, 445, 50000, T0 + i)
    h = Harness()
    h.feed(pkts)
    assert bf_alerts(h) == []


# -- bounded state, config, replay ----------------------------------------------------------------


def test_state_stays_bounded() -> None:
    h = Harness(make_config(detect={"bruteforce": {"max_pairs": 32}}))
    det = next(d for d in h.engine.detectors if d.name == "bruteforce")
    pkts = []
    for i in range(500):
        pkts += session(
            f"198.51.100.{i % 250}", f"198.18.0.{i % 7 + 1}", 22, 40000 + i, T0 + i * 0.01
        )
    h.feed(pkts)
    assert det.stats()["pairs"] <= 32


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"attempts": 1}, "detect.bruteforce.attempts"),
        ({"ports": [22, 0]}, "detect.bruteforce.ports[1]"),
        ({"ports": [70000]}, "detect.bruteforce.ports[0]"),
        ({"window": 0}, "detect.bruteforce.window"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Harness(make_config(detect={"bruteforce": options}))
    assert e.value.key == key


def test_ports_must_be_numbers() -> None:
    with pytest.raises(ConfigError) as e:
        make_config(detect={"bruteforce": {"ports": ["ssh"]}})
    assert e.value.key == "detect.bruteforce.ports[0]"


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = attempts(25) + attempts(12, src=PC1, dst="203.0.113.10", dport=3389, t0=T0 + 3)
    pkts.sort(key=lambda p: p.time)
    pcap = write_pcap(pkts, tmp_path / "bf.pcap")
    h = Harness()
    h.feed(pkts)
    inline = bf_alerts(h)
    replayed = replay_alerts(pcap, "bruteforce")

    def key(a: dict) -> tuple:
        return alert_key(a, "first_seen")

    assert sorted(map(key, inline)) == sorted(map(key, replayed))
    assert len(replayed) == 4
