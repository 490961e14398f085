"""intel in the lab, block mode: a dig lookup of a listed name puts the addresses it returned into
the kernel drop set, so the office host can no longer reach them, while another address of the
same server, the resolver and unlisted hosts stay reachable."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import intel as det
from lab.netns import Lab

from .behaviour_lab import Watch
from .content_lab import dig_batch, sids, start_watch

pytestmark = pytest.mark.root

PC1 = "198.18.0.11"
WEB, WEB2, EVIL = "203.0.113.10", "203.0.113.11", "203.0.113.66"
INTEL = f"{EVIL}\nlogin-update.example.org\n"


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("intel-block"), mode="block", intel=INTEL)
    yield w
    w.daemon.stop()


def http_code(watch: Watch, url: str) -> str:
    res = watch.lab.exec(
        "pc1", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", url,
        check=False, timeout=30,
    )  # fmt: skip
    return res.stdout.strip()


def test_dns_hit_blocks_the_answer_addresses_only(watch: Watch, serve) -> None:
    # One HTTP server on both of web's addresses.
    serve.run("web", sys.executable, "-m", "lab.tools", "http", "--listen", "0.0.0.0",
              "--port", "80", port=80)  # fmt: skip
    assert http_code(watch, f"http://{WEB2}/") == "200"  # reachable before the lookup
    mark = watch.mark()
    out = dig_batch(watch, "pc1", ["login-update.example.org"])
    assert WEB2 in out or "status: NOERROR" in out
    got = watch.wait(mark, lambda a: det.DNS_BLOCKED.sid in sids(a), "intel")
    blocked = [a for a in got if a["alert"]["signature_id"] == det.DNS_BLOCKED.sid]
    assert blocked, watch.daemon.log_tail()
    b = blocked[0]
    assert (b["src_ip"], b["dest_ip"], b["alert"]["action"]) == (PC1, WEB2, "blocked")
    assert b["watchpost"]["details"]["indicator"] == "login-update.example.org"
    assert http_code(watch, f"http://{WEB2}/") == "000"  # dropped by the kernel now
    assert http_code(watch, f"http://{WEB}/") == "200"  # the same server's other address
    again = dig_batch(watch, "pc1", ["www.example.com"], name="after")
    assert "status: NOERROR" in again  # the resolver is on the allow-list, never blocked


def test_listed_address_is_blocked(watch: Watch) -> None:
    mark = watch.mark()
    assert http_code(watch, f"http://{EVIL}/") == "000"
    got = watch.wait(mark, lambda a: det.IP_HIT.sid in sids(a), "intel")
    hit = [a for a in got if a["alert"]["signature_id"] == det.IP_HIT.sid]
    assert hit and hit[0]["alert"]["action"] == "blocked", watch.daemon.log_tail()
