"""The dissectors against tshark on a fresh capture of this machine's own openssl, curl and dig
(in a private network namespace, loopback only), so a new client version that changes its
hellos is checked too, not just the committed fixture."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.detect.dissect import Dissectors
from tests.unit.detect.dissect.build import client_payloads, is_grease, ja4_reference
from tests.unit.detect.dissect.capture import (
    SECRET_COOKIE,
    SECRET_PASSWORD,
    capture_handshakes,
    tshark_fields,
    tshark_hellos,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("tshark", "tcpdump", "openssl", "curl", "dig")),
        reason="needs tshark, tcpdump, openssl, curl and dig",
    ),
]


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return capture_handshakes(tmp_path_factory.mktemp("dissect") / "live.pcap")


def test_live_tls_hellos_agree_with_tshark(pcap: Path) -> None:
    d = Dissectors()
    payloads = client_payloads(pcap, 443)
    fields = tshark_fields(
        pcap,
        ["tls.handshake.extensions_server_name", "tls.handshake.ja3_full", "tls.handshake.ja3"],
        "tls.handshake.type == 1",
    )
    hellos = tshark_hellos(pcap)
    assert len(hellos) == 4
    for frame, info in hellos.items():
        got = d.tls(payloads[frame])
        assert got is not None
        sni = fields[frame]["tls.handshake.extensions_server_name"]
        assert got.sni == (sni[0].lower() if sni else "")
        assert got.ja3 == fields[frame]["tls.handshake.ja3_full"][0]
        assert got.ja3_hash == fields[frame]["tls.handshake.ja3"][0]
        assert got.alpn == [a.decode() for a in info["alpn"]]
        assert got.supported_versions == [v for v in info["supported_versions"] if not is_grease(v)]
        assert got.ja4 == ja4_reference(info)
    assert d.malformed["tls"] == 0


def test_live_http_and_dns_agree_with_tshark(pcap: Path) -> None:
    d = Dissectors()
    http = client_payloads(pcap, 80)
    want = tshark_fields(
        pcap,
        ["http.request.method", "http.request.uri", "http.host", "http.user_agent"],
        "http.request",
    )
    assert len(want) == 2
    for frame, w in want.items():
        req = d.http(http[frame])
        assert req is not None
        assert (req.method, req.path, req.host, req.user_agent) == (
            w["http.request.method"][0],
            w["http.request.uri"][0],
            w["http.host"][0],
            w["http.user_agent"][0],
        )
        assert SECRET_PASSWORD not in repr(req) and SECRET_COOKIE not in repr(req)
    dns = client_payloads(pcap, 53)
    qnames = tshark_fields(pcap, ["dns.qry.name", "dns.qry.type"], "dns")
    assert len(qnames) == 2
    for frame, w in qnames.items():
        msg = d.dns(dns[frame])
        assert msg is not None
        assert (msg.qname, msg.qtype) == (w["dns.qry.name"][0].lower(), int(w["dns.qry.type"][0]))
