"""Small image utilities shared by logging, exports and pages: colour maps, grids, PNG I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vq3d.utils.io import atomic_write


def to_unit(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1] (clamped)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def colorize(values: Tensor, lo: float | None = None, hi: float | None = None) -> Tensor:
    """Map (B, 1, H, W) or (H, W) scalars to RGB in [0, 1] with the Turbo colour map
    (Mikhailov 2019, polynomial approximation). Per image min-max unless lo/hi are given;
    near/high disparity is red, far/low is blue."""
    squeeze = values.dim() == 2
    v = values[None, None] if squeeze else values
    v = v.detach().float()
    flat = v.flatten(1)
    vmin = flat.min(dim=1).values if lo is None else torch.full((v.shape[0],), lo)
    vmax = flat.max(dim=1).values if hi is None else torch.full((v.shape[0],), hi)
    shape = (-1, 1, 1, 1)
    x = ((v - vmin.view(shape).to(v)) / (vmax - vmin).clamp_min(1e-8).view(shape).to(v)).clamp(0, 1)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    rgb = torch.cat([r, g, b], dim=1).clamp(0, 1)
    return rgb[0] if squeeze else rgb


def grid(images: Tensor, rows: int, pad: int = 2) -> Tensor:
    """Tile (N, 3, H, W) images in [0, 1] into one (3, rows*(H+pad)-pad, cols*(W+pad)-pad) image."""
    n, c, h, w = images.shape
    cols = (n + rows - 1) // rows
    out = torch.ones(c, rows * (h + pad) - pad, cols * (w + pad) - pad)
    for i in range(n):
        r, col = divmod(i, cols)
        out[:, r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i]
    return out


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str | Path, image: Tensor | np.ndarray) -> None:
    """Write a (3, H, W) float [0, 1] tensor or an (H, W[, 3]) uint8 array as PNG, atomically."""
    array = to_uint8(image) if isinstance(image, Tensor) else image
    atomic_write(path, lambda p: Image.fromarray(array).save(p, format="PNG"))


def upscale(images: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour enlargement (N, C, H, W) -> (N, C, H*f, W*f), for small renders."""
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
