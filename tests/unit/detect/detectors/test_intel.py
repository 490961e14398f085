"""intel: hits on listed addresses, DNS names, SNI, JA3/JA4 and HTTP host/URL; look-alikes are
left alone; block mode drops what is listed and nothing on the allow-list."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName, TLS_Ext_SupportedGroups
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

from appliance.config import ConfigError
from appliance.detect.detectors import intel as det
from appliance.detect.dissect.quic import build_initial
from appliance.detect.dissect.tls import parse_client_hello
from appliance.packet.flows import VERDICT_BLOCK
from tests.helpers import Harness, alert_key, at, make_config, replay_alerts, write_pcap

PC1, PC2 = "198.18.0.11", "198.18.0.12"
RESOLVER = "203.0.113.53"
EVIL = "203.0.113.66"
WEB = "203.0.113.10"
T0 = 1_800_000_000.0


def hello(sni: str, ciphers: tuple[int, ...] = (0x1301, 0xC02F)) -> bytes:
    """A TLS ClientHello record built with scapy's TLS layer."""
    exts = [TLS_Ext_SupportedGroups(groups=[29, 23])]
    if sni:
        exts.insert(0, TLS_Ext_ServerName(servernames=[ServerName(servername=sni.encode())]))
    return bytes(TLS(msg=[TLSClientHello(ciphers=list(ciphers), ext=exts)]))


ODD_CIPHERS = (0xC02B, 0x009E, 0x0033)  # a client whose fingerprint we list
ODD = parse_client_hello(hello("files.example.net", ODD_CIPHERS))
assert ODD is not None


@pytest.fixture
def feeds(tmp_path: Path) -> list[Path]:
    plain = tmp_path / "watchlist.txt"
    plain.write_text(
        "# watchpost: source=hub category=malware severity=1\n"
        f"{EVIL}\n"
        "evil.example\n"
        "http://203.0.113.10/bins/mips\n"
        "2001:db8:bad::66\n"
    )
    phish = tmp_path / "phish.txt"
    phish.write_text(
        "# watchpost: source=phishtank category=phishing severity=2\nlogin-bank.example\n"
    )
    fps = tmp_path / "fingerprints.txt"
    fps.write_text(f"# watchpost: category=malware-tls severity=2\n{ODD.ja3_hash}\n")
    ja4 = tmp_path / "ja4.txt"
    ja4.write_text(f"# watchpost: category=malware-tls severity=3\n{ODD.ja4}\n")
    return [plain, phish, fps, ja4]


def tcp_flow(src: str, dst: str, dport: int, payload: bytes = b"", ts: float = T0, sport=40000):
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    pkts = [
        at(c / TCP(sport=sport, dport=dport, flags="S"), ts),
        at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.001),
        at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.002),
    ]
    if payload:
        pkts.append(at(c / TCP(sport=sport, dport=dport, flags="PA") / payload, ts + 0.003))
    return pkts


def dns_exchange(client: str, qname: str, answers: list[tuple[str, str]], ts: float = T0):
    """A query and its answer; `answers` are (type, rdata) for the name."""
    q = at(
        IP(src=client, dst=RESOLVER)
        / UDP(sport=53000, dport=53)
        / DNS(id=7, rd=1, qd=DNSQR(qname=qname)),
        ts,
    )
    rrs = [DNSRR(rrname=qname, type=rtype, ttl=60, rdata=rdata) for rtype, rdata in answers]
    r = at(
        IP(src=RESOLVER, dst=client)
        / UDP(sport=53, dport=53000)
        / DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname), an=rrs),
        ts + 0.01,
    )
    return [q, r]


def http_get(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.0\r\n\r\n".encode()


class FakeBlocker:
    def __init__(self) -> None:
        self.blocked: list[str] = []

    def block(self, addr: str, ttl: int) -> None:
        self.blocked.append(addr)


def run(feeds: list[Path], packets: list[Any], **config: Any) -> tuple[Harness, list[dict]]:
    h = Harness(make_config(**config), intel_paths=feeds)
    blocker = FakeBlocker()
    h.engine.blocker = blocker
    h.verdicts = h.feed(packets)  # type: ignore[attr-defined]
    h.blocker = blocker  # type: ignore[attr-defined]
    h.finish()
    return h, h.by_detector("intel")  # other detectors (web, exposure) may see these too


def sids(alerts: list[dict]) -> list[int]:
    return [a["alert"]["signature_id"] for a in alerts]


# -- addresses -----------------------------------------------------------------------------------


def test_listed_address_outbound_one_alert_per_flow(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC1, EVIL, 443, b"\x17\x03\x03\x00\x05hello"))
    assert sids(alerts) == [8100001]
    a = alerts[0]
    assert (a["src_ip"], a["dest_ip"], a["dest_port"]) == (PC1, EVIL, 443)
    assert a["alert"]["signature"] == "Threat intel: traffic with a listed address"
    assert (a["alert"]["category"], a["alert"]["severity"], a["alert"]["action"]) == (
        "malware",
        1,
        "allowed",
    )
    d = a["watchpost"]["details"]
    assert (d["indicator"], d["source"], d["category"], d["kind"]) == (EVIL, "hub", "malware", "ip")
    assert a["watchpost"]["detector"] == "intel" and a["watchpost"]["direction"] == "outbound"
    assert a["watchpost"]["intel_version"] not in ("", "empty")


def test_listed_address_inbound_and_v6(feeds: list[Path]) -> None:
    from scapy.layers.inet6 import IPv6

    v6 = at(IPv6(src="2001:db8:bad::66", dst="2001:db8:1::11") / TCP(dport=22, flags="S"), T0 + 1)
    _, alerts = run(feeds, [*tcp_flow(EVIL, PC2, 3389), v6])
    assert sids(alerts) == [8100001, 8100001]
    assert alerts[0]["watchpost"]["details"]["listed"] == EVIL
    assert alerts[1]["watchpost"]["details"]["indicator"] == "2001:db8:bad::66"


def test_unlisted_neighbour_address_is_quiet(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC1, "203.0.113.67", 443) + tcp_flow(PC1, WEB, 80))
    assert alerts == []


# -- DNS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["evil.example", "a.b.EVIL.example"])
def test_dns_query_for_listed_domain_and_subdomain(feeds: list[Path], qname: str) -> None:
    _, alerts = run(feeds, dns_exchange(PC1, qname, [("A", "198.51.100.99")]))
    assert sids(alerts) == [8100002]
    a = alerts[0]
    assert (a["src_ip"], a["dest_ip"]) == (PC1, RESOLVER)
    assert a["dns"]["rrname"] == qname.lower()
    d = a["watchpost"]["details"]
    assert (d["indicator"], d["query"], d["kind"]) == ("evil.example", qname.lower(), "domain")


@pytest.mark.parametrize(
    "qname", ["notevil.example", "evil.example.com", "example", "login-bank.example.org"]
)
def test_dns_lookalikes_are_quiet(feeds: list[Path], qname: str) -> None:
    _, alerts = run(feeds, dns_exchange(PC1, qname, [("A", "198.51.100.99")]))
    assert alerts == []


def test_connection_to_address_of_listed_domain_names_it(feeds: list[Path]) -> None:
    pkts = dns_exchange(PC1, "www.evil.example", [("A", "198.51.100.99")])
    pkts += tcp_flow(PC1, "198.51.100.99", 443, ts=T0 + 1)
    _, alerts = run(feeds, pkts)
    assert sids(alerts) == [8100002, 8100004]
    d = alerts[1]["watchpost"]["details"]
    assert (d["domain"], d["address"], d["indicator"]) == (
        "www.evil.example",
        "198.51.100.99",
        "evil.example",
    )
    assert alerts[1]["dest_ip"] == "198.51.100.99"


def test_dns_answer_with_listed_address(feeds: list[Path]) -> None:
    pkts = dns_exchange(PC1, "cdn.example.net", [("A", EVIL)])
    pkts += tcp_flow(PC1, EVIL, 443, ts=T0 + 1)
    _, alerts = run(feeds, pkts)
    assert sids(alerts) == [8100003, 8100001]
    assert alerts[0]["watchpost"]["details"]["address"] == EVIL
    assert alerts[0]["watchpost"]["details"]["query"] == "cdn.example.net"
    # The address alert says which name the office host had looked up.
    assert alerts[1]["watchpost"]["details"]["domain"] == "cdn.example.net"


# -- TLS and QUIC --------------------------------------------------------------------------------


def test_tls_sni_listed(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC1, WEB, 443, hello("Login-Bank.example")))
    assert sids(alerts) == [8100005]
    a = alerts[0]
    assert a["tls"]["sni"] == "login-bank.example"
    assert (a["alert"]["category"], a["alert"]["severity"]) == ("phishing", 2)
    d = a["watchpost"]["details"]
    assert (d["indicator"], d["source"], d["transport"]) == (
        "login-bank.example",
        "phishtank",
        "TLS",
    )


def test_tls_sni_lookalike_quiet(feeds: list[Path]) -> None:
    pkts = tcp_flow(PC1, WEB, 443, hello("notevil.example"))
    pkts += tcp_flow(PC1, WEB, 443, hello("evil.example.net"), sport=40001)
    _, alerts = run(feeds, pkts)
    assert alerts == []


def test_tls_ja3_and_ja4_listed(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC2, WEB, 443, hello("files.example.net", ODD_CIPHERS)))
    assert sids(alerts) == [8100006]  # JA3 first; one fingerprint alert per hello
    d = alerts[0]["watchpost"]["details"]
    assert (d["indicator"], d["kind"], d["sni"]) == (ODD.ja3_hash, "ja3", "files.example.net")
    assert alerts[0]["alert"]["category"] == "malware-tls"


def test_ja4_alone(feeds: list[Path], tmp_path: Path) -> None:
    _, alerts = run([feeds[3]], tcp_flow(PC2, WEB, 443, hello("files.example.net", ODD_CIPHERS)))
    assert sids(alerts) == [8100007]
    assert (alerts[0]["alert"]["severity"], alerts[0]["watchpost"]["details"]["kind"]) == (3, "ja4")
    _, quiet = run([feeds[3]], tcp_flow(PC2, WEB, 443, hello("files.example.net")))
    assert quiet == []


def quic_initial(sni: str) -> bytes:
    """A protected QUIC v1 client Initial carrying a ClientHello (scapy's) with `sni`."""
    hs = bytes(
        TLSClientHello(
            ciphers=[0x1301],
            ext=[
                TLS_Ext_ServerName(servernames=[ServerName(servername=sni.encode())]),
                TLS_Ext_SupportedGroups(groups=[29]),
            ],
        )
    )
    frame = b"\x06\x00" + struct.pack("!H", 0x4000 | len(hs)) + hs  # CRYPTO, offset 0
    return build_initial(bytes.fromhex("0011223344556677"), b"\xa1\xa2", frame.ljust(1162, b"\0"))


def test_quic_sni_listed_and_lookalike(feeds: list[Path]) -> None:
    """HTTP/3 is not a blind spot: the SNI in a QUIC Initial is matched like TLS's."""
    pkts = [
        at(
            IP(src=PC1, dst=WEB) / UDP(sport=50000, dport=443) / quic_initial("h3.evil.example"), T0
        ),
        at(
            IP(src=PC1, dst=WEB) / UDP(sport=50001, dport=443) / quic_initial("notevil.example"), T0
        ),
    ]
    _, alerts = run(feeds, pkts)
    assert sids(alerts) == [8100005]
    assert alerts[0]["watchpost"]["details"]["transport"] == "QUIC"
    assert alerts[0]["quic"]["sni"] == "h3.evil.example"


# -- HTTP ----------------------------------------------------------------------------------------


def test_http_host_listed(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC1, WEB, 80, http_get("cdn.evil.example:8080", "/x")))
    assert sids(alerts) == [8100008]
    a = alerts[0]
    assert a["http"]["hostname"] == "cdn.evil.example:8080"
    assert a["watchpost"]["details"]["indicator"] == "evil.example"


def test_http_url_listed(feeds: list[Path]) -> None:
    _, alerts = run(feeds, tcp_flow(PC1, WEB, 80, http_get(WEB, "/bins/mips?arch=7")))
    assert sids(alerts) == [8100009]
    d = alerts[0]["watchpost"]["details"]
    assert (d["indicator"], d["kind"]) == ("http://203.0.113.10/bins/mips", "url")
    assert "arch=7" not in str(alerts[0])  # query values never leave the device


def test_http_lookalikes_quiet(feeds: list[Path]) -> None:
    pkts = tcp_flow(PC1, WEB, 80, http_get("notevil.example", "/"))
    pkts += tcp_flow(PC1, WEB, 80, http_get(WEB, "/bins/mipsel"), sport=40001)
    pkts += tcp_flow(PC1, WEB, 80, http_get(WEB, "/"), sport=40002)
    _, alerts = run(feeds, pkts)
    assert alerts == []


# -- block mode ----------------------------------------------------------------------------------


def test_block_mode_drops_listed_address(feeds: list[Path]) -> None:
    h, alerts = run(feeds, tcp_flow(PC1, EVIL, 443), inline={"mode": "block"})
    assert h.blocker.blocked == [EVIL]
    assert h.verdicts[0] == VERDICT_BLOCK
    assert alerts[0]["alert"]["action"] == "blocked"


def test_block_mode_respects_never_block(feeds: list[Path]) -> None:
    h, alerts = run(
        feeds, tcp_flow(PC1, EVIL, 443), inline={"mode": "block", "never_block": [f"{EVIL}/32"]}
    )
    assert h.blocker.blocked == []
    assert VERDICT_BLOCK not in h.verdicts
    assert alerts[0]["alert"]["action"] == "allowed"


def test_monitor_mode_and_block_option_off_drop_nothing(feeds: list[Path]) -> None:
    pkts = tcp_flow(PC1, EVIL, 443) + dns_exchange(PC1, "evil.example", [("A", "198.51.100.99")])
    h, alerts = run(feeds, pkts)
    assert h.blocker.blocked == [] and VERDICT_BLOCK not in h.verdicts and alerts
    h, alerts = run(feeds, pkts, inline={"mode": "block"}, detect={"intel": {"block": False}})
    assert h.blocker.blocked == [] and VERDICT_BLOCK not in h.verdicts
    assert {a["alert"]["action"] for a in alerts} == {"allowed"}


def test_block_mode_dns_hit_blocks_answer_addresses_not_the_resolver(feeds: list[Path]) -> None:
    pkts = dns_exchange(
        PC1,
        "evil.example",
        [("A", "198.51.100.99"), ("A", "198.51.100.98"), ("AAAA", "2001:db8::9")],
    )
    h, alerts = run(feeds, pkts, inline={"mode": "block", "never_block": ["198.51.100.98/32"]})
    assert sorted(set(h.blocker.blocked)) == ["198.51.100.99", "2001:db8::9"]
    assert RESOLVER not in h.blocker.blocked
    assert VERDICT_BLOCK not in h.verdicts  # the DNS flow itself passes
    blocked = [a for a in alerts if a["alert"]["signature_id"] == 8100010]
    assert len(blocked) == 1
    b = blocked[0]
    assert (b["src_ip"], b["dest_ip"], b["alert"]["action"]) == (PC1, "198.51.100.99", "blocked")
    assert b["watchpost"]["details"]["addresses"] == ["198.51.100.99", "2001:db8::9"]


def test_fingerprint_hits_do_not_block_unless_asked(feeds: list[Path]) -> None:
    pkts = tcp_flow(PC2, WEB, 443, hello("files.example.net", ODD_CIPHERS))
    h, alerts = run(feeds, pkts, inline={"mode": "block"})
    assert h.blocker.blocked == [] and alerts[0]["alert"]["action"] == "allowed"
    h, alerts = run(
        feeds, pkts, inline={"mode": "block"}, detect={"intel": {"block_fingerprints": True}}
    )
    assert h.blocker.blocked == [WEB] and alerts[0]["alert"]["action"] == "blocked"


def test_options_are_declared_and_checked() -> None:
    with pytest.raises(ConfigError, match="detect.intel.block"):
        make_config(detect={"intel": {"block": "yes"}})
    with pytest.raises(ConfigError, match="detect.intel.colour"):
        make_config(detect={"intel": {"colour": 1}})
    assert {s.sid for s in det.IntelDetector.signatures} == set(range(8100001, 8100012))
    assert all(s.name.startswith("Threat intel: ") for s in det.IntelDetector.signatures)


def test_replayed_pcap_gives_the_same_alerts(feeds: list[Path], tmp_path: Path) -> None:
    """Positives and look-alikes in one capture: `watchpost replay` finds the same as the engine
    fed packet by packet, also when neither side is an office address (a span port)."""
    pkts = tcp_flow(PC1, EVIL, 443, ts=T0)
    pkts += dns_exchange(PC1, "www.evil.example", [("A", "198.51.100.99")], ts=T0 + 1)
    pkts += dns_exchange(PC2, "notevil.example", [("A", "198.51.100.98")], ts=T0 + 2)
    pkts += tcp_flow(PC1, WEB, 443, hello("login-bank.example"), ts=T0 + 3, sport=40001)
    pkts += tcp_flow(PC1, WEB, 443, hello("bank.example"), ts=T0 + 4, sport=40002)
    pkts += tcp_flow("192.0.2.7", WEB, 80, http_get("x.evil.example"), ts=T0 + 5, sport=40003)
    pcap = write_pcap(pkts, tmp_path / "intel.pcap")
    cfg = make_config(intel={"paths": [str(p) for p in feeds]})
    h = Harness(cfg)
    h.feed(pkts)
    inline = h.finish()
    replayed = replay_alerts(pcap, None, cfg)
    ours = sorted(alert_key(a) for a in replayed if a["watchpost"]["detector"] == "intel")
    assert ours == sorted(alert_key(a) for a in inline if a["watchpost"]["detector"] == "intel")
    assert [k[0] for k in ours] == [8100001, 8100002, 8100005, 8100008]
    span = next(a for a in replayed if a["alert"]["signature_id"] == 8100008)
    assert span["watchpost"]["direction"] == "unknown"


def test_swapped_store_takes_effect_at_once(feeds: list[Path], tmp_path: Path) -> None:
    """After a reload the detector answers from the new store (no stale remembered lookups)."""
    from appliance.detect.intel import load_files

    h = Harness(make_config(), intel_paths=feeds)
    h.feed(dns_exchange(PC1, "evil.example", [("A", "198.51.100.99")]), start=T0)
    other = tmp_path / "other.txt"
    other.write_text("benign-now-listed.example\n")
    h.engine.set_intel(load_files([str(other)]))
    h.feed(dns_exchange(PC1, "evil.example", [("A", "198.51.100.99")], ts=T0 + 1), start=T0 + 1)
    h.feed(dns_exchange(PC2, "benign-now-listed.example", [], ts=T0 + 2), start=T0 + 2)
    h.finish()
    alerts = h.by_detector("intel")
    got = [(a["src_ip"], a["watchpost"]["details"]["indicator"]) for a in alerts]
    assert got == [(PC1, "evil.example"), (PC2, "benign-now-listed.example")]
    assert alerts[0]["watchpost"]["intel_version"] != alerts[-1]["watchpost"]["intel_version"]


# -- block mode never blocks the office ----------------------------------------------------------


def dns_answer(src: str, dst: str, qname: str, rrs: list[Any], ts: float = T0) -> Any:
    return at(
        IP(src=src, dst=dst)
        / UDP(sport=53, dport=53000)
        / DNS(id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname), an=rrs),
        ts,
    )


def test_unsolicited_and_forged_answers_block_nothing(feeds: list[Path]) -> None:
    a = [DNSRR(rrname="evil.example", type="A", rdata="198.51.100.99")]
    unsolicited = [dns_answer(RESOLVER, PC1, "evil.example", a)]  # no question was asked
    forged = [dns_answer(PC2, PC1, "evil.example", a)]  # an office host "answers"
    for pkts in (unsolicited, forged):
        h, _alerts = run(feeds, pkts, inline={"mode": "block"})
        assert h.blocker.blocked == []
        assert h.engine.stats.dns_untrusted == 1
        # and the forged name is not learnt: a connection to that address is not "evil.example"
        assert h.engine.ctx.names.get(bytes([198, 51, 100, 99])) == ""


def test_answers_naming_private_or_office_addresses_block_only_the_public_ones(
    feeds: list[Path],
) -> None:
    pkts = dns_exchange(
        PC1,
        "evil.example",
        [("A", "10.0.0.1"), ("A", "198.18.0.1"), ("A", "192.168.1.1"), ("A", "198.51.100.99")],
    )
    h, _alerts = run(feeds, pkts, inline={"mode": "block"})
    assert set(h.blocker.blocked) == {"198.51.100.99"}
    refused = h.engine.guard.refused
    assert refused["non-public"] == 2 and refused["office"] == 1


def test_records_off_the_question_chain_are_ignored(feeds: list[Path]) -> None:
    q, _ = dns_exchange(PC1, "evil.example", [])
    rrs = [
        DNSRR(rrname="evil.example", type="A", ttl=60, rdata="198.51.100.99"),
        DNSRR(rrname="www.bank.example", type="A", ttl=60, rdata="198.51.100.20"),  # poison
    ]
    r = dns_answer(RESOLVER, PC1, "evil.example", rrs, ts=T0 + 0.01)
    h, _ = run(feeds, [q, r], inline={"mode": "block"})
    assert set(h.blocker.blocked) == {"198.51.100.99"}


def test_a_listed_name_drops_its_flow_not_the_shared_address(feeds: list[Path]) -> None:
    listed = tcp_flow(PC1, WEB, 443, hello("evil.example"))
    other = tcp_flow(PC2, WEB, 443, hello("www.example.com"), ts=T0 + 1, sport=40001)
    h, alerts = run(feeds, listed + other, inline={"mode": "block"})
    assert h.blocker.blocked == []  # the CDN address stays reachable
    assert h.verdicts[3] == VERDICT_BLOCK  # the listed flow is dropped at its hello
    assert VERDICT_BLOCK not in h.verdicts[4:]  # the other site on the same address passes
    (a,) = [x for x in alerts if x["alert"]["signature_id"] == det.TLS_SNI.sid]
    assert a["alert"]["action"] == "blocked"
    h, alerts = run(
        feeds, tcp_flow(PC1, WEB, 80, http_get("evil.example")), inline={"mode": "block"}
    )
    assert h.blocker.blocked == [] and h.verdicts[3] == VERDICT_BLOCK


def test_a_real_answer_for_a_listed_name_still_blocks_its_address(feeds: list[Path]) -> None:
    h, _ = run(
        feeds, dns_exchange(PC1, "evil.example", [("A", "198.51.100.99")]), inline={"mode": "block"}
    )
    assert set(h.blocker.blocked) == {"198.51.100.99"}
    assert h.engine.guard.reason_not_to_block(RESOLVER) == "resolver"


def test_reaching_the_block_cap_is_said_once(tmp_path: Path) -> None:
    feed = tmp_path / "three.txt"
    feed.write_text("203.0.113.66\n203.0.113.67\n203.0.113.68\n")
    h = Harness(make_config(inline={"mode": "block"}), intel_paths=[feed])
    h.engine.blocker = FakeBlocker()
    h.engine.guard.cap = 1
    pkts = tcp_flow(PC1, "203.0.113.66", 443) + tcp_flow(PC1, "203.0.113.67", 443, ts=T0 + 1)
    pkts += tcp_flow(PC2, "203.0.113.68", 443, ts=T0 + 2, sport=40002)
    h.feed(pkts)
    h.finish()
    limits = [a for a in h.by_detector("intel") if a["alert"]["signature_id"] == 8100011]
    assert len(limits) == 1 and limits[0]["watchpost"]["details"]["cap"] == 1
    assert h.engine.guard.refused["cap"] == 2


# -- context: an alert about a listed address carries the names its flow showed ------------------


def one(alerts: list[dict], sid: int = 8100001) -> dict:
    (a,) = [x for x in alerts if x["alert"]["signature_id"] == sid]
    return a


def test_listed_address_alert_waits_for_the_sni_and_is_sent_once(feeds: list[Path]) -> None:
    pkts = tcp_flow(PC1, EVIL, 443, hello("files.example.net"), ts=T0)
    _, alerts = run(feeds, pkts)
    a = one(alerts)
    assert sids(alerts) == [8100001]  # one alert, with the context: not an alert and a record
    assert a["tls"]["sni"] == "files.example.net" and a["app_proto"] == "tls"
    assert a["watchpost"]["details"]["sni"] == "files.example.net"
    assert a["timestamp"].startswith("2027-01-15T08:00:00.000000")  # the SYN's time
    assert (a["src_ip"], a["dest_ip"], a["src_port"], a["dest_port"]) == (PC1, EVIL, 40000, 443)


def test_listed_address_alert_carries_the_http_host_and_url(feeds: list[Path]) -> None:
    pkts = tcp_flow(EVIL, PC2, 8080, http_get(f"{PC2}:8080", "/cgi-bin/luci?token=s3cr3t"))
    _, alerts = run(feeds, pkts, privacy={"pseudonymize": True, "key": "k" * 32})
    a = one(alerts)
    assert a["http"]["url"] == "/cgi-bin/luci?token=" and a["http"]["http_method"] == "GET"
    host = a["watchpost"]["details"]["host"]
    assert host.startswith("office-") and host.endswith(":8080") and a["http"]["hostname"] == host
    assert PC2 not in json.dumps(a) and "s3cr3t" not in json.dumps(a)  # privacy scrub applies


def test_a_listed_resolver_alert_carries_the_question_from_the_same_packet(
    feeds: list[Path],
) -> None:
    q = IP(src=PC1, dst=EVIL) / UDP(sport=53001, dport=53) / DNS(id=9, qd=DNSQR(qname="a.test"))
    _, alerts = run(feeds, [at(q, T0)], detect={"intel": {"context_wait": 5.0}})
    a = one(alerts)
    assert a["dns"]["rrname"] == "a.test" and a["watchpost"]["details"]["query"] == "a.test"


def test_quic_initial_to_a_listed_address_names_its_sni(feeds: list[Path]) -> None:
    pkt = IP(src=PC1, dst=EVIL) / UDP(sport=50000, dport=443) / quic_initial("h3.example.org")
    _, alerts = run(feeds, [at(pkt, T0)])
    assert one(alerts)["quic"]["sni"] == "h3.example.org"


def test_a_name_after_the_wait_is_not_folded_and_nothing_is_sent_twice(feeds: list[Path]) -> None:
    """Just past `context_wait`: the alert went out without context at the wait's end (on the
    next packet of any flow), and the late hello adds no second alert."""
    late = tcp_flow(PC1, EVIL, 443, ts=T0)
    seg = IP(src=PC1, dst=EVIL) / TCP(sport=40000, dport=443, flags="PA") / hello("x.example")
    late.append(at(seg, T0 + 1.01))
    _, alerts = run(feeds, late)
    assert sids(alerts) == [8100001] and "tls" not in alerts[0]
    assert "sni" not in alerts[0]["watchpost"]["details"]
    in_time = tcp_flow(PC1, EVIL, 443, ts=T0)
    in_time.append(at(seg.copy(), T0 + 0.99))
    _, alerts = run(feeds, in_time)
    assert one(alerts)["tls"]["sni"] == "x.example"


def test_flows_without_names_and_the_end_of_a_capture_release_held_alerts(
    feeds: list[Path],
) -> None:
    ssh = tcp_flow(PC1, EVIL, 22, b"SSH-2.0-OpenSSH_9.6\r\n")
    h, alerts = run(feeds, ssh)  # the capture ends 3 ms later: `finish` ticks, it goes out
    assert sids(alerts) == [8100001] and "tls" not in alerts[0]
    h = Harness(make_config(), intel_paths=feeds)
    h.feed(ssh)
    assert h.by_detector("intel") == []  # still waiting for a name
    h.engine.tick(T0 + 0.5)
    assert h.by_detector("intel") == []
    h.engine.tick(T0 + 1.0)
    assert sids(h.by_detector("intel")) == [8100001]


def test_no_wait_in_block_mode_or_with_context_wait_zero(feeds: list[Path]) -> None:
    for cfg in ({"inline": {"mode": "block"}}, {"detect": {"intel": {"context_wait": 0.0}}}):
        h = Harness(make_config(**cfg), intel_paths=feeds)
        h.engine.blocker = FakeBlocker()
        h.feed(tcp_flow(PC1, EVIL, 443)[:1])
        assert sids(h.by_detector("intel")) == [8100001], cfg


def test_address_of_a_listed_domain_also_waits_for_the_sni(feeds: list[Path]) -> None:
    pkts = dns_exchange(PC1, "www.evil.example", [("A", "198.51.100.99")])
    pkts += tcp_flow(PC1, "198.51.100.99", 443, hello("www.evil.example"), ts=T0 + 1)
    _, alerts = run(feeds, pkts)
    a = one(alerts, 8100004)
    assert a["tls"]["sni"] == "www.evil.example" and a["watchpost"]["details"]["domain"]
    assert sorted(sids(alerts)) == [8100002, 8100004, 8100005]  # the listed SNI is its own


def test_context_replays_to_the_same_alerts(feeds: list[Path], tmp_path: Path) -> None:
    pkts = tcp_flow(PC1, EVIL, 443, hello("files.example.net"), ts=T0)
    pkts += tcp_flow(EVIL, PC2, 8080, http_get("nas", "/login"), ts=T0 + 2, sport=40001)
    pkts += tcp_flow(PC1, EVIL, 22, b"SSH-2.0-x\r\n", ts=T0 + 4, sport=40002)
    pcap = write_pcap(pkts, tmp_path / "context.pcap")
    _, inline = run(feeds, pkts)
    replayed = replay_alerts(pcap, "intel", make_config(intel={"paths": [str(p) for p in feeds]}))

    def key(a: dict) -> tuple:
        return (
            a["timestamp"],
            a["dest_port"],
            a.get("tls"),
            a.get("http"),
            a["watchpost"]["details"],
        )

    assert sorted(map(key, inline), key=str) == sorted(map(key, replayed), key=str)
    assert len(inline) == 3
