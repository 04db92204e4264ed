"""Pixel reconstruction losses: MSE and the DALL-E logit-Laplace negative log-likelihood."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of images in [-1, 1]; (B, 3, H, W) each."""
    return F.mse_loss(pred, target)


class LogitLaplaceLoss(nn.Module):
    """Logit-Laplace NLL (DALL-E, Ramesh et al. 2021, Sec. A.3) on pixels mapped to [eps, 1-eps].

    Pixels x in [0, 1] become x' = eps + (1 - 2 eps) x. The density on (0, 1) with location mu
    and scale b is f(x') = exp(-|logit(x') - mu| / b) / (2 b x' (1 - x')). The decoder's mean
    colour gives mu = logit(x'_pred); the scale b is one learned scalar per colour channel.
    This is a likelihood in logit space, not an L1 loss on pixels.
    """

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(3))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: (B, 3, H, W) in [-1, 1]; returns the mean NLL per pixel and channel."""
        def squash(x: Tensor) -> Tensor:
            return self.eps + (1.0 - 2.0 * self.eps) * ((x + 1.0) / 2.0).clamp(0.0, 1.0)

        x, mu = squash(target), torch.logit(squash(pred))
        log_b = self.log_scale.view(1, 3, 1, 1)
        nll = (torch.logit(x) - mu).abs() * torch.exp(-log_b) + log_b + math.log(2.0) + torch.log(x * (1 - x))
        return nll.mean()
