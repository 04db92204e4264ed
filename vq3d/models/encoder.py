"""Stage-1 encoders: image (B, 3, H, W) in [-1, 1] -> token features (B, h*w, D).

`ViTEncoder` is the paper's (ViT-S in the paper preset); `CNNEncoder` is the "CNN enc, dec"
ablation of Table 3 (row 2).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from vq3d.models.vit import Transformer, init_vit_weights


class ViTEncoder(nn.Module):
    """Non-overlapping p x p patches -> linear embedding -> Transformer."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        if resolution % patch:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch}")
        self.grid = resolution // patch
        self.embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.transformer = Transformer(self.grid**2, width, layers, heads, mlp)
        init_vit_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)  # (B, h*w, D)
        return self.transformer(x)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block (VQGAN style)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = math.gcd(32, channels)
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CNNEncoder(nn.Module):
    """log2(p) stride-2 stages of residual convolutions down to an (res/p)^2 token grid."""

    def __init__(self, resolution: int, patch: int, width: int, channels: int = 64) -> None:
        super().__init__()
        if patch & (patch - 1) or resolution % patch:
            raise ValueError(f"the CNN encoder needs a power-of-two patch_size dividing the resolution, got {patch}")
        self.grid = resolution // patch
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
        for _ in range(int(math.log2(patch))):
            layers += [ResBlock(channels), nn.Conv2d(channels, channels, 4, stride=2, padding=1)]
        layers += [ResBlock(channels), nn.GroupNorm(math.gcd(32, channels), channels), nn.SiLU(),
                   nn.Conv2d(channels, width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)  # (B, h*w, D)
