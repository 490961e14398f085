"""Real alert records from three lab offices, for the report, correlation, console and export
tests: attacks built with scapy run through the real engine and pipeline (tests.helpers.Harness)
of one device per office, then through the collector's parser into a real store.

The same scanner (SCANNER) probes every office; office-a also sees SSH brute force and an RDP
probe, office-c runs in block mode and hits a listed address (blocked). The week before (PREV)
office-a saw only one small scan, so its report's trend goes up.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP

from hub.collector.parse import Registry, parse
from hub.store import AlertRow, Batch, StatusRow, Store
from protocol.topics import topic
from tests.helpers import Harness, at, make_config

SCANNER = "198.51.100.23"
BRUTE = "203.0.113.50"
EVIL = "203.0.113.66"
OFFICES = {"office-a": "dev-a1", "office-b": "dev-b1", "office-c": "dev-c1"}
# Monday 2027-01-11 00:00 UTC: ISO week 2027-W02; the week before is 2027-W01.
WEEK = "2027-W02"
WEEK_START = dt.datetime(2027, 1, 11, tzinfo=dt.UTC).timestamp()
PREV = WEEK_START - 7 * 86400
PC = "198.18.0.{}"


def syn_scan(dst: str, t0: float, ports: range, src: str = SCANNER) -> list[Any]:
    pkts = []
    for i, port in enumerate(ports):
        ts = t0 + i * 0.002
        pkts.append(at(IP(src=src, dst=dst) / TCP(sport=54321, dport=port, flags="S"), ts))
        pkts.append(
            at(IP(src=dst, dst=src) / TCP(sport=port, dport=54321, flags="RA"), ts + 0.0005)
        )
    return pkts


def session(src: str, dst: str, dport: int, sport: int, ts: float, banner: bytes) -> list[Any]:
    c, s = IP(src=src, dst=dst), IP(src=dst, dst=src)
    return [
        at(c / TCP(sport=sport, dport=dport, flags="S"), ts),
        at(s / TCP(sport=dport, dport=sport, flags="SA"), ts + 0.001),
        at(c / TCP(sport=sport, dport=dport, flags="A"), ts + 0.002),
        at(s / TCP(sport=dport, dport=sport, flags="PA") / banner, ts + 0.01),
        at(c / TCP(sport=sport, dport=dport, flags="PA") / banner, ts + 0.02),
        at(s / TCP(sport=dport, dport=sport, flags="FA"), ts + 0.5),
    ]


def brute(dst: str, t0: float, n: int = 15) -> list[Any]:
    pkts = []
    for i in range(n):
        pkts += session(BRUTE, dst, 22, 40000 + i, t0 + i * 2.0, b"SSH-2.0-OpenSSH_9.2\r\n")
    return pkts


def device_alerts(site: str, packets: list[Any], tmp: Path, **config: Any) -> list[dict[str, Any]]:
    """The EVE records one office's device raises for `packets` (real engine + pipeline)."""
    intel = tmp / "intel.txt"
    intel.write_text(f"# watchpost: source=feed category=malware severity=1\n{EVIL}\n")
    cfg = make_config(device={"id": OFFICES[site], "site": site}, **config)
    h = Harness(cfg, intel_paths=[intel])
    for p in sorted(packets, key=lambda p: p.time):
        h.feed([p])
    h.finish()
    assert not h.engine.stats.hook_errors
    return h.alerts


def office_records(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    t = WEEK_START + 2 * 86400 + 9 * 3600  # Wednesday 09:00
    a = (
        syn_scan(PC.format(11), t, range(1, 201))
        + brute(PC.format(12), t + 3600)
        + session("198.51.100.77", PC.format(13), 3389, 41000, t + 7200, b"\x03\x00\x00\x13")
        + syn_scan(PC.format(11), PREV + 86400, range(1, 61), src="198.51.100.99")
    )
    b = syn_scan(PC.format(21), t + 600, range(1, 201))
    c = syn_scan(PC.format(31), t + 1200, range(1, 201)) + session(
        PC.format(32), EVIL, 443, 42000, t + 4000, b"\x17\x03\x03\x00\x05hello"
    )
    return {
        "office-a": device_alerts("office-a", a, tmp),
        "office-b": device_alerts("office-b", b, tmp),
        "office-c": device_alerts("office-c", c, tmp, inline={"mode": "block"}),
    }


def fill(store: Store, tmp: Path, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Ingest every office's alerts (numbered 1, 2, 3 ... as the outbox does) through the
    collector's parser, plus a ready status per device; returns the records by office."""
    records = office_records(tmp)
    now = WEEK_START + 6 * 86400 if now is None else now
    batch = Batch()
    for site, alerts in records.items():
        dev = OFFICES[site]
        for seq, eve in enumerate(sorted(alerts, key=lambda e: e["timestamp"]), 1):
            eve["watchpost"]["seq"] = seq
            row = parse(
                topic(site, dev, "alerts"),
                json.dumps(eve, sort_keys=True).encode(),
                retain=False,
                now=now,
                registry=Registry(),
            )
            assert isinstance(row, AlertRow), row
            batch.alerts.append(row)
        status = {"state": "ready", "bd_seq": 1, "version": "0.1.0", "mode": "monitor"}
        batch.statuses.append(StatusRow(dev, site, status, now))
    store.ingest(batch, now=now)
    store.fold_all(now)
    return records


_TEMPLATE: list[Path] = []


def filled_store(dest: Path) -> Store:
    """A SQLite store filled by `fill`, copied from one filled once per test run."""
    import shutil
    import tempfile

    from hub.store import open_store

    if not _TEMPLATE:
        d = Path(tempfile.mkdtemp(prefix="wp-offices-"))
        s = open_store(str(d / "hub.sqlite"))
        fill(s, d)
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s.close()
        _TEMPLATE.append(d / "hub.sqlite")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(_TEMPLATE[0], dest / "hub.sqlite")
    return open_store(str(dest / "hub.sqlite"))
