"""Server-rendered SVG charts: no script, no CDN, readable offline and on a phone.

Each function returns SVG markup (Markup, safe to put in a template): numbers are formatted by
us and every label is escaped. Charts scale with the page (viewBox, width 100%); colours come from
classes in style.css; each chart has a <title> and an aria-label saying what it shows in words.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

W, H = 600, 180
PAD_L, PAD_R, PAD_T, PAD_B = 46, 8, 10, 24


def _num(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    if v >= 10 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return v


def _xlabel(t: float, span: float) -> str:
    fmt = "%H:%M" if span <= 2 * 86400 else "%a %d"
    return time.strftime(fmt, time.localtime(t))


def _frame(label: str, inner: list[str], cls: str) -> Markup:
    return Markup(
        f'<svg class="chart {cls}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="none">'
        f"<title>{escape(label)}</title>{''.join(inner)}</svg>"
    )


def _axes(top: float, t0: float, t1: float) -> list[str]:
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    out = [
        f'<line class="axis" x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}"/>',
        f'<line class="grid" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>',
        f'<line class="grid" x1="{x0}" y1="{(y0 + y1) / 2}" x2="{x1}" y2="{(y0 + y1) / 2}"/>',
        f'<text class="lbl" x="{x0 - 4}" y="{y0 + 4}" text-anchor="end">{_num(top)}</text>',
        f'<text class="lbl" x="{x0 - 4}" y="{(y0 + y1) / 2 + 4}" text-anchor="end">'
        f"{_num(top / 2)}</text>",
        f'<text class="lbl" x="{x0 - 4}" y="{y1}" text-anchor="end">0</text>',
    ]
    span = t1 - t0
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        t = t0 + span * frac
        x = x0 + (x1 - x0) * frac
        out.append(
            f'<text class="lbl" x="{x:.1f}" y="{H - 6}" text-anchor="{anchor}">'
            f"{escape(_xlabel(t, span))}</text>"
        )
    return out


def line(points: Sequence[tuple[float, float]], label: str, unit: str) -> Markup:
    """An area chart of (time, value) points."""
    if not points:
        return _frame(f"{label}: no data yet", [], "empty")
    t0, t1 = points[0][0], points[-1][0]
    peak = max(v for _, v in points)
    top = _nice_max(peak)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    span = max(t1 - t0, 1.0)

    def xy(t: float, v: float) -> str:
        return f"{x0 + (x1 - x0) * (t - t0) / span:.1f},{y1 - (y1 - y0) * v / top:.1f}"

    pts = " ".join(xy(t, v) for t, v in points)
    area = f"{x0},{y1} {pts} {x1:.1f},{y1}"
    avg = sum(v for _, v in points) / len(points)
    words = f"{label}: peak {_num(peak)} {unit}, average {_num(avg)} {unit}"
    inner = [
        *_axes(top, t0, t1),
        f'<polygon class="area" points="{area}"/>',
        f'<polyline class="line" points="{pts}"/>',
    ]
    return _frame(words, inner, "line-chart")


SEV_CLASS = {1: "sev1", 2: "sev2", 3: "sev3"}
SEV_WORD = {1: "high", 2: "medium", 3: "low"}


def stacked(buckets: Sequence[tuple[float, Mapping[int, int]]], label: str, step: float) -> Markup:
    """Bars per time bucket, stacked by severity (1 high at the bottom)."""
    if not buckets:
        return _frame(f"{label}: no data yet", [], "empty")
    t0, t1 = buckets[0][0], buckets[-1][0] + step
    totals = [sum(c.values()) for _, c in buckets]
    top = _nice_max(max(totals) if totals else 0)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    bw = (x1 - x0) / len(buckets)
    inner = _axes(top, t0, t1)
    for i, (_, counts) in enumerate(buckets):
        y = float(y1)
        for sev in (1, 2, 3):
            n = counts.get(sev, 0)
            if not n:
                continue
            h = (y1 - y0) * n / top
            y -= h
            inner.append(
                f'<rect class="{SEV_CLASS[sev]}" x="{x0 + i * bw + 0.5:.1f}" y="{y:.1f}" '
                f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}"/>'
            )
    by_sev = {s: sum(c.get(s, 0) for _, c in buckets) for s in (1, 2, 3)}
    words = f"{label}: " + ", ".join(f"{by_sev[s]} {SEV_WORD[s]}" for s in (1, 2, 3))
    return _frame(words, inner, "bar-chart")


def bars(items: Sequence[tuple[str, int]], label: str, unit: str) -> Markup:
    """Horizontal bars, one per (name, value), biggest first."""
    if not items:
        return Markup(f'<p class="muted">{escape(label)}: nothing counted yet.</p>')
    row, lw = 26, 210
    h = row * len(items) + 4
    top = max(v for _, v in items) or 1
    inner = []
    for i, (name, v) in enumerate(items):
        y = 2 + i * row
        w = (W - lw - 70) * v / top
        inner.append(
            f'<text class="lbl name" x="{lw - 6}" y="{y + 17}" text-anchor="end">'
            f"{escape(name[:32])}</text>"
            f'<rect class="bar" x="{lw}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row - 8}"/>'
            f'<text class="lbl" x="{lw + w + 6:.1f}" y="{y + 17}">{v:,}</text>'
        )
    words = f"{label}: " + ", ".join(f"{n} {v} {unit}" for n, v in items)
    return Markup(
        f'<svg class="chart hbars" viewBox="0 0 {W} {h}" role="img" aria-label="{escape(words)}">'
        f"<title>{escape(words)}</title>{''.join(inner)}</svg>"
    )
