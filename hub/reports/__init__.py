"""Member reports: one office, one ISO week (``YYYY-Www``), as HTML and PDF.

``build`` gathers the figures from the store (top sources of suspicious traffic, ports targeted,
blocked vs allowed, the Watchpost devices and office computers involved, findings per day against
the week before, what to do per kind of finding); ``render_html`` fills the Jinja template (print
CSS, inline SVG chart, no outside assets); ``to_pdf`` prints the HTML with headless Chromium;
``write_report`` puts both in ``OUT/<office>/`` as ``<office>-<week>.html|pdf``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from hub.console.queries import alerts_in
from hub.reports.advice import advice
from hub.store import Store
from protocol.files import atomic_write

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DAY = 86400.0
TOP = 10


class ReportError(Exception):
    """Bad input (week, office) or a PDF that could not be made; the message says which."""


def parse_week(text: str) -> tuple[float, str]:
    """``2027-W02`` -> (Monday 00:00 UTC as Unix seconds, the canonical text)."""
    m = _WEEK.match(text or "")
    if not m:
        raise ReportError(f"week {text!r}: expected YYYY-Www, e.g. 2027-W02")
    try:
        monday = dt.date.fromisocalendar(int(m[1]), int(m[2]), 1)
    except ValueError as e:
        raise ReportError(f"week {text!r}: {e}") from None
    start = dt.datetime(monday.year, monday.month, monday.day, tzinfo=dt.UTC).timestamp()
    return start, f"{int(m[1]):04d}-W{int(m[2]):02d}"


def last_week(now: float) -> str:
    """The last complete ISO week before `now`."""
    y, w, _ = (dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=7)).isocalendar()
    return f"{y:04d}-W{w:02d}"


def check_site(site: str) -> str:
    if not _SITE.match(site or ""):
        raise ReportError(f"office {site!r}: expected letters, digits, '.', '_' or '-'")
    return site


def _remote(a: dict[str, Any]) -> str | None:
    """The outside party of an alert: the source of inbound traffic, the destination of
    outbound traffic."""
    direction = (a["eve"].get("watchpost") or {}).get("direction")
    return a["dest_ip"] if direction == "outbound" else a["src_ip"]


def _local(a: dict[str, Any]) -> str | None:
    direction = (a["eve"].get("watchpost") or {}).get("direction")
    return a["src_ip"] if direction == "outbound" else a["dest_ip"]


@dataclass
class Report:
    site: str
    week: str
    start: float
    generated: str
    total: int = 0
    previous: int = 0
    events: int = 0
    blocked: int = 0
    allowed: int = 0
    high: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    computers: list[dict[str, Any]] = field(default_factory=list)
    days: list[dict[str, Any]] = field(default_factory=list)
    advice: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trend(self) -> str:
        if self.previous == 0:
            return "new this week" if self.total else "no findings either week"
        change = (self.total - self.previous) * 100 / self.previous
        if change == 0:
            return "the same as last week"
        return f"{abs(change):.0f}% {'more' if change > 0 else 'fewer'} than last week"


def build(store: Store, site: str, week: str, now: float | None = None) -> Report:
    check_site(site)
    start, week = parse_week(week)
    end = start + 7 * DAY
    rows = alerts_in(store, start, end, site=site)
    prev = alerts_in(store, start - 7 * DAY, start, site=site)
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    r = Report(site, week, start, dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d"))
    r.total, r.previous = len(rows), len(prev)
    r.events = sum(int(a["count"] or 1) for a in rows)
    actions = Counter((a["eve"].get("alert") or {}).get("action") for a in rows)
    r.blocked, r.allowed = actions.get("blocked", 0), r.total - actions.get("blocked", 0)
    r.high = sum(1 for a in rows if a["severity"] == 1)

    src: dict[str, dict[str, Any]] = {}
    for a in rows:
        addr = _remote(a) or "?"
        e = src.setdefault(addr, {"addr": addr, "findings": 0, "kinds": Counter()})
        e["findings"] += 1
        e["kinds"][a["category"] or "?"] += 1
    r.sources = [
        {**e, "kinds": ", ".join(k for k, _ in e["kinds"].most_common())}
        for e in sorted(src.values(), key=lambda e: (-e["findings"], e["addr"]))[:TOP]
    ]
    ports = Counter(
        (a["dest_port"], a["proto"] or "")
        for a in rows
        if a["dest_port"] is not None
        and (a["eve"].get("watchpost") or {}).get("direction") != "outbound"
    )
    r.ports = [
        {"port": p, "proto": proto, "findings": n}
        for (p, proto), n in sorted(ports.items(), key=lambda kv: (-kv[1], kv[0][0]))[:TOP]
    ]
    devs = Counter(a["device"] for a in rows)
    r.devices = [{"device": d, "findings": n} for d, n in sorted(devs.items())]
    comps = Counter(_local(a) for a in rows if _local(a))
    r.computers = [
        {"addr": c, "findings": n}
        for c, n in sorted(comps.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    ]
    this = Counter(int((a["ts"] - start) // DAY) for a in rows)
    before = Counter(int((a["ts"] - start + 7 * DAY) // DAY) for a in prev)
    peak = max([1, *this.values(), *before.values()])
    for i in range(7):
        day = dt.datetime.fromtimestamp(start + i * DAY, dt.UTC)
        r.days.append(
            {
                "label": day.strftime("%a %d"),
                "now": this.get(i, 0),
                "before": before.get(i, 0),
                "now_h": round(100 * this.get(i, 0) / peak),
                "before_h": round(100 * before.get(i, 0) / peak),
            }
        )
    kinds = Counter((a["eve"].get("watchpost") or {}).get("detector") for a in rows)
    for det, n in kinds.most_common():
        heading, text = advice(det)
        r.advice.append({"heading": heading, "text": text, "findings": n})
    return r


_env = Environment(
    loader=PackageLoader("hub.reports", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(report: Report) -> str:
    return _env.get_template("report.html").render(r=report)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ReportError("no Chromium for the PDF (apt install chromium)")


def to_pdf(html_path: Path, pdf_path: Path, timeout: float = 60.0) -> None:
    """Print `html_path` to `pdf_path` with headless Chromium (its own throwaway profile)."""
    with tempfile.TemporaryDirectory(prefix="wp-report-") as profile:
        tmp = pdf_path.with_name(f".{pdf_path.name}.{os.getpid()}")
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={tmp}",
            html_path.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise ReportError(f"Chromium did not print {html_path} within {timeout:g} s") from None
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReportError(f"Chromium could not print {html_path}: {last}")
        os.replace(tmp, pdf_path)


def write_report(
    store: Store, site: str, week: str, out: Path, *, pdf: bool = True, now: float | None = None
) -> list[Path]:
    """OUT/<office>/<office>-<week>.html (and .pdf); the paths written."""
    report = build(store, site, week, now)
    folder = out / site
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / f"{site}-{report.week}.html"
    atomic_write(html_path, render_html(report).encode())
    paths = [html_path]
    if pdf:
        pdf_path = html_path.with_suffix(".pdf")
        to_pdf(html_path, pdf_path)
        paths.append(pdf_path)
    return paths
