"""Non-saturating GAN losses (Goodfellow et al. 2014) and the lazy R1 penalty (StyleGAN2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def generator_loss(fake_logits: Tensor) -> Tensor:
    """-log sigmoid(D(fake)) = softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(discriminator: nn.Module, real: Tensor) -> Tensor:
    """||grad_x D(x)||^2 at real samples (B, C, H, W), averaged over the batch (Mescheder et al.)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(dim=1).mean()
