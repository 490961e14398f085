"""`devices`: the fleet from the devices' retained statuses."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import paho.mqtt.client as mqtt

from hub.operator.connection import Ctx, OperatorError, _json, _split, collect_retained, fail
from hub.operator.group import hub
from protocol import topics


def _status_row(msg: mqtt.MQTTMessage) -> dict[str, Any] | None:
    site, device, _ = _split(msg.topic)
    status = _json(msg.payload)
    if not device or not isinstance(status, dict):
        return None
    seen = next((status[k] for k in ("ts", "time", "timestamp", "last_seen") if k in status), None)
    intel = status.get("intel_version", status.get("intel"))
    if isinstance(intel, dict):
        intel = intel.get("version")
    return {
        "site": site,
        "device": device,
        "state": status.get("state"),
        "version": status.get("version"),
        "mode": status.get("mode"),
        "intel_version": intel,
        "last_seen": seen,
        "status": status,
    }


def _when(value: Any) -> str:
    if isinstance(value, int | float) and value > 0:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"
    return str(value) if value else "-"


@hub.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
@click.option("--wait", default=5.0, show_default=True, help="Longest wait for statuses (s).")
@click.pass_obj
def devices(obj: Ctx, as_json: bool, wait: float) -> None:
    """Devices from their retained statuses: state, version, mode, intel version, last seen."""
    site = obj.settings.site or "+"
    conn = obj.connect()
    try:
        msgs = collect_retained(
            conn, [f"{topics.ROOT}/{site}/+/status"], wait=wait, settle=min(1.0, wait)
        )
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    rows = sorted(
        (r for r in map(_status_row, msgs) if r is not None),
        key=lambda r: (r["site"], r["device"]),
    )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    header = ("SITE", "DEVICE", "STATE", "VERSION", "MODE", "INTEL", "LAST SEEN")
    table = [header] + [
        (
            r["site"],
            r["device"],
            str(r["state"] or "-"),
            str(r["version"] or "-"),
            str(r["mode"] or "-"),
            str(r["intel_version"] or "-"),
            _when(r["last_seen"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
