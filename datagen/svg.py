"""Inline SVG charts for the HTML report: bars, histograms, line charts and intervals.

No plotting library: the report is one self-contained HTML file that opens anywhere, and these
few shapes are all it needs. Every chart labels its axes.
"""

from __future__ import annotations

import html
import math

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#9D755D"]


def svg_bars(labels: list[str], values: list[float], title: str, width: int = 640) -> str:
    """Horizontal bar chart; long labels are fine because bars run left to right."""
    if not values:
        return f"<p><em>{html.escape(title)}: nothing to show</em></p>"
    row, left, top = 24, 190, 28
    height = top + row * len(values) + 10
    peak = max(values) or 1
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        bar = (width - left - 70) * value / peak
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(label[:28])}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{row - 8}" fill="{PALETTE[i % 8]}"/>')
        parts.append(f'<text x="{left + bar + 4:.1f}" y="{y + 15}" font-size="12">{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(values: list[float], title: str, bins: int = 20, width: int = 640, height: int = 220,
                  x_label: str = "value", y_label: str = "records") -> str:
    if not values:
        return f"<p><em>{html.escape(title)}: no values</em></p>"
    low, high = min(values), max(values)
    if math.isclose(low, high):
        high = low + 1
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / (high - low) * bins))] += 1
    peak = max(counts)
    left, bottom, top = 52, 44, 24
    plot_w, plot_h = width - left - 10, height - top - bottom
    bar_w = plot_w / bins
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)} (n={len(values)})</text>']
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        parts.append(f'<rect x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                     f'height="{h:.1f}" fill="#4C78A8"><title>{count}</title></rect>')
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - 10}" y2="{axis_y}" stroke="#888"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#888"/>')
    parts.append(f'<text x="{left}" y="{axis_y + 14}" font-size="11">{low:.3g}</text>')
    parts.append(f'<text x="{width - 10}" y="{axis_y + 14}" font-size="11" text-anchor="end">{high:.3g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">'
                 f'{html.escape(x_label)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{axis_y}" font-size="11" text-anchor="end">0</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.0f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{html.escape(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_lines(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
              width: int = 640, height: int = 240) -> str:
    """Line chart of (x, y) series on shared axes; a one-point series is drawn as a dot."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<p><em>{html.escape(title)}: no values</em></p>"
    left, right, top, bottom = 56, 120, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi, y_hi = (x_lo + 1 if math.isclose(x_lo, x_hi) else x_hi), (y_lo + 1 if math.isclose(y_lo, y_hi) else y_hi)

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w, top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    axis_y = top + plot_h
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#888"/>',
             f'<text x="{left}" y="{axis_y + 14}" font-size="11">{x_lo:g}</text>',
             f'<text x="{left + plot_w}" y="{axis_y + 14}" font-size="11" text-anchor="end">{x_hi:g}</text>',
             f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{y_hi:.3g}</text>',
             f'<text x="{left - 4}" y="{axis_y}" font-size="11" text-anchor="end">{y_lo:.3g}</text>',
             f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">'
             f'{html.escape(x_label)}</text>',
             f'<text x="12" y="{top + plot_h / 2:.0f}" font-size="11" text-anchor="middle" '
             f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{html.escape(y_label)}</text>']
    for k, (name, values) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        coords = [xy(x, y) for x, y in sorted(values)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for (x, y), (vx, vy) in zip(coords, sorted(values), strict=True):
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>{name} step {vx:g}: '
                         f'{vy:.4g}</title></circle>')
        parts.append(f'<text x="{left + plot_w + 8}" y="{top + 14 + 16 * k}" font-size="12" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_intervals(rows: list[tuple[str, float, float, float]], title: str, width: int = 640) -> str:
    """Win-rates as dots with 95 % interval whiskers on a 0..1 axis, with the 0.5 (no difference) line."""
    if not rows:
        return f"<p><em>{html.escape(title)}: nothing to show</em></p>"
    row, left, right, top = 26, 250, 30, 28
    plot_w = width - left - right
    height = top + row * len(rows) + 30
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']
    mid = left + plot_w / 2
    parts.append(f'<line x1="{mid}" y1="{top}" x2="{mid}" y2="{top + row * len(rows)}" stroke="#aaa" '
                 f'stroke-dasharray="4 3"/>')
    for i, (label, rate, low, high) in enumerate(rows):
        y = top + i * row + row / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" font-size="12">{html.escape(label[:40])}'
                     f'</text>')
        parts.append(f'<line x1="{left + low * plot_w:.1f}" y1="{y}" x2="{left + high * plot_w:.1f}" y2="{y}" '
                     f'stroke="{PALETTE[i % 8]}" stroke-width="2"/>')
        parts.append(f'<circle cx="{left + rate * plot_w:.1f}" cy="{y}" r="4" fill="{PALETTE[i % 8]}">'
                     f'<title>{rate:.3f} [{low:.3f}, {high:.3f}]</title></circle>')
    axis_y = top + row * len(rows) + 4
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{left + tick * plot_w:.1f}" y="{axis_y + 12}" font-size="11" text-anchor="middle">'
                     f'{tick:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{axis_y + 26}" font-size="11" text-anchor="middle">'
                 "win-rate of the first model (95 % bootstrap interval)</text>")
    parts.append("</svg>")
    return "".join(parts)
