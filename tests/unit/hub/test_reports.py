"""Member reports from a store filled with real alert records of three offices: the figures,
the HTML, and the PDF printed by headless Chromium (checked with poppler's pdftotext/pdftoppm)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import main
from hub.reports import ReportError, build, last_week, parse_week, render_html, write_report
from hub.store import Store
from tests.unit.hub.offices import BRUTE, PREV, SCANNER, WEEK, WEEK_START, filled_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = filled_store(tmp_path / "db")
    yield s
    s.close()


def test_weeks() -> None:
    assert parse_week("2027-W02") == (WEEK_START, "2027-W02")
    assert last_week(WEEK_START + 7 * 86400 + 5) == "2027-W02"
    for bad in ("2027-02", "2027-W54", "", "2027W02"):
        with pytest.raises(ReportError, match="week"):
            parse_week(bad)


def test_figures_of_office_a(store: Store) -> None:
    r = build(store, "office-a", WEEK)
    rows = store.alerts(site="office-a", since=WEEK_START, until=WEEK_START + 7 * 86400)
    assert r.total == len(rows) > 0
    assert r.previous == len(store.alerts(site="office-a", since=PREV, until=WEEK_START)) > 0
    assert r.blocked == 0 and r.allowed == r.total
    top = [s["addr"] for s in r.sources]
    assert BRUTE in top and SCANNER in top
    assert {p["port"] for p in r.ports} >= {22, 3389}
    assert [d["device"] for d in r.devices] == ["dev-a1"]
    assert sum(d["now"] for d in r.days) == r.total
    assert sum(d["before"] for d in r.days) == r.previous
    assert {a["heading"] for a in r.advice} == {
        "Port scans", "Password guessing", "Exposed services"}  # fmt: skip
    assert "more than last week" in r.trend


def test_blocked_counted_for_the_block_mode_office(store: Store) -> None:
    r = build(store, "office-c", WEEK)
    assert r.blocked == 1 and r.allowed == r.total - 1
    assert any(a["heading"] == "Known bad addresses" for a in r.advice)
    assert r.previous == 0 and r.trend == "new this week"


def test_html_escapes_and_empty_office(store: Store) -> None:
    html = render_html(build(store, "office-none", WEEK))
    assert "Nothing this week" in html and "<script" not in html
    with pytest.raises(ReportError, match="office"):
        build(store, "../etc", WEEK)


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="needs poppler-utils")
def test_pdf_has_pages_and_figures(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    html, pdf = write_report(store, "office-a", WEEK, out)
    assert pdf == out / "office-a" / "office-a-2027-W02.pdf" and html.exists()
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    pages = int(next(x for x in info.stdout.splitlines() if x.startswith("Pages:")).split()[1])
    assert pages >= 1
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    r = build(store, "office-a", WEEK)
    for must in ("Weekly security report: office-a", "2027-W02", BRUTE, SCANNER, "3389",
                 "dev-a1", "Password guessing", r.trend):  # fmt: skip
        assert must in text, must
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "page")], check=True)  # fmt: skip
    png = tmp_path / "page-1.png"
    assert png.stat().st_size > 5000


def test_cli_bad_input(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["report", "--office", "x", "--week", "bad", "--out", "o"])
    assert r.exit_code != 0 and "week 'bad'" in r.output
    r = CliRunner().invoke(main, ["report", "--week", WEEK, "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--office SITE or --all-offices" in r.output
