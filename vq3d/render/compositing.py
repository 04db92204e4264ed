"""Volume rendering by alpha compositing (NeRF's quadrature, Max 1995 / Mildenhall et al. 2020).

For intervals i along a ray with density sigma_i (per unit ray distance) and length delta_i:

    alpha_i = 1 - exp(-sigma_i delta_i)
    T_i     = exp(-sum_{j<i} sigma_j delta_j)      (transmittance up to the interval)
    w_i     = T_i alpha_i                          (sum_i w_i = 1 - T_S <= 1: the opacity)

Expected values are weight-averaged per-interval values. With `opaque_last` the last interval
absorbs whatever light is left (alpha = 1): used for `background="none"`, where the last
interval reaches `far` (often infinity) and every ray saturates.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vq3d.precision import fp32, upcast

Background = Literal["none", "black", "white"]
MAX_DELTA = 1e10  # stands in for an infinite last interval (far = inf)


@fp32
def interval_lengths(t_edges: Tensor) -> Tensor:
    """Lengths (..., S) of the intervals between edges (..., S+1); infinite ones -> 1e10."""
    return (t_edges[..., 1:] - t_edges[..., :-1]).clamp(0.0, MAX_DELTA)


@fp32
def alpha_weights(density: Tensor, deltas: Tensor, opaque_last: bool = False) -> Tensor:
    """Compositing weights w_i = T_i alpha_i (..., S), fp32, from density and interval lengths
    (..., S) (cast to fp32). Differentiable in `density` (not in `deltas`); saves only its inputs
    for backward.
    """
    if torch.is_grad_enabled() and density.requires_grad:
        return _AlphaWeights.apply(density, deltas.detach(), opaque_last)
    return _alpha_weights(density, deltas, opaque_last)[0]


def _alpha_weights(density: Tensor, deltas: Tensor, opaque_last: bool) -> tuple[Tensor, Tensor]:
    """Weights (..., S) and the transmittance after each interval, T_{i+1} (..., S)."""
    optical = density * deltas  # (..., S)
    through = torch.cumsum(optical, dim=-1)  # optical depth up to the end of interval i
    after = torch.exp(-through)  # T_{i+1}
    before = torch.cat([torch.ones_like(after[..., :1]), after[..., :-1]], dim=-1)  # T_i
    alpha = -torch.expm1(-optical)  # 1 - exp(-sigma delta), accurate for thin intervals
    if opaque_last:  # the last interval absorbs everything that reaches it
        alpha = torch.cat([alpha[..., :-1], torch.ones_like(alpha[..., -1:])], dim=-1)
        after = torch.cat([after[..., :-1], torch.zeros_like(after[..., -1:])], dim=-1)
    return before * alpha, after


class _AlphaWeights(torch.autograd.Function):
    """Weights from densities with a hand-written backward (Mildenhall et al. 2020's quadrature):
    dw_i/dsigma_i = delta_i T_{i+1}, dw_i/dsigma_j = -delta_j w_i for j < i (T_{S+1} = 0 when the
    last interval is opaque)."""

    @staticmethod
    def forward(ctx, density: Tensor, deltas: Tensor, opaque_last: bool) -> Tensor:  # type: ignore[override]
        weights, _ = _alpha_weights(density, deltas, opaque_last)
        ctx.opaque_last = opaque_last
        ctx.save_for_backward(density, deltas)
        return weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        density, deltas = ctx.saved_tensors
        grad = upcast(grad)
        weights, after = _alpha_weights(density, deltas, ctx.opaque_last)
        gw = grad * weights
        later = torch.flip(torch.cumsum(torch.flip(gw, [-1]), dim=-1), [-1]) - gw  # sum_{i>j} g_i w_i
        return deltas * (grad * after - later), None, None


@fp32
def composite(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum over samples, fp32: weights (..., S), values (..., S, K) -> (..., K)."""
    return (weights.unsqueeze(-1) * values).sum(-2)


def background_rgb(background: Background, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """Background colour (3,) in [0, 1] composited behind the last sample (None for "none")."""
    if background == "none":
        return None
    if background == "black":
        return torch.zeros(3, dtype=dtype, device=device)
    if background == "white":
        return torch.ones(3, dtype=dtype, device=device)
    raise ValueError(f"unknown background {background!r}: use none, black or white")
