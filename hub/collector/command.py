"""`watchpost-hub collect` (one collector) and `watchpost-hub fleet` (device health)."""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from hub.collector import Collector, CollectorSettings
from hub.collector.metrics import Metrics
from hub.operator.connection import Ctx, fail
from hub.operator.group import hub
from hub.store import StoreError, open_store

DEFAULT_STORE = "sqlite:///var/lib/watchpost-hub/hub.sqlite"


def default_client_id(cert: str) -> str:
    """``<certificate CN>-<host>``: the broker only lets an identity use client ids that start
    with its CN (see hub/provisioning.py), and each collector needs its own session."""
    cn = "collector"
    if cert:
        try:
            from cryptography import x509
            from cryptography.x509.oid import NameOID

            c = x509.load_pem_x509_certificate(Path(cert).read_bytes())
            cn = str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        except (OSError, ValueError, IndexError):
            pass
    return f"{cn}-{socket.gethostname()[:32]}"


@hub.command()
@click.option(
    "--store",
    "store_url",
    envvar="WATCHPOST_HUB_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="sqlite:///path or postgresql://... (env WATCHPOST_HUB_STORE)",
)
@click.option("--client-id", default=None, help="Fixed client id (default <CN>-<hostname>).")
@click.option(
    "--registry",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The CA's registry.json (or CA dir): only enrolled devices, at their site.",
)
@click.option("--metrics", "metrics_addr", default="", help="HOST:PORT for Prometheus /metrics.")
@click.option(
    "--silent-after",
    default=300.0,
    show_default=True,
    help="Seconds without a message before a device raises a hub alert.",
)
@click.option(
    "--gap-final-after",
    default=3600.0,
    show_default=True,
    help="Seconds after which a seq gap is permanent (>= the broker's hold time).",
)
@click.option("--retention-days", default=400.0, show_default=True)
@click.option(
    "--session-expiry",
    default=7 * 86400,
    show_default=True,
    help="Seconds the broker keeps this collector's queue while it is away.",
)
@click.option("--batch", "batch_max", default=1000, show_default=True)
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: run).")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_obj
def collect(
    obj: Ctx,
    store_url: str,
    client_id: str | None,
    registry: Path | None,
    metrics_addr: str,
    silent_after: float,
    gap_final_after: float,
    retention_days: float,
    session_expiry: int,
    batch_max: int,
    duration: float,
    verbose: bool,
) -> None:
    """Consume alerts, statuses, telemetry and summaries into the store (a shared subscription:
    run several for load and availability)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    s = obj.settings
    if not s.host:
        fail("no broker host: pass --host, set WATCHPOST_HUB_HOST or operator.host")
    try:
        store = open_store(store_url, gap_final_after=gap_final_after)
    except StoreError as e:
        fail(str(e))
        raise
    settings = CollectorSettings(
        host=s.host, port=s.port, ca=s.ca, cert=s.cert, key=s.key,
        client_id=client_id or default_client_id(s.cert), group=s.group, site=s.site or "+",
        session_expiry=session_expiry, keepalive=s.keepalive, batch_max=batch_max,
        registry=registry, silent_after=silent_after, retention_days=retention_days,
    )  # fmt: skip
    metrics = Metrics()
    try:
        col = Collector(settings, store, metrics)
        if metrics_addr:
            host, port = metrics.serve(metrics_addr)
            click.echo(f"collect: metrics at http://{host}:{port}/metrics", err=True)
        col.start()
    except (ValueError, ConnectionError, OSError) as e:
        store.close()
        fail(str(e))
        raise
    click.echo(
        f"collect: {settings.client_id} in group {settings.group} -> {store.dialect} store",
        err=True,
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait(duration if duration > 0 else None)
    col.stop()
    metrics.close()
    store.close()
    click.echo(f"collect: stopped, {col.stored} new alerts stored", err=True)


@hub.command()
@click.option(
    "--store", "store_url", envvar="WATCHPOST_HUB_STORE", default=DEFAULT_STORE, show_default=True
)
@click.option("--silent-after", default=300.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def fleet(store_url: str, silent_after: float, as_json: bool) -> None:
    """Each device's health from the store: state, last seen, versions, mode, fail-open events,
    outbox depth, LEDs, alert count, open seq gaps."""
    try:
        store = open_store(store_url)
    except StoreError as e:
        fail(str(e))
        raise
    now = time.time()
    gaps: dict[str, list[dict[str, Any]]] = {}
    for g in store.gaps():
        gaps.setdefault(g["device"], []).append(g)
    rows = []
    for d in store.devices():
        silent = (now - (d["last_seen"] or 0)) > silent_after
        rows.append({
            "site": d["site"], "device": d["device"],
            "health": "silent" if silent else (d["state"] or "unknown"),
            "state": d["state"], "last_seen": d["last_seen"], "version": d["version"],
            "intel_version": d["intel_version"], "mode": d["mode"], "leds": d["leds"],
            "fail_open_events": d["fail_open_events"], "outbox_depth": d["outbox_depth"],
            "alerts": d["alerts"], "seq_high": d["seq_high"],
            "gaps": [[g["lo"], g["hi"], g["permanent"]] for g in gaps.get(d["device"], [])],
        })  # fmt: skip
    store.close()
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    header = ("SITE", "DEVICE", "HEALTH", "LAST SEEN", "VERSION", "MODE", "OUTBOX", "ALERTS",
              "GAPS")  # fmt: skip
    table = [header] + [
        (r["site"], r["device"], r["health"],
         time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(r["last_seen"] or 0)),
         str(r["version"] or "-"), str(r["mode"] or "-"), str(r["outbox_depth"] or 0),
         str(r["alerts"]), ",".join(f"{lo}-{hi}{'!' if p else ''}" for lo, hi, p in r["gaps"])
         or "-")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
