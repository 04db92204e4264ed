"""Line charts as inline SVG (no plotting library): training curves on the demo page.

    svg = line_chart([Series("loss", steps, values)], "Stage 1 loss", "step", "loss")
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass
class Series:
    """One line: y over x (non-finite y values are gaps)."""

    name: str
    x: list[float]
    y: list[float]
    dashed: bool = False
    color: str | None = None
    points: list[tuple[float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.points = [(float(a), float(b)) for a, b in zip(self.x, self.y)
                       if b is not None and math.isfinite(float(b)) and math.isfinite(float(a))]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:.4g}"


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (fewer at the start)."""
    out, total, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        total += v
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def thin(points: list[tuple[float, float]], limit: int = 400) -> list[tuple[float, float]]:
    """At most about `limit` evenly strided points, always keeping the last."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def line_chart(series: list[Series], title: str, x_label: str, y_label: str, width: int = 460,
               height: int = 260) -> str:
    """An SVG chart of every series with axes, round ticks and a legend (a note when empty)."""
    drawn = [s for s in series if s.points]
    esc = html.escape
    if not drawn:
        return f'<p class="missing">{esc(title)}: nothing logged</p>'
    left, right, top, bottom = 58, 12, 26, 40
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in nice_ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_label(t)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + ph / 2})">{esc(y_label)}</text>')
    for i, s in enumerate(drawn):
        color = s.color or PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in thin(s.points))
        dash = ' stroke-dasharray="5,4"' if s.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{coords}"/>')
        if len(s.points) <= 30 and not s.dashed:  # few points: mark each (a single one is only a dot)
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>'
                         for x, y in s.points)
        ly = top + 12 + 14 * i
        parts.append(f'<line x1="{left + pw - 150}" x2="{left + pw - 132}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"{dash}/>'
                     f'<text x="{left + pw - 128}" y="{ly}">{esc(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
