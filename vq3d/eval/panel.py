"""The picture `vq3d eval stage1 --panel` writes: held-out scenes against their ground truth.

Per scene (one row): input | reconstruction | rendered depth | true depth, then for each shown
novel view: truth | render | rendered depth. Depths are drawn as disparity on one colour scale
per row (the true canonical disparity's range), so a render that puts the scene too near or too
far shows up as a colour shift; tiles are enlarged (nearest) to at least `tile` px.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from vq3d.utils.images import colorize, to_uint8, to_unit
from vq3d.utils.io import atomic_write


class PanelRows:
    """Collects the first `rows` scenes' tiles during an evaluation (all tensors on CPU)."""

    def __init__(self, rows: int, novel_views: int = 2) -> None:
        self.rows, self.novel_views = rows, novel_views
        self.columns: list[list[Tensor]] = []  # per scene: tiles (3, H, W) in [0, 1]

    @property
    def full(self) -> bool:
        return len(self.columns) >= self.rows

    def add(self, images: Tensor, recon_rgb: Tensor, recon_depth: Tensor, true_depth: Tensor,
            novel_truth: Tensor, novel_rgb: list[Tensor], novel_depth: list[Tensor]) -> None:
        """One batch: images, recon_rgb (B, 3, H, W) in [-1, 1]; depths (B, 1, H, W) ray distance;
        novel_truth (B, K, 3, H, W); per rendered novel view v: novel_rgb[v] (B, 3, H, W) and
        novel_depth[v] (B, 1, H, W)."""
        k = min(self.novel_views, len(novel_rgb))
        for i in range(min(images.shape[0], self.rows - len(self.columns))):
            true_disp = 1.0 / true_depth[i:i + 1].float().cpu()
            lo, hi = float(true_disp.min()), float(true_disp.max())

            def disparity(depth: Tensor) -> Tensor:
                return colorize(1.0 / depth.float().cpu().clamp_min(1e-6), lo, hi)[0]

            row = [to_unit(images[i].cpu()), to_unit(recon_rgb[i].float().cpu()),
                   disparity(recon_depth[i:i + 1]), colorize(true_disp, lo, hi)[0]]
            for v in range(k):
                row += [to_unit(novel_truth[i, v].cpu()), to_unit(novel_rgb[v][i].float().cpu()),
                        disparity(novel_depth[v][i:i + 1])]
            self.columns.append(row)

    def image(self, tile: int = 96, gap: int = 4, header: int = 14) -> Image.Image:
        """The collected rows as one RGB picture with a header naming the columns."""
        if not self.columns:
            raise ValueError("no scenes were collected")
        res = self.columns[0][0].shape[-1]
        size = res * max(1, math.ceil(tile / res))
        cols = len(self.columns[0])
        names = ["input", "reconstruction", "depth", "true depth"]
        for v in range((cols - len(names)) // 3):  # three tiles per novel view
            names += [f"view {v + 1}: truth", "render", "depth"]
        sheet = Image.new("RGB", (cols * (size + gap) + gap, header + len(self.columns) * (size + gap) + gap),
                          "white")
        draw = ImageDraw.Draw(sheet)
        for c, name in enumerate(names):
            draw.text((gap + c * (size + gap) + 2, 1), name, fill="black")
        for r, row in enumerate(self.columns):
            for c, t in enumerate(row):
                xy = (gap + c * (size + gap), header + gap + r * (size + gap))
                sheet.paste(Image.fromarray(to_uint8(t)).resize((size, size), Image.NEAREST), xy)
        return sheet

    def save(self, path: str | Path) -> Path:
        """Write the picture as PNG, atomically."""
        picture = self.image()
        atomic_write(path, lambda p: picture.save(p, format="PNG"))
        return Path(path)
