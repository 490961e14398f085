"""`tail`: alerts as EVE-JSON lines from a shared subscription, deduplicated, with seq gaps."""

from __future__ import annotations

import hashlib
import json
import queue
import sqlite3
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt

from hub.operator.connection import Ctx, OperatorError, _json, _split, fail
from hub.operator.group import hub
from protocol import topics


class Dedup:
    """Alert ids already printed; a SQLite file lets several workers on one host share them."""

    def __init__(self, path: Path | None = None, memory_max: int = 200_000) -> None:
        self._mem: OrderedDict[str, None] = OrderedDict()
        self._max = memory_max
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, device TEXT, "
                "seq INTEGER, at REAL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS seen_dev ON seen(device, seq)")

    def first(self, alert_id: str, device: str, seq: int | None) -> bool:
        """True the first time `alert_id` is seen (by any worker sharing the file)."""
        if self._db is not None:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)",
                (alert_id, device, seq, time.time()),
            )
            return cur.rowcount == 1
        if alert_id in self._mem:
            self._mem.move_to_end(alert_id)
            return False
        self._mem[alert_id] = None
        if len(self._mem) > self._max:
            self._mem.popitem(last=False)
        return True

    def seen_seqs(self, device: str, lo: int, hi: int) -> set[int]:
        """Sequence numbers of `device` in [lo, hi] that any sharing worker has seen."""
        if self._db is None:
            return set()
        rows = self._db.execute(
            "SELECT seq FROM seen WHERE device = ? AND seq BETWEEN ? AND ?", (device, lo, hi)
        )
        return {r[0] for r in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


@dataclass
class _Device:
    low: int
    high: int
    missing: list[list[float]] = field(default_factory=list)  # [lo, hi, since]


class GapTracker:
    """Per-device alert sequence gaps, reported only once they have stayed open for `grace` s.

    A grace period matters: with QoS 1 redelivery and shared subscriptions alerts can arrive
    out of order or at another worker.
    """

    def __init__(self, grace: float = 5.0, dedup: Dedup | None = None) -> None:
        self.grace = grace
        self.dedup = dedup
        self.devices: dict[str, _Device] = {}

    def saw(self, device: str, seq: int, now: float) -> None:
        d = self.devices.get(device)
        if d is None:
            self.devices[device] = _Device(seq, seq)
            return
        if seq > d.high:
            if seq > d.high + 1:
                d.missing.append([d.high + 1, seq - 1, now])
            d.high = seq
        elif seq < d.low:
            d.low = seq  # older than anything seen so far: not a gap we were tracking
        else:
            self._fill(d, seq)

    @staticmethod
    def _fill(d: _Device, seq: int) -> None:
        for i, (lo, hi, since) in enumerate(d.missing):
            if lo <= seq <= hi:
                parts = []
                if lo < seq:
                    parts.append([lo, seq - 1, since])
                if seq < hi:
                    parts.append([seq + 1, hi, since])
                d.missing[i : i + 1] = parts
                return

    def due(self, now: float) -> list[tuple[str, int, int]]:
        """Gaps (device, first, last) open for longer than the grace period; reported once."""
        out = []
        for name, d in self.devices.items():
            if self.dedup is not None:
                for lo, hi, _since in list(d.missing):
                    if now - _since >= self.grace:
                        for s in self.dedup.seen_seqs(name, int(lo), int(hi)):
                            self._fill(d, s)
            keep = []
            for lo, hi, since in d.missing:
                if now - since >= self.grace:
                    out.append((name, int(lo), int(hi)))
                else:
                    keep.append([lo, hi, since])
            d.missing = keep
        return out


@hub.command()
@click.option("--device", default="+", help="Only this device (default all).")
@click.option("--client-id", default=None, help="Fixed client id: a persistent session.")
@click.option("--count", default=0, help="Stop after this many new alerts (0: never).")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: never).")
@click.option(
    "--dedup-db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file shared by the workers of one host for dedup and gap checks.",
)
@click.option("--gap-grace", default=5.0, show_default=True, help="Seconds before a gap counts.")
@click.pass_obj
def tail(
    obj: Ctx,
    device: str,
    client_id: str | None,
    count: int,
    duration: float,
    dedup_db: Path | None,
    gap_grace: float,
) -> None:
    """Print alerts as EVE-JSON lines, deduplicated by watchpost.id; gaps go to stderr.

    Subscribes through ``$share/<group>/…`` so several hub workers split the alerts.
    """
    s = obj.settings
    site = s.site or "+"
    conn = obj.connect(
        client_id=client_id,
        clean_start=client_id is None,
        session_expiry=86400 if client_id else 0,
        manual_ack=True,
    )
    dedup = Dedup(dedup_db)
    gaps = GapTracker(gap_grace, dedup if dedup_db else None)
    printed = 0
    stop_at = time.monotonic() + duration if duration > 0 else None
    try:
        conn.subscribe([f"$share/{s.group}/{topics.ROOT}/{site}/{device}/alerts"])
        click.echo(f"tail: subscribed as {conn.client_id} in group {s.group}", err=True)
        while stop_at is None or time.monotonic() < stop_at:
            try:
                msg = conn.messages.get(timeout=0.5)
            except queue.Empty:
                msg = None
            if msg is not None:
                printed += _handle_alert(msg, dedup, gaps)
                conn.ack(msg)
            for dev, lo, hi in gaps.due(time.time()):
                span = f"{lo}" if lo == hi else f"{lo}-{hi}"
                click.echo(f"gap: {dev} missing alert seq {span}", err=True)
            if count and printed >= count:
                break
            if conn.lost is not None:
                raise OperatorError(f"connection lost: {conn.lost}")
    except OperatorError as e:
        fail(str(e))
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or `| head` has read enough
        pass
    finally:
        conn.close()
        dedup.close()


def _handle_alert(msg: mqtt.MQTTMessage, dedup: Dedup, gaps: GapTracker) -> int:
    site, device, _ = _split(msg.topic)
    alert = _json(msg.payload)
    if not isinstance(alert, dict):
        click.echo(f"warning: {msg.topic}: not a JSON alert, skipped", err=True)
        return 0
    wp: dict[str, Any] = alert["watchpost"] if isinstance(alert.get("watchpost"), dict) else {}
    alert_id = wp.get("id") or hashlib.sha256(msg.payload).hexdigest()
    name = f"{site}/{wp.get('device') or device}"
    seq = wp.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    if not dedup.first(str(alert_id), name, seq):
        return 0
    if seq is not None:
        gaps.saw(name, seq, time.time())
    click.echo(json.dumps(alert, ensure_ascii=False, separators=(",", ":")))
    sys.stdout.flush()
    return 1
