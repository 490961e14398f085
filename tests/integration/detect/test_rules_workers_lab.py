"""A rule bundle reaches every queue worker: the daemon inline with ``inline.workers = 2``
(one process per NFQUEUE of a queue-balance range), a bundle installed the way the hub's
`rules-update` job installs it (checked by `rules_job.check_bundle`, swapped in by
`protocol.bundle.install` into ``<state_dir>/rules``), then real curl from office hosts to
lab web servers: for each of the two queues, a request whose packets the kernel put on that
queue (seen in the queue's ``id_sequence``) raises the new rule's alert, so both worker
processes took the bundle in (not only an engine in the test's own process). Before the bundle
the same request raises nothing."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load as load_config
from appliance.detect.detectors.rules import hub_files, rules_dir_for
from appliance.hublink.rules_job import check_bundle
from lab.netns import Lab
from protocol import bundle

from .behaviour_lab import Watch
from .content_lab import start_watch

pytestmark = pytest.mark.root

QUEUES = (5, 6)
SID = 4100001
BUNDLE = f"""\
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"LAB bundle rule"; \\
    flow:established,to_server; http.uri; content:"/wp-bundle-probe/"; \\
    classtype:trojan-activity; sid:{SID}; rev:1;)
"""
# Servers on five internet addresses, clients on two office hosts: ten address pairs, which the
# kernel hashes onto the two queues (all ten on one queue: a 1 in 512 chance).
SERVERS = ("web", "dns", "atk", "hub", "rtr")
RTR_ADDR = "203.0.113.1"


@pytest.fixture(scope="module")
def watch(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    work = tmp_path_factory.mktemp("rules-workers")
    w = start_watch(
        lab, work, inline={"workers": 2, "queue": QUEUES[0]}, detect={"rules": {"hub": True}}
    )
    yield w
    w.daemon.stop()


def _queues(lab: Lab) -> dict[int, int]:
    """Queue number -> id_sequence (packets the kernel has put on it), in the appliance."""
    out = {}
    text = lab.exec("app", "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    for line in text.splitlines():
        w = line.split()
        if len(w) >= 8 and w[0].isdigit():
            out[int(w[0])] = int(w[7])
    return out


def _install(config_path: Path, text: str, name: str = "hub.rules") -> None:
    """The device side of a rules-update job once the chunks are in: check, then swap in."""
    config = load_config(config_path)
    rules_dir = rules_dir_for(config)
    rules_dir.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    staged = rules_dir / f".{name}.staged"
    staged.write_bytes(data)
    manifest = {"name": name, "version": "lab-1", "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data)}  # fmt: skip
    counts = check_bundle(config, staged, manifest)
    assert counts["loaded"] == 1, counts
    bundle.install(rules_dir, staged, manifest, lambda: str(len(hub_files(rules_dir))))


def _curl(lab: Lab, src: str, dst: str, tag: str) -> None:
    lab.exec(src, "curl", "-sS", "-o", "/dev/null", "-m", "3", f"http://{dst}/wp-bundle-probe/{tag}",
             check=False, timeout=10)  # fmt: skip


def _to(dst: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda alerts: any(a["dest_ip"] == dst for a in alerts)


def test_a_bundle_reaches_every_queue_worker(watch: Watch, serve, lab: Lab) -> None:
    addrs = {}
    for host in SERVERS:
        addr = RTR_ADDR if host == "rtr" else lab.addr(host)
        serve.run(host, sys.executable, "-m", "http.server", "--bind", addr, "80", port=80)
        addrs[host] = addr
    assert sorted(_queues(lab)) == list(QUEUES)
    pairs = [(src, addrs[h]) for h in SERVERS for src in ("pc1", "pc2")]

    # Before the bundle: the request goes through and nothing matches it.
    mark = watch.mark()
    _curl(lab, "pc1", addrs["web"], "before")
    time.sleep(1.0)
    assert watch.since(mark, "rules") == []

    _install(watch.config, BUNDLE)
    proved: dict[int, tuple[str, str]] = {}  # queue -> the pair whose alert came from it
    deadline = time.monotonic() + 20
    tries = 0
    while len(proved) < len(QUEUES) and time.monotonic() < deadline:
        for src, dst in pairs:
            before = _queues(lab)
            mark = watch.mark()
            tries += 1
            _curl(lab, src, dst, str(tries))
            after = _queues(lab)
            grew = [q for q in QUEUES if after[q] > before[q]]
            if len(grew) != 1 or grew[0] in proved:
                continue
            got = watch.wait(mark, _to(dst), "rules", timeout=3.0)
            hits = [a for a in got if a["dest_ip"] == dst]
            if hits:
                hit = hits[0]
                assert hit["alert"]["signature_id"] == SID
                assert hit["src_ip"] == lab.addr(src)
                assert hit["http"]["url"] == f"/wp-bundle-probe/{tries}"
                proved[grew[0]] = (src, dst)
            if len(proved) == len(QUEUES):
                break
    assert sorted(proved) == list(QUEUES), (proved, watch.daemon.log_tail())
