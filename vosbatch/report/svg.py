"""Small inline-SVG charts (no plotting dependency): horizontal bars, stacked bars, lines.

Each function returns an ``<svg>`` string that scales with the page (viewBox) and carries
``<title>`` tooltips with the exact values.
"""
from __future__ import annotations

import math
from html import escape
from typing import Dict, List, Optional, Sequence, Tuple

PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#718096",
           "#e53e3e", "#2c5282", "#9c4221", "#276749"]
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _nice_max(v: float) -> float:
    """A round axis end at or above ``v`` (1, 2, 2.5, 5 x 10^k)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * k + 1e-12:
            return m * k
    return 10 * k


def _ticks(vmax: float, n: int = 5) -> List[float]:
    return [vmax * i / n for i in range(n + 1)]


def _legend(names: Sequence[str], colours: Sequence[str], x: float, y: float) -> str:
    parts, cx = [], x
    for name, col in zip(names, colours):
        parts.append(f'<rect x="{cx:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{col}"/>'
                     f'<text x="{cx + 14:.1f}" y="{y:.1f}" {FONT}>{escape(name)}</text>')
        cx += 24 + 7 * len(name)
    return "".join(parts)


def bar_chart(
    categories: Sequence[str],
    series: Dict[str, Sequence[Optional[float]]],
    x_label: str = "",
    vmax: Optional[float] = None,
    width: int = 720,
) -> str:
    """Horizontal grouped bars: one row per category, one bar per series (None = no bar)."""
    names = list(series)
    colours = PALETTE[: len(names)] if len(names) > 1 else [PALETTE[0]]
    bar_h = 12 if len(names) == 1 else 9
    row_h = bar_h * len(names) + 6
    left = 12 + 7 * max([len(c) for c in categories] + [4])
    top, bottom = 24, 34
    height = top + row_h * len(categories) + bottom
    plot_w = width - left - 20
    values = [v for vals in series.values() for v in vals if v is not None and math.isfinite(v)]
    vmax = vmax or _nice_max(max(values, default=1.0))
    sx = lambda v: left + plot_w * max(0.0, min(v, vmax)) / vmax  # noqa: E731
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">']
    for t in _ticks(vmax):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom}" stroke="#e2e8f0"/>'
                   f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" {FONT}>{_fmt(t)}</text>')
    for i, cat in enumerate(categories):
        y0 = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y0 + row_h / 2 + 3:.1f}" text-anchor="end" {FONT}>{escape(cat)}</text>')
        for j, name in enumerate(names):
            v = series[name][i]
            if v is None or not math.isfinite(v):
                continue
            y = y0 + 3 + j * bar_h
            out.append(f'<rect x="{left}" y="{y}" width="{max(0.5, sx(v) - left):.1f}" height="{bar_h - 1}" '
                       f'fill="{colours[j]}"><title>{escape(cat)} {escape(name)}: {v:.3f}</title></rect>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT}>{escape(x_label)}</text>')
    if len(names) > 1:
        out.append(_legend(names, colours, left, 14))
    out.append("</svg>")
    return "".join(out)


def stacked_bar_chart(
    categories: Sequence[str],
    stages: Dict[str, Sequence[float]],
    x_label: str = "",
    width: int = 720,
) -> str:
    """Horizontal stacked bars: one row per category, one segment per stage (e.g. s/frame)."""
    names = list(stages)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    row_h = 16
    left = 12 + 7 * max([len(c) for c in categories] + [4])
    legend_rows = 1 + sum(24 + 7 * len(n) for n in names) // (width - left)
    top, bottom = 10 + 16 * legend_rows, 34
    height = top + row_h * len(categories) + bottom
    plot_w = width - left - 20
    totals = [sum(stages[n][i] for n in names) for i in range(len(categories))]
    vmax = _nice_max(max(totals, default=1.0))
    scale = plot_w / vmax
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">']
    for t in _ticks(vmax):
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - bottom}" stroke="#e2e8f0"/>'
                   f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" {FONT}>{_fmt(t)}</text>')
    for i, cat in enumerate(categories):
        y = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" {FONT}>{escape(cat)}</text>')
        x = float(left)
        for name, col in zip(names, colours):
            v = stages[name][i]
            if v <= 0:
                continue
            out.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{v * scale:.1f}" height="{row_h - 4}" fill="{col}">'
                       f'<title>{escape(cat)} {escape(name)}: {v:.4f}</title></rect>')
            x += v * scale
        out.append(f'<text x="{x + 4:.1f}" y="{y + 12}" {FONT}>{_fmt(totals[i])}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT}>{escape(x_label)}</text>')
    # legend, wrapped over as many rows as needed
    cx, cy = float(left), 14.0
    for name, col in zip(names, colours):
        w = 24 + 7 * len(name)
        if cx + w > width and cx > left:
            cx, cy = float(left), cy + 16
        out.append(_legend([name], [col], cx, cy))
        cx += w
    out.append("</svg>")
    return "".join(out)


def line_chart(
    series: Dict[str, Tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    y_label: str = "",
    x_label: str = "frame",
    vmax: Optional[float] = None,
    marks: Sequence[float] = (),
    width: int = 340,
    height: int = 180,
) -> str:
    """Lines of (x, y) per series; ``marks`` are x positions drawn as red ticks (worst frames)."""
    names = list(series)
    colours = PALETTE[: len(names)]
    left, right, top, bottom = 40, 10, 22, 30
    pw, ph = width - left - right, height - top - bottom
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys if y is not None and math.isfinite(y)]
    xmax = max(xs_all, default=1) or 1
    vmax = vmax or _nice_max(max(ys_all, default=1.0))
    sx = lambda x: left + pw * x / xmax  # noqa: E731
    sy = lambda y: top + ph * (1 - max(0.0, min(y, vmax)) / vmax)  # noqa: E731
    out = [f'<svg class="chart small" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">',
           f'<text x="{left}" y="13" {FONT} font-weight="bold">{escape(title)}</text>']
    for t in _ticks(vmax, 4):
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e2e8f0"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" {FONT}>{_fmt(t)}</text>')
    for m in marks:
        x = sx(m)
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 6}" stroke="#e53e3e" stroke-width="2"/>')
    for name, col in zip(names, colours):
        xs, ys = series[name]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y is not None and math.isfinite(y))
        if pts:
            out.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="1.6">'
                       f'<title>{escape(title)} {escape(name)}</title></polyline>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="#a0aec0"/>'
               f'<text x="{left}" y="{height - 4}" {FONT}>0</text>'
               f'<text x="{width - right}" y="{height - 4}" text-anchor="end" {FONT}>{int(xmax)}</text>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT}>{escape(x_label)}</text>'
               f'<text x="{width - right}" y="13" text-anchor="end" {FONT}>{escape(y_label)}</text>')
    if len(names) > 1:
        out.append(_legend(names, colours, left + 7 * len(title) + 16, 13))
    out.append("</svg>")
    return "".join(out)


def scatter_chart(points: Sequence[Tuple[float, float, str]], title: str = "", x_label: str = "", y_label: str = "",
                  width: int = 340, height: int = 300) -> str:
    """One dot per (x, y, label) on [0,1] x [0,1], with the diagonal y = x (a calibrated estimate lies on it)."""
    left, right, top, bottom = 40, 12, 22, 34
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + pw * max(0.0, min(1.0, x))  # noqa: E731
    sy = lambda y: top + ph * (1 - max(0.0, min(1.0, y)))  # noqa: E731
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img">',
           f'<text x="{left}" y="13" {FONT} font-weight="bold">{escape(title)}</text>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{width - right}" y2="{sy(t):.1f}" stroke="#e2e8f0"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" text-anchor="end" {FONT}>{_fmt(t)}</text>'
                   f'<text x="{sx(t):.1f}" y="{top + ph + 12}" text-anchor="middle" {FONT}>{_fmt(t)}</text>')
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#a0aec0" stroke-dasharray="4 3"/>')
    for x, y, label in points:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{PALETTE[0]}" fill-opacity="0.75">'
                   f'<title>{escape(label)}: {_fmt(x)} / {_fmt(y)}</title></circle>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT}>{escape(x_label)}</text>'
               f'<text x="{left}" y="{top - 4}" {FONT}>{escape(y_label)}</text></svg>')
    return "".join(out)
