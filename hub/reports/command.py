"""`watchpost-hub report --office SITE [--week YYYY-Www] --out DIR` (or `--all-offices`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from hub.collector.command import DEFAULT_STORE
from hub.console.queries import sites
from hub.operator.connection import fail
from hub.operator.group import hub
from hub.reports import ReportError, last_week, parse_week, write_report
from hub.store import StoreError, open_store


@hub.command()
@click.option(
    "--store", "store_url", envvar="WATCHPOST_HUB_STORE", default=DEFAULT_STORE,
    show_default=True, help="sqlite:///path or postgresql://... (env WATCHPOST_HUB_STORE)",
)  # fmt: skip
@click.option("--office", "site", default=None, help="The office (site) to report on.")
@click.option("--all-offices", is_flag=True, help="One report per office in the store.")
@click.option("--week", default=None, help="ISO week YYYY-Www (default: the last full week).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-pdf", is_flag=True, help="HTML only.")
def report(
    store_url: str, site: str | None, all_offices: bool, week: str | None, out: Path,
    no_pdf: bool,
) -> None:  # fmt: skip
    """Member report(s) as HTML and PDF in OUT/<office>/ (run weekly from a timer)."""
    if bool(site) == all_offices:
        fail("give --office SITE or --all-offices")
    week = week or last_week(time.time())
    try:
        parse_week(week)
        store = open_store(store_url)
    except (ReportError, StoreError) as e:
        fail(str(e))
    try:
        for s in sites(store) if all_offices else [site or ""]:
            for p in write_report(store, s, week, out, pdf=not no_pdf):
                click.echo(str(p))
    except ReportError as e:
        fail(str(e))
    finally:
        store.close()
