"""dga in the lab: dig looks up DGA-like names (NXDOMAIN from the lab resolver) through the
appliance; ordinary lookups raise nothing; `watchpost replay` of the uplink capture agrees."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from appliance.detect.detectors import dga
from lab.netns import Lab

from .behaviour_lab import Watch, totals
from .content_lab import RESOLVER, dig_batch, from_host, sids, start_watch

pytestmark = pytest.mark.root

PC1, PC2 = "198.18.0.11", "198.18.0.12"


def generated_names(n: int, seed: str) -> list[str]:
    """Hash-seeded names of 12-15 letters, as date-seeded DGAs make them."""
    out = []
    for i in range(n):
        digest = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        label = "".join(chr(97 + b % 26) for b in digest[: 12 + digest[31] % 4])
        out.append(f"{label}.{('com', 'net', 'org', 'info', 'biz')[i % 5]}")
    return out


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    w = start_watch(lab, tmp_path_factory.mktemp("dga"))
    yield w
    w.daemon.stop()


def test_dga_lookups_from_an_office_host(watch: Watch) -> None:
    mark = watch.mark()
    names = generated_names(25, "lab-dga")
    with watch.capture("dga") as pcap:
        out = dig_batch(watch, "pc1", names)
        assert out.count("status: NXDOMAIN") == len(names)
    got = watch.wait(mark, lambda a: {8105001, 8105003} <= sids(a), "dga")
    mine = from_host(got, PC1)
    assert {dga.FAILED.sid, dga.NXDOMAINS.sid} <= sids(mine), watch.daemon.log_tail()
    first = next(a for a in mine if a["alert"]["signature_id"] == dga.FAILED.sid)
    assert first["dest_ip"] == RESOLVER and first["watchpost"]["direction"] == "outbound"
    assert set(first["watchpost"]["details"]["examples"]) <= set(names)
    got = watch.settle(mark, "dga", quiet=3.0)
    replayed = watch.replay(pcap)
    assert totals(replayed, "dga") == totals(got, "dga")
    assert totals(got, "dga")[dga.NXDOMAINS.sid, PC1, RESOLVER] == 21


def test_ordinary_lookups_raise_nothing(watch: Watch) -> None:
    mark = watch.mark()
    lab_names = ["www.example.com", "files.example.com", "c2.example.net", "hub.example.org"]
    # Misses that ordinary use produces: typos, a browser's random probes, CDN-like subdomains.
    misses = ["gooogle.com", "wikipeida.org", "xkqzjwbvtmhp", "qwzxcvbnmlkj.office.lan"]
    misses += [f"d{i:x}a7f3c9e1b.files.example.com" for i in range(20)]
    dig_batch(watch, "pc2", lab_names * 3 + misses, name="benign")
    got = watch.settle(mark, "dga", quiet=3.0, timeout=10.0)
    assert from_host(got, PC2) == []
