"""`push-rules`: Suricata-format rule files to devices as a signed rules bundle.

The files are checked first with the firmware's own rule parser (`appliance.detect.rules`): a
syntax error anywhere (``file:line: why``) refuses the push and nothing is sent. Rules outside
the subset are counted as skipped (the device skips them too). The files are joined into one
bundle (kind ``watchpost-rules``, name ``--name``, default ``hub.rules``) and sent with the
push-intel transfer as ``rules-update`` jobs, one device at a time: the device verifies the
signature, checks the rules again with its own variables, installs them into
``<state_dir>/rules`` and its engines take them live; a refused bundle leaves its rules in force.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from hub.operator.commands import Requester, push_chunks
from hub.operator.connection import (
    EXIT_ERROR,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Connection,
    Ctx,
    OperatorError,
    _json,
    _split,
    collect_retained,
    fail,
    find_site,
)
from hub.operator.group import hub
from protocol import bundle, topics

RULES_SUFFIX = ".rules"


def check_files(files: list[Path]) -> tuple[bytes, dict[str, Any]]:
    """The bundle's bytes (the files joined, each after a ``# file:`` comment) and the check's
    counts; OperatorError naming each ``file:line`` with a syntax error."""
    from appliance.detect.rules.addresses import default_vars
    from appliance.detect.rules.classification import load as load_classes
    from appliance.detect.rules.parser import Parser
    from appliance.detect.rules.ruleset import LoadReport, RulesError, parse_text, read_text

    # The check is the device's parser with Suricata's default variables; the device checks
    # again with its own (an unknown $VAR is skipped there, not an error).
    parser = Parser(default_vars(["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"]),
                    load_classes(None))  # fmt: skip
    report = LoadReport()
    parts: list[str] = []
    into: dict[tuple[int, int], Any] = {}
    for f in files:
        try:
            text = read_text(f)
        except RulesError as e:
            raise OperatorError(str(e)) from None
        report.files.append(str(f))
        parse_text(text, str(f), parser, report, into)
        parts.append(f"# file: {f.name}\n{text}" + ("" if text.endswith("\n") else "\n"))
    report.loaded = len(into)
    if report.error_count:
        lines = "\n".join(f"  {e}" for e in report.errors)
        more = report.error_count - len(report.errors)
        raise OperatorError(
            f"{report.error_count} rule(s) with syntax errors, nothing sent:\n{lines}"
            + (f"\n  ... and {more} more" if more else "")
        )
    if not report.loaded:
        raise OperatorError("no rule would load (all skipped or commented out), nothing sent")
    counts = {
        "loaded": report.loaded,
        "skipped": report.skipped_total,
        "by_reason": dict(report.skipped),
    }
    return "".join(parts).encode(), counts


def targets(
    obj: Ctx, conn: Connection, devices: tuple[str, ...], site: str | None, fleet: bool
) -> list[tuple[str, str]]:
    """(site, device) pairs: the named devices, every device of `site`, or the whole fleet
    (devices with a retained status)."""
    if devices:
        return [(find_site(obj, conn, d), d) for d in devices]
    where = site if site else "+"
    msgs = collect_retained(conn, [f"{topics.ROOT}/{where}/+/status"], wait=5.0, settle=1.0)
    out = set()
    for m in msgs:
        s, d, _ = _split(m.topic)
        if d and isinstance(_json(m.payload), dict):
            out.add((s, d))
    if not out:
        raise OperatorError(
            "no device with a retained status" + (f" at site {site}" if site else "")
        )
    return sorted(out)


@hub.command("push-rules")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option("--device", "devices", multiple=True, help="A device (repeat for more).")
@click.option("--site", "site", default=None, help="Every device of this site.")
@click.option("--fleet", is_flag=True, help="Every device with a retained status.")
@click.option("--name", default="hub.rules", show_default=True, help="File name on the device.")
@click.option("--version", "version", default=None, help="Bundle version (default: content hash).")
@click.option("--chunk-size", default=bundle.DEFAULT_CHUNK_BYTES, show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per device.")
@click.option("--retries", default=2, show_default=True, help="Resends of a refused chunk.")
@click.option("--check-only", is_flag=True, help="Check the files and say what would be sent.")
@click.pass_obj
def push_rules(
    obj: Ctx,
    files: tuple[Path, ...],
    devices: tuple[str, ...],
    site: str | None,
    fleet: bool,
    name: str,
    version: str | None,
    chunk_size: int,
    timeout: float,
    retries: int,
    check_only: bool,
) -> None:
    """Check FILE... and send them as one signed rules bundle to --device D (repeatable),
    every device of --site S, or the --fleet; one JSON answer line per device."""
    if sum((bool(devices), site is not None, fleet)) != 1 and not check_only:
        fail("say where: --device D (repeatable), --site S or --fleet", EXIT_USAGE)
    if not name.endswith(RULES_SUFFIX):
        fail(f"--name must end in {RULES_SUFFIX!r}: {name!r}", EXIT_USAGE)
    try:
        data, counts = check_files(list(files))
    except OperatorError as e:
        fail(str(e), EXIT_ERROR)
    click.echo(
        f"{counts['loaded']} rules to send, {counts['skipped']} skipped "
        f"({', '.join(f'{n} {w}' for w, n in sorted(counts['by_reason'].items())) or 'none'})",
        err=True,
    )
    if check_only:
        return
    version = version or hashlib.sha256(data).hexdigest()[:16]
    try:
        manifest = bundle.make_manifest(data, name, version, obj.command_key(), bundle.RULES_KIND)
    except bundle.BundleError as e:
        fail(str(e))
    conn = obj.connect()
    worst = 0
    try:
        for dev_site, device in targets(obj, conn, devices, site, fleet):
            chunks = bundle.chunk_args(uuid.uuid4().hex[:16], manifest, data, chunk_size)
            req = Requester(obj, conn, device, dev_site)
            final = push_chunks(req, "rules-update", chunks, time.monotonic() + timeout, retries)
            if final is None:
                click.echo(json.dumps({"device": device, "site": dev_site, "timeout": timeout}))
                worst = max(worst, EXIT_TIMEOUT)
                continue
            click.echo(json.dumps({"device": device, "site": dev_site, **final}, sort_keys=True))
            if final.get("job", {}).get("state") != "succeeded":
                worst = max(worst, EXIT_ERROR)
    except OperatorError as e:
        fail(str(e))
    finally:
        conn.close()
    sys.exit(worst)
