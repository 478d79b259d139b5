"""Small plots as inline SVG: a line over steps or versions, and horizontal bars per module.

Drawn on the server with nothing but presentation attributes, so they need no script, no
stylesheet of their own and no ``unsafe-inline`` in the Content-Security-Policy. Every label is
escaped. Missing values (None, NaN) leave a gap in the line, never a zero.

>>> svg = line_plot([1.0, 0.5, None, 0.25], title="loss")
>>> svg.count("<path"), "loss" in svg
(2, True)
"""

from __future__ import annotations

import math

from markupsafe import Markup, escape

W, H = 520, 180
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 24, 28
INK, GRID, LINE, MARK_BAD = "#222", "#ddd", "#1f5fa8", "#b00020"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _ticks(lo: float, hi: float) -> list[float]:
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * k / 4 for k in range(5)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def line_plot(values: list, *, title: str, x_label: str = "step", marks: list[bool] | None = None,
              hline: float | None = None, hline_label: str = "", width: int = W, height: int = H) -> Markup:
    """``values`` against their index; ``marks[i]`` draws point i in red (a rejected or failed one)."""
    pts = [(i, float(v)) for i, v in enumerate(values) if _finite(v)]
    if not pts:
        return Markup(f'<p class="muted">{escape(title)}: no values recorded</p>')
    ys = [y for _, y in pts] + ([hline] if _finite(hline) else [])
    lo, hi = min(ys), max(ys)
    if hi == lo:  # a flat series: a band around it, never one that crosses zero for a positive value
        pad = abs(lo) * 0.25 or 0.5
        lo, hi = (lo - pad if lo - pad >= 0 or lo < 0 else 0.0), hi + pad
    n = max(len(values) - 1, 1)
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def sx(i: float) -> float:
        return LEFT + pw * i / n

    def sy(y: float) -> float:
        return TOP + ph * (1 - (y - lo) / (hi - lo))

    parts = [f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<text x="{LEFT}" y="14" font-size="12" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for t in _ticks(lo, hi):
        y = sy(t)
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="{INK}">{_fmt(t)}</text>')
    parts.append(f'<text x="{width - RIGHT}" y="{height - 6}" font-size="10" text-anchor="end" fill="{INK}">'
                 f'{escape(x_label)} 0…{len(values) - 1}</text>')
    if _finite(hline):
        y = sy(hline)
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{MARK_BAD}" '
                     f'stroke-dasharray="4 3"/><text x="{width - RIGHT}" y="{y - 4:.1f}" font-size="10" '
                     f'text-anchor="end" fill="{MARK_BAD}">{escape(hline_label)}</text>')
    for run in _runs(values):
        d = "M" + "L".join(f"{sx(i):.1f} {sy(float(values[i])):.1f}" for i in run)
        parts.append(f'<path d="{d}" fill="none" stroke="{LINE}" stroke-width="1.8"/>')
    if len(pts) <= 200:
        for i, y in pts:
            bad = bool(marks and i < len(marks) and marks[i])
            parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(y):.1f}" r="{3 if bad else 2.2}" '
                         f'fill="{MARK_BAD if bad else LINE}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _runs(values: list) -> list[list[int]]:
    """Index runs of finite values (a gap splits the line)."""
    runs: list[list[int]] = [[]]
    for i, v in enumerate(values):
        if _finite(v):
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def bar_plot(items: list[tuple[str, float]], *, title: str, width: int = W, bar_h: int = 14) -> Markup:
    """Horizontal bars, one per (label, value ≥ 0), longest first as given."""
    items = [(label, float(v)) for label, v in items if _finite(v)]
    if not items:
        return Markup(f'<p class="muted">{escape(title)}: nothing to plot</p>')
    label_w = 230
    top = 22
    height = top + len(items) * (bar_h + 4) + 6
    peak = max(v for _, v in items) or 1.0
    pw = width - label_w - 70
    parts = [f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<text x="0" y="14" font-size="12" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for k, (label, v) in enumerate(items):
        y = top + k * (bar_h + 4)
        text = label if len(label) <= 38 else "…" + label[-37:]
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" font-size="10" text-anchor="end" fill="{INK}">'
                     f'{escape(text)}</text><rect x="{label_w}" y="{y}" width="{max(pw * v / peak, 1):.1f}" '
                     f'height="{bar_h}" fill="{LINE}"/><text x="{label_w + pw * v / peak + 4:.1f}" y="{y + bar_h - 3}" '
                     f'font-size="10" fill="{INK}">{_fmt(v)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
