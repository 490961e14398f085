"""Block mode in the lab cannot be turned against the office: forged and unsolicited DNS
answers, answers naming private or office addresses and a listed Host on a shared address leave
the router, the office hosts and unrelated sites reachable; a real answer still blocks."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import intel as det
from lab.netns import Lab

from .behaviour_lab import Watch
from .content_lab import python, sids, start_watch

pytestmark = pytest.mark.root

PC1, PC2, ROUTER = "198.18.0.11", "198.18.0.12", "198.18.0.1"
WEB, WEB2 = "203.0.113.10", "203.0.113.11"
ATK = "198.51.100.23"
TRAP_DNS = ATK  # a second resolver (on the attacker's host), with answers we choose
EVIL = "203.0.113.66"
INTEL = f"{EVIL}\nlogin-update.example.org\nprivate-trap.example.org\nlisted-host.example.org\n"

# Send one DNS answer claiming NAME is at ADDRS from SRC:53 to DST:PORT (scapy, raw socket).
FORGE = """
import sys
from scapy.all import DNS, DNSQR, DNSRR, IP, UDP, send
src, dst, name, *addrs = sys.argv[1:]
an = [DNSRR(rrname=name, type="A", ttl=300, rdata=a) for a in addrs]
pkt = IP(src=src, dst=dst) / UDP(sport=53, dport=33333) / DNS(
    id=4242, qr=1, aa=1, qd=DNSQR(qname=name), an=an)
send(pkt, count=3, verbose=False)
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("block-safety"), mode="block", intel=INTEL)
    yield w
    w.daemon.stop()


@pytest.fixture
def web(serve) -> None:  # type: ignore[no-untyped-def]
    serve.run("web", sys.executable, "-m", "lab.tools", "http", "--listen", "0.0.0.0",
              "--port", "80", port=80)  # fmt: skip


def http_code(watch: Watch, url: str, *extra: str) -> str:
    res = watch.lab.exec(
        "pc1", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", *extra, url,
        check=False, timeout=30,
    )  # fmt: skip
    return res.stdout.strip()


def reachable(watch: Watch) -> None:
    """The router, the other office host and unrelated sites answer from pc1."""
    lab = watch.lab
    for addr in (ROUTER, PC2, WEB):
        res = lab.exec("pc1", "ping", "-c", "1", "-W", "2", addr, check=False, timeout=10)
        assert res.returncode == 0, f"{addr} unreachable:\n{watch.daemon.log_tail()}"
    assert http_code(watch, f"http://{WEB}/") == "200"
    assert http_code(watch, f"http://{WEB2}/") == "200"


def test_forged_and_unsolicited_answers_block_nothing(watch: Watch, web: None) -> None:
    reachable(watch)
    mark = watch.mark()
    # An office host "answers" pc1 that a listed name is at the router, pc2 and the web server;
    # then an internet host does the same, unasked. Both name a listed address too, so the
    # daemon's alert about it shows the forged answers did reach the engine.
    names = ("login-update.example.org", ROUTER, PC2, WEB, WEB2, EVIL)
    python(watch, "pc2", FORGE, PC2, PC1, *names)
    python(watch, "atk", FORGE, ATK, PC1, *names)
    got = watch.wait(mark, lambda a: det.DNS_ANSWER_IP.sid in sids(a), "intel", timeout=15)
    assert det.DNS_ANSWER_IP.sid in sids(got), watch.daemon.log_tail()
    assert det.DNS_BLOCKED.sid not in sids(got)
    time.sleep(0.5)
    reachable(watch)


def test_a_real_answer_naming_private_and_office_addresses_blocks_none_of_them(
    watch: Watch, web: None, serve
) -> None:  # type: ignore[no-untyped-def]
    serve.run("atk", sys.executable, "-m", "lab.tools", "dns", "--listen", TRAP_DNS,
              f"--record=private-trap.example.org={ROUTER},{PC2},10.0.0.1",
              port=53, proto="udp")  # fmt: skip
    mark = watch.mark()
    res = watch.lab.exec(
        "pc1", "dig", f"@{TRAP_DNS}", "+tries=1", "+time=2", "private-trap.example.org",
        check=False, timeout=20,
    )  # fmt: skip
    assert ROUTER in res.stdout, res.stdout
    got = watch.wait(mark, lambda a: det.DNS_QUERY.sid in sids(a), "intel")
    assert det.DNS_BLOCKED.sid not in sids(got)  # nothing it named may be blocked
    reachable(watch)


def test_a_listed_host_on_a_shared_address_drops_only_that_request(watch: Watch, web: None) -> None:
    mark = watch.mark()
    assert http_code(watch, f"http://{WEB}/", "-H", "Host: listed-host.example.org") == "000"
    got = watch.wait(mark, lambda a: det.HTTP_HOST.sid in sids(a), "intel")
    hit = [a for a in got if a["alert"]["signature_id"] == det.HTTP_HOST.sid]
    assert hit and hit[0]["alert"]["action"] == "blocked"
    reachable(watch)  # the same address serves every other site as before


def test_a_real_answer_for_a_listed_name_still_blocks_its_address(watch: Watch, web: None) -> None:
    mark = watch.mark()
    res = watch.lab.exec(
        "pc1", "dig", "@203.0.113.53", "+tries=1", "+time=2", "login-update.example.org",
        check=False, timeout=20,
    )  # fmt: skip
    assert WEB2 in res.stdout
    got = watch.wait(mark, lambda a: det.DNS_BLOCKED.sid in sids(a), "intel")
    assert det.DNS_BLOCKED.sid in sids(got), watch.daemon.log_tail()
    assert http_code(watch, f"http://{WEB2}/") == "000"
    assert http_code(watch, f"http://{WEB}/") == "200"
