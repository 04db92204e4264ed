"""Stage-1 decoders: code vectors (B, h*w, code_dim) -> the scene representation.

- `TriplaneDecoder` (the paper's, ViT-L in the paper preset): a Transformer over the token grid
  and a linear head that writes each token's f x f patch of all three planes, giving
  triplanes (B, 3, C, R, R) with R = h * f.
- `CNNTriplaneDecoder`: the "CNN enc, dec" ablation (Table 3, row 2).
- `ImplicitDecoder`: the "w/o triplanes" ablation (Table 3, row 7): the Transformer's tokens are
  pooled to one latent per image that conditions an MLP field (conditioning by concatenation,
  as in GIRAFFE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vq3d.models.encoder import ResBlock
from vq3d.models.vit import Transformer, init_vit_weights


def _patch_factor(grid: int, plane_resolution: int) -> int:
    if plane_resolution % grid:
        raise ValueError(
            f"plane_resolution {plane_resolution} must be a multiple of the token grid {grid}")
    return plane_resolution // grid


def arrange_planes(patches: Tensor, layout: str) -> Tensor:
    """Token patches assembled in image order, (B, 3, C, R, R) with [.., row, column] = the image's
    (row, column) of the token that wrote it -> triplanes (B, 3, C, R, R) in the renderer's
    [.., v, u] indexing (vq3d/render/triplane.py: XY (u=x, v=y), YZ (u=y, v=z), ZX (u=z, v=x)).

    "raster": unchanged. "aligned": the canonical camera looks down -z with +y up, so an image row
    counts -y and a column +x; the XY plane is flipped upright (each token writes the texels behind
    its patch), YZ takes y from the image rows (z from the columns) and ZX x from the columns (z
    from the rows). A fixed permutation of texels: no cost, no parameters."""
    if layout == "raster":
        return patches
    if layout != "aligned":
        raise ValueError(f"unknown model.plane_layout {layout!r}: use raster or aligned")
    xy, yz, zx = patches.unbind(1)
    return torch.stack([xy.flip(-2), yz.flip(-2).transpose(-1, -2), zx.transpose(-1, -2)], dim=1)


class TriplaneDecoder(nn.Module):
    """(B, h*w, code_dim) -> triplanes (B, 3, C, R, R)."""

    def __init__(self, grid: int, code_dim: int, width: int, layers: int, heads: int, mlp: int,
                 plane_channels: int, plane_resolution: int, layout: str = "raster") -> None:
        super().__init__()
        self.grid, self.channels, self.layout = grid, plane_channels, layout
        self.factor = _patch_factor(grid, plane_resolution)
        self.embed = nn.Linear(code_dim, width)
        self.transformer = Transformer(grid * grid, width, layers, heads, mlp)
        self.head = nn.Linear(width, 3 * plane_channels * self.factor**2)
        init_vit_weights(self)

    def forward(self, codes: Tensor) -> Tensor:
        B, h, f, C = codes.shape[0], self.grid, self.factor, self.channels
        x = self.head(self.transformer(self.embed(codes)))  # (B, h*w, 3*C*f*f)
        x = x.view(B, h, h, 3, C, f, f).permute(0, 3, 4, 1, 5, 2, 6)  # (B, 3, C, h, f, w, f)
        return arrange_planes(x.reshape(B, 3, C, h * f, h * f), self.layout)


class CNNTriplaneDecoder(nn.Module):
    """Token grid -> residual convolutions with log2(R/h) nearest-upsampling stages -> triplanes."""

    def __init__(self, grid: int, code_dim: int, plane_channels: int, plane_resolution: int,
                 channels: int = 64, layout: str = "raster") -> None:
        super().__init__()
        self.layout = layout
        factor = _patch_factor(grid, plane_resolution)
        if factor & (factor - 1):
            raise ValueError(f"the CNN decoder needs plane_resolution / grid to be a power of two, got {factor}")
        self.grid, self.channels = grid, plane_channels
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1), ResBlock(channels)]
        for _ in range(int(math.log2(factor))):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1),
                       ResBlock(channels)]
        layers += [nn.GroupNorm(math.gcd(32, channels), channels), nn.SiLU(),
                   nn.Conv2d(channels, 3 * plane_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, codes: Tensor) -> Tensor:
        B, h = codes.shape[0], self.grid
        x = self.net(codes.transpose(1, 2).reshape(B, -1, h, h))  # (B, 3*C, R, R)
        return arrange_planes(x.view(B, 3, self.channels, x.shape[-2], x.shape[-1]), self.layout)


def fourier_features(points: Tensor, frequencies: int) -> Tensor:
    """NeRF positional encoding: (..., 3) -> (..., 3 + 6 * frequencies)."""
    scales = 2.0 ** torch.arange(frequencies, dtype=points.dtype, device=points.device)
    angles = points[..., None] * scales  # (..., 3, F)
    return torch.cat([points, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class ImplicitField(nn.Module):
    """Features for points from an MLP conditioned on a per-scene latent.

    Called as `field(points (B, N, 3)) -> features (B, N, C)` once bound to latents (B, L) by
    `bind(latents)`, so the renderer can use it wherever it would read triplanes.
    """

    def __init__(self, latent_dim: int, hidden: int, out_channels: int, frequencies: int = 6) -> None:
        super().__init__()
        self.frequencies = frequencies
        in_dim = 3 + 6 * frequencies + latent_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_channels))

    def bind(self, latents: Tensor) -> "BoundImplicitField":
        return BoundImplicitField(self, latents)


class BoundImplicitField:
    """An `ImplicitField` with its latents (B, L): a callable points (B, N, 3) -> (B, N, C)."""

    def __init__(self, field: ImplicitField, latents: Tensor) -> None:
        self.field, self.latents = field, latents

    def __call__(self, points: Tensor) -> Tensor:
        enc = fourier_features(points, self.field.frequencies)
        lat = self.latents[:, None, :].expand(-1, points.shape[1], -1)
        return self.field.mlp(torch.cat([enc, lat], dim=-1))

    def detach(self) -> "BoundImplicitField":
        return BoundImplicitField(self.field, self.latents.detach())


class ImplicitDecoder(nn.Module):
    """(B, h*w, code_dim) -> per-scene latents (B, hidden) for an `ImplicitField`."""

    def __init__(self, grid: int, code_dim: int, width: int, layers: int, heads: int, mlp: int,
                 latent_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(code_dim, width)
        self.transformer = Transformer(grid * grid, width, layers, heads, mlp)
        self.head = nn.Linear(width, latent_dim)
        init_vit_weights(self)

    def forward(self, codes: Tensor) -> Tensor:
        return self.head(self.transformer(self.embed(codes)).mean(dim=1))
