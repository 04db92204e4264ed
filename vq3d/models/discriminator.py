"""StyleGAN2-style residual discriminator (Karras et al. 2020, Fig. 7c), for images with 3
channels (main discriminator) or 4 = RGB + depth (novel-view discriminator)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs then 2x average-pool, with a 1x1 pooled skip; sum scaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """(B, in_channels, H, W) -> logits (B,). Halves the resolution down to 4x4.

    Channels double per block from `base` up to `max_channels`; a minibatch-stddev feature
    (group of up to 4) precedes the final conv, as in StyleGAN2.
    """

    def __init__(self, resolution: int, in_channels: int = 3, base: int = 32, max_channels: int = 256) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"the discriminator needs a power-of-two resolution >= 8, got {resolution}")
        blocks = int(math.log2(resolution)) - 2
        chans = [min(base * 2**i, max_channels) for i in range(blocks + 1)]
        self.from_input = nn.Conv2d(in_channels, chans[0], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(chans[i], chans[i + 1]) for i in range(blocks)))
        self.final_conv = nn.Conv2d(chans[-1] + 1, chans[-1], 3, padding=1)
        self.final = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 16, chans[-1]), nn.LeakyReLU(0.2),
                                   nn.Linear(chans[-1], 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.leaky_relu(self.from_input(x), 0.2))  # (B, C, 4, 4)
        x = torch.cat([x, minibatch_stddev(x)], dim=1)
        return self.final(F.leaky_relu(self.final_conv(x), 0.2)).squeeze(1)


def minibatch_stddev(x: Tensor, group: int = 4) -> Tensor:
    """One feature map (B, 1, H, W): the mean std of features within groups of the batch."""
    B, C, H, W = x.shape
    g = math.gcd(group, B)
    y = x.view(g, B // g, C, H, W)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B // g,)
    return std.repeat(g).view(B, 1, 1, 1).expand(B, 1, H, W)
