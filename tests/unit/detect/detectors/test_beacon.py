"""beacon: regular calls to one destination despite jitter; irregular or rare ones are no beacon."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP

from appliance.config import ConfigError
from appliance.detect.detectors import beacon
from tests.helpers import Harness, at, make_config, replay_alerts, write_pcap

PC1 = "198.18.0.11"
C2 = "203.0.113.66"
T0 = 1_800_000_000.0


def call(ts, src=PC1, dst=C2, dport=443, sport=40000, proto="tcp"):
    """One check-in: a TCP handshake (or a UDP query and its answer)."""
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    if proto == "udp":
        return [
            at(c / UDP(sport=sport, dport=dport) / b"x", ts),
            at(s / UDP(sport=dport, dport=sport) / b"y", ts + 0.01),
        ]
    return [
        at(c / TCP(sport=sport, dport=dport, flags="S"), ts),
        at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.01),
        at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.02),
    ]


def series(times, **kw) -> list:
    pkts = []
    for i, t in enumerate(times):
        pkts += call(t, sport=20000 + i % 40000, **kw)
    return pkts


def jittered(n, period, jitter, seed, t0=T0):
    """Call times: sleep `period` minus up to `jitter` of it at random (Cobalt Strike's way)."""
    rnd = random.Random(seed)
    t, out = t0, []
    for _ in range(n):
        out.append(t)
        t += period * (1 - jitter * rnd.random())
    return out


def run(pkts, cfg=None) -> list[dict]:
    h = Harness(cfg)
    pkts.sort(key=lambda p: p.time)
    h.feed(pkts)
    h.finish()
    return h.by_detector("beacon")


def test_regular_calls_every_minute() -> None:
    alerts = run(series([T0 + 60 * i for i in range(22)]))
    (a,) = alerts
    assert a["alert"]["signature_id"] == beacon.OUTBOUND.sid
    assert a["src_ip"] == PC1 and a["dest_ip"] == C2 and a["dest_port"] == 443
    d = a["watchpost"]["details"]
    assert d["period_s"] == 60.0 and d["jitter"] == 0.0 and d["calls"] == 20
    assert d["direction"] == "outbound" and a["watchpost"]["direction"] == "outbound"
    assert a["watchpost"]["count"] == 20  # fired at the twentieth call


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("jitter", [0.2, 0.5])
def test_jittered_beacons_are_found(jitter: float, seed: int) -> None:
    alerts = run(series(jittered(40, 60.0, jitter, seed)))
    assert len(alerts) == 1, f"jitter {jitter} seed {seed}"
    assert 30 <= alerts[0]["watchpost"]["details"]["period_s"] <= 60


def test_beacon_by_name_across_rotating_addresses() -> None:
    name = "update.example.net"
    addrs = ["203.0.113.70", "203.0.113.71", "203.0.113.72"]
    answer = (
        IP(src="203.0.113.53", dst=PC1)
        / UDP(sport=53, dport=5353 + 1)
        / DNS(
            id=7,
            qr=1,
            qd=DNSQR(qname=name),
            an=[DNSRR(rrname=name, type="A", rdata=a, ttl=300) for a in addrs],
        )
    )
    query = (
        IP(src=PC1, dst="203.0.113.53")
        / UDP(sport=5354, dport=53)
        / DNS(id=7, qd=DNSQR(qname=name))
    )
    pkts = [at(query, T0 - 1.1), at(answer, T0 - 1)]
    for i in range(22):
        pkts += call(T0 + 45 * i, dst=addrs[i % 3], sport=30000 + i)
    alerts = run(pkts)
    (a,) = alerts
    assert a["watchpost"]["details"]["name"] == name


def test_each_call_opening_several_connections_is_one_call() -> None:
    pkts = []
    for i in range(22):
        t = T0 + 120 * i
        pkts += call(t, sport=30000 + 2 * i) + call(t + 0.3, sport=30001 + 2 * i)
    (a,) = run(pkts)
    assert a["watchpost"]["details"]["period_s"] == 120.0


def test_a_missed_call_does_not_hide_the_beacon() -> None:
    times = [T0 + 60 * i for i in range(26) if i not in (5, 11, 17)]
    assert len(run(series(times))) == 1


def test_udp_beacon() -> None:
    assert len(run(series([T0 + 30 * i for i in range(25)], dport=8888, proto="udp"))) == 1


def test_direction_unknown_when_neither_side_is_home() -> None:
    (a,) = run(series([T0 + 60 * i for i in range(22)]), make_config(inline={"home_nets": []}))
    assert a["alert"]["signature_id"] == beacon.UNKNOWN.sid
    assert a["watchpost"]["direction"] == "unknown"


def test_long_beacon_is_reported_again_each_realert_period() -> None:
    times = [T0 + 60 * i for i in range(180)]  # three hours
    alerts = run(series(times))
    assert len(alerts) == 3
    assert sum(a["watchpost"]["count"] for a in alerts) <= 180
    assert all(a["alert"]["signature_id"] == beacon.OUTBOUND.sid for a in alerts)


# -- benign look-alikes ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_irregular_browsing_is_no_beacon(seed: int) -> None:
    rnd = random.Random(100 + seed)
    t, times = T0, []
    for _ in range(60):  # a person coming back to one site, about every two minutes
        times.append(t)
        t += rnd.expovariate(1 / 120.0) + 2.5
    assert run(series(times)) == []


def test_daily_update_check_is_no_beacon() -> None:
    assert run(series([T0 + 86400 * i for i in range(7)])) == []


def test_hourly_but_too_few_calls() -> None:
    assert run(series([T0 + 3000 * i for i in range(9)])) == []


def test_rapid_polling_below_min_period_is_no_beacon() -> None:
    assert run(series([T0 + 3 * i for i in range(200)])) == []


def test_time_sync_and_dns_ports_are_ignored() -> None:
    pkts = series([T0 + 64 * i for i in range(20)], dport=123, proto="udp")
    pkts += series([T0 + 30 * i for i in range(20)], dport=53, proto="udp", dst="203.0.113.53")
    assert run(pkts) == []


def test_ignored_names_and_addresses() -> None:
    name = "www.msftconnecttest.com"
    answer = (
        IP(src="203.0.113.53", dst=PC1)
        / UDP(sport=53, dport=33333)
        / DNS(id=9, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, type="A", rdata=C2))
    )
    query = (
        IP(src=PC1, dst="203.0.113.53")
        / UDP(sport=33333, dport=53)
        / DNS(id=9, qd=DNSQR(qname=name))
    )
    regular = [T0 + 60 * i for i in range(25)]
    assert run([at(query, T0 - 1.1), at(answer, T0 - 1), *series(regular)]) == []
    # The same answer for a name not ignored: the calls are judged a beacon by that name.
    other = "www.example.org"
    query2 = (
        IP(src=PC1, dst="203.0.113.53")
        / UDP(sport=33334, dport=53)
        / DNS(id=10, qd=DNSQR(qname=other))
    )
    answer2 = (
        IP(src="203.0.113.53", dst=PC1)
        / UDP(sport=53, dport=33334)
        / DNS(id=10, qr=1, qd=DNSQR(qname=other), an=DNSRR(rrname=other, type="A", rdata=C2))
    )
    (hit,) = run([at(query2, T0 - 1.1), at(answer2, T0 - 1), *series(regular)])
    assert hit["watchpost"]["details"]["name"] == other
    cfg = make_config(detect={"beacon": {"ignore": ["203.0.113.0/24"]}})
    assert run(series(regular), cfg) == []


def test_inbound_and_internal_regular_calls_are_not_beacons() -> None:
    regular = [T0 + 60 * i for i in range(25)]
    pkts = series(regular, src="198.51.100.23", dst="198.18.0.12", dport=22)  # monitoring in
    pkts += series(regular, src=PC1, dst="198.18.0.12", dport=8080)  # office to office
    assert run(pkts) == []


def test_options_tune_the_judgement() -> None:
    cfg = make_config(
        detect={"beacon": {"min_period": 1.0, "min_span": 5.0, "min_calls": 6, "burst": 0.5}}
    )
    assert len(run(series([T0 + 2 * i for i in range(8)]), cfg)) == 1
    strict = make_config(detect={"beacon": {"jitter": 0.05}})
    assert run(series(jittered(40, 60.0, 0.5, 1)), strict) == []


# -- bounded state, config, replay ----------------------------------------------------------------


def test_state_stays_bounded() -> None:
    h = Harness(make_config(detect={"beacon": {"max_tracked": 50}}))
    det = next(d for d in h.engine.detectors if d.name == "beacon")
    pkts = []
    for i in range(400):
        pkts += call(T0 + i, dst=f"203.0.{113 + i // 250}.{i % 250 + 1}", sport=30000 + i)
    h.feed(pkts)
    assert det.stats()["tracked"] <= 50
    h.feed(call(T0 + 30 * 86400))  # long silence: everything ages out
    assert det.stats()["tracked"] == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"min_calls": 2}, "detect.beacon.min_calls"),
        ({"min_calls": 100}, "detect.beacon.min_calls"),
        ({"max_period": 5.0}, "detect.beacon.max_period"),
        ({"jitter": 1.5}, "detect.beacon.jitter"),
        ({"burst": 20.0}, "detect.beacon.burst"),
        ({"ignore_names": ["bad name"]}, "detect.beacon.ignore_names[0]"),
        ({"ignore": ["300.1.1.1"]}, "detect.beacon.ignore[0]"),
        ({"ignore_ports": [65536]}, "detect.beacon.ignore_ports[0]"),
    ],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Harness(make_config(detect={"beacon": options}))
    assert e.value.key == key


def test_replayed_pcap_gives_the_same_alerts(tmp_path: Path) -> None:
    pkts = series(jittered(30, 45.0, 0.3, 3))
    pkts += series(jittered(30, 90.0, 0.3, 4), dst="203.0.113.77", dport=8443)
    pkts.sort(key=lambda p: p.time)
    pcap = write_pcap(pkts, tmp_path / "beacon.pcap")
    inline = run(list(pkts))
    replayed = replay_alerts(pcap, "beacon")

    def key(a: dict) -> tuple:
        w = a["watchpost"]
        return (a["alert"]["signature_id"], a["dest_ip"], w["count"], w["details"]["period_s"])

    assert len(inline) == 2
    assert sorted(map(key, inline)) == sorted(map(key, replayed))
