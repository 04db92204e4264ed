"""A small line plot drawn with PIL (no plotting library needed): metric curves against radius.

    line_plot("fid_vs_radius.png", radii, {"FD-domain S1": [...], "FD-domain S2": [...]},
              title="FID vs sampling radius", xlabel="radius", ylabel="FD")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vq3d.utils.io import atomic_write_bytes

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_plot(path: str | Path, x: Sequence[float], series: dict[str, Sequence[float | None]], title: str = "",
              xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (640, 420)) -> None:
    """Draw each series (values at `x`; None or NaN = missing) as a line with markers, write a PNG atomically."""
    width, height = size
    left, right, top, bottom = 70, 20, 34, 60 + 16 * ((len(series) + 1) // 2)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    xticks = nice_ticks(min(x), max(x)) if x else [0.0]
    yticks = nice_ticks(min(values), max(values)) if values else [0.0, 1.0]
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(xv: float, yv: float) -> tuple[float, float]:
        px = left + (xv - x0) / ((x1 - x0) or 1.0) * plot_w
        py = top + plot_h - (yv - y0) / ((y1 - y0) or 1.0) * plot_h
        return px, py

    for yv in yticks:  # grid and y labels
        _, py = to_px(x0, yv)
        draw.line([(left, py), (left + plot_w, py)], fill=(228, 228, 228))
        text = _label(yv)
        draw.text((left - 6 - draw.textlength(text, font=font), py - 6), text, fill="black", font=font)
    for xv in xticks:
        px, _ = to_px(xv, y0)
        draw.line([(px, top + plot_h), (px, top + plot_h + 4)], fill="black")
        text = _label(xv)
        draw.text((px - draw.textlength(text, font=font) / 2, top + plot_h + 6), text, fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for k, (name, vs) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        points = [to_px(xv, v) for xv, v in zip(x, vs) if v is not None and math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        lx = left + (k % 2) * (plot_w // 2)  # legend: two columns under the axis label
        ly = top + plot_h + 40 + 16 * (k // 2)
        draw.line([(lx, ly + 6), (lx + 18, ly + 6)], fill=color, width=2)
        draw.text((lx + 24, ly), name, fill="black", font=font)
    draw.text(((width - draw.textlength(title, font=font)) / 2, 10), title, fill="black", font=font)
    draw.text((left + (plot_w - draw.textlength(xlabel, font=font)) / 2, top + plot_h + 22), xlabel, fill="black",
              font=font)
    draw.text((6, 10), ylabel, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
