"""intel in the lab, monitor mode: dig looks up listed names and look-alikes, curl talks TLS with a
listed SNI to an openssl s_server, HTTP to a listed URL and plain TCP to a listed host; only the
listed ones raise alerts, and `watchpost replay` of the uplink capture agrees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.detect.detectors import intel as det
from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import RESOLVER, capture, dig_batch, from_host, sids, start_watch

pytestmark = pytest.mark.root

PC1, PC2 = "198.18.0.11", "198.18.0.12"
WEB, WEB2, EVIL = "203.0.113.10", "203.0.113.11", "203.0.113.66"
INTEL = f"""\
# watchpost: source=lab-hub category=malware severity=1
{EVIL}
c2.example.net
http://{WEB}/bins/mips
# watchpost: category=phishing severity=2
login-update.example.org
"""


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("intel"), intel=INTEL)
    yield w
    w.daemon.stop()


def tls_server(serve, tmp_path: Path) -> None:
    """openssl s_server on web:443 with a throw-away self-signed certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    serve.lab.exec(
        "web", "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=lab", "-days", "1",
        timeout=30,
    )  # fmt: skip
    serve.run(
        "web", "openssl", "s_server", "-accept", "443", "-key", str(key), "-cert", str(cert),
        "-www", "-quiet", port=443,
    )  # fmt: skip


def curl(watch: Watch, host: str, *args: str) -> str:
    res = watch.lab.exec(
        host, "curl", "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}\\n", "-m", "5", *args,
        check=False, timeout=30,
    )  # fmt: skip
    return res.stdout.strip()


def test_listed_names_addresses_sni_and_url(watch: Watch, serve, tmp_path: Path) -> None:
    serve.http("web", 80)
    tls_server(serve, tmp_path)
    mark = watch.mark()
    with capture(watch, "intel") as pcap:
        out = dig_batch(
            watch,
            "pc1",
            ["c2.example.net", "x.c2.example.net", "www.example.com", "notc2.example.net"],
        )
        assert "status: NOERROR" in out
        # TLS with a listed server name; its address is not listed (same host as www).
        assert curl(
            watch, "pc1", "--resolve", f"login-update.example.org:443:{WEB2}",
            "https://login-update.example.org/",
        ) == "200"  # fmt: skip
        assert (
            curl(
                watch, "pc1", "--resolve", f"www.example.com:443:{WEB}", "https://www.example.com/"
            )
            == "200"
        )
        assert curl(watch, "pc2", f"http://{WEB}/bins/mips")  # any answer: the request was sent
        assert curl(watch, "pc2", f"http://{WEB}/bins/mipsel")
        curl(watch, "pc2", "-m", "2", f"http://{EVIL}/")  # refused or silent: the SYN is enough
    expected = {det.DNS_QUERY.sid, det.DNS_ANSWER_IP.sid, det.TLS_SNI.sid, det.HTTP_URL.sid,
                det.IP_HIT.sid}  # fmt: skip
    got = watch.wait(mark, lambda a: expected <= sids(a), "intel")
    assert expected <= sids(got), watch.daemon.log_tail()
    got = watch.settle(mark, "intel", quiet=3.0)
    # What was listed, and nothing else.
    t = totals(got, "intel")
    assert t[det.DNS_QUERY.sid, PC1, RESOLVER] == 2  # c2.example.net and its subdomain
    assert t[det.DNS_ANSWER_IP.sid, RESOLVER, PC1] == 1  # the answer for c2.example.net
    assert t[det.TLS_SNI.sid, PC1, WEB2] == 1
    assert t[det.HTTP_URL.sid, PC2, WEB] == 1
    assert t[det.IP_HIT.sid, PC2, EVIL] == 1
    assert set(t) == {
        (det.DNS_QUERY.sid, PC1, RESOLVER),
        (det.DNS_ANSWER_IP.sid, RESOLVER, PC1),
        (det.TLS_SNI.sid, PC1, WEB2),
        (det.HTTP_URL.sid, PC2, WEB),
        (det.IP_HIT.sid, PC2, EVIL),
    }, t
    sni = next(a for a in from_host(got, PC1) if a["alert"]["signature_id"] == det.TLS_SNI.sid)
    assert sni["tls"]["sni"] == "login-update.example.org"
    assert (sni["alert"]["category"], sni["alert"]["severity"]) == ("phishing", 2)
    assert sni["watchpost"]["details"]["source"] == "lab-hub"
    assert all(a["alert"]["action"] == "allowed" for a in got)  # monitor mode
    assert all(a["watchpost"]["intel_version"] not in ("", "empty") for a in got)
    # The same capture through `watchpost replay` gives the same findings.
    assert totals(watch.replay(pcap), "intel") == t
