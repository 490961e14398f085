"""`watchpost-hub indicators list|run|approve|reject|publish`: regional indicators."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import click

from hub import correlate
from hub.collector.command import DEFAULT_STORE
from hub.operator.commands import Requester, push_chunks
from hub.operator.connection import EXIT_ERROR, Ctx, OperatorError, fail
from hub.operator.group import hub
from hub.store import Store, StoreError, open_store
from protocol import bundle

_store_opt = click.option(
    "--store",
    "store_url",
    envvar="WATCHPOST_HUB_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="sqlite:///path or postgresql://... (env WATCHPOST_HUB_STORE)",
)
_ttl_opt = click.option(
    "--ttl-days", default=7.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Days an approved indicator stays in the regional bundle.",
)  # fmt: skip


def _open(url: str) -> Store:
    try:
        return open_store(url)
    except StoreError as e:
        fail(str(e))
        raise  # unreachable: fail exits


@hub.group()
def indicators() -> None:
    """Regional indicators: parties seen by several offices, approved by an operator."""


@indicators.command("list")
@_store_opt
@click.option("--state", type=click.Choice(correlate.STATES), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(store_url: str, state: str | None, as_json: bool) -> None:
    """Indicators, most offices first."""
    store = _open(store_url)
    try:
        for i in correlate.indicators(store, state):
            if as_json:
                click.echo(json.dumps(i, sort_keys=True))
            else:
                click.echo(
                    f"{i['id']:<40} {i['state']:<9} offices={i['offices']} "
                    f"sites={','.join(i['evidence'])}"
                )
    finally:
        store.close()


@indicators.command("run")
@_store_opt
@click.option("--min-offices", "-k", default=3, show_default=True, type=int)
@click.option("--window-hours", default=24.0, show_default=True, type=float)
@click.option("--auto-approve", default=None, type=int, help="Offices for automatic approval.")
@_ttl_opt
def run_cmd(
    store_url: str, min_offices: int, window_hours: float, auto_approve: int | None,
    ttl_days: float,
) -> None:  # fmt: skip
    """One correlation pass over the store (run it from a timer, e.g. every 5 minutes)."""
    try:
        policy = correlate.Policy(min_offices, window_hours * 3600, auto_approve, ttl_days * 86400)
    except correlate.CorrelateError as e:
        fail(str(e))
    store = _open(store_url)
    try:
        click.echo(json.dumps(correlate.run(store, policy), sort_keys=True))
    finally:
        store.close()


def _decide(store_url: str, ident: str, approve: bool, by: str, ttl_days: float) -> None:
    store = _open(store_url)
    try:
        i = correlate.decide(store, ident, approve, by, ttl_days * 86400)
        click.echo(f"{i['id']} {i['state']}")
    except correlate.CorrelateError as e:
        fail(str(e))
    finally:
        store.close()


@indicators.command()
@_store_opt
@click.argument("ident")
@click.option("--by", default="operator", show_default=True, help="Who decided (recorded).")
@_ttl_opt
def approve(store_url: str, ident: str, by: str, ttl_days: float) -> None:
    """Approve IDENT (e.g. ip:198.51.100.23): it goes into the next published bundle."""
    _decide(store_url, ident, True, by, ttl_days)


@indicators.command()
@_store_opt
@click.argument("ident")
@click.option("--by", default="operator", show_default=True)
def reject(store_url: str, ident: str, by: str) -> None:
    """Reject IDENT: it stays out of the bundle (and is not suggested again)."""
    _decide(store_url, ident, False, by, 1.0)


def publish(
    obj: Ctx, store: Store, devices: list[dict[str, Any]], timeout: float, retries: int = 2
) -> dict[str, str]:
    """Send the approved set to each device as a signed, chunked intel bundle (the operator's
    push-intel path, one job per device); device -> final job state."""
    data, version = correlate.bundle_text(store)
    key = obj.command_key()
    manifest = bundle.make_manifest(data, "regional.txt", version, key)
    out: dict[str, str] = {}
    conn = obj.connect()
    try:
        for d in devices:
            chunks = bundle.chunk_args(uuid.uuid4().hex[:16], manifest, data,
                                       bundle.DEFAULT_CHUNK_BYTES)  # fmt: skip
            req = Requester(obj, conn, d["device"], d["site"])
            final = push_chunks(req, "intel-update", chunks, time.monotonic() + timeout, retries)
            out[d["device"]] = "timeout" if final is None else str(final["job"]["state"])
    finally:
        conn.close()
    return out


@indicators.command("publish")
@_store_opt
@click.option("--site", "only_site", default=None, help="Only this office's devices.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per device.")
@click.pass_obj
def publish_cmd(obj: Ctx, store_url: str, only_site: str | None, timeout: float) -> None:
    """Push the approved set to every device of the region (as `push-intel` does)."""
    store = _open(store_url)
    try:
        devices = [d for d in store.devices() if only_site in (None, d["site"])]
        if not devices:
            fail("no devices in the store" + (f" at {only_site}" if only_site else ""))
        try:
            states = publish(obj, store, devices, timeout)
        except (OperatorError, bundle.BundleError) as e:
            fail(str(e))
    finally:
        store.close()
    for dev, state in sorted(states.items()):
        click.echo(f"{dev} {state}")
    sys.exit(0 if all(s == "succeeded" for s in states.values()) else EXIT_ERROR)
