"""Mip-NeRF 360's NeRF regularizers: the distortion loss and the interlevel (proposal) loss.

Both work on step functions in normalized s-space (see `vq3d.render.samplers`): per ray,
edges (..., S+1) sorted in [0, 1] and weights (..., S). The paper's Eq. 4 weights them by
lambda_distort and lambda_interlevel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def distortion_loss(weights: Tensor, spacing_edges: Tensor) -> Tensor:
    """Mip-NeRF 360 distortion loss (Barron et al. 2022), mean over rays.

    Per ray: sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 d_i with interval midpoints m and
    widths d in s-space, computed in linear time (nerfacc's form) with exclusive prefix sums
    W_i = sum_{j<i} w_j and S_i = sum_{j<i} w_j m_j:

        sum_i [ w_i^2 d_i / 3 + 2 w_i (m_i W_i - S_i) ]

    weights: (..., S); spacing_edges: (..., S+1). Returns a scalar.
    """
    mid = 0.5 * (spacing_edges[..., 1:] + spacing_edges[..., :-1])
    width = spacing_edges[..., 1:] - spacing_edges[..., :-1]
    wm = weights * mid
    w_before = torch.cumsum(weights, dim=-1) - weights  # exclusive prefix sums
    wm_before = torch.cumsum(wm, dim=-1) - wm
    loss_bi = 2.0 * (wm * w_before - weights * wm_before).sum(-1)
    loss_uni = (weights.square() * width).sum(-1) / 3.0
    return (loss_bi + loss_uni).mean()


def outer_weights(spacing_edges: Tensor, proposal_spacing_edges: Tensor, proposal_weights: Tensor) -> Tensor:
    """Outer measure (..., S): for each interval of `spacing_edges` (..., S+1), the summed weight of
    every proposal interval (`proposal_spacing_edges` (..., K+1), `proposal_weights` (..., K)) that
    overlaps it (Mip-NeRF 360's bound)."""
    k = proposal_weights.shape[-1]
    cum = torch.cumsum(proposal_weights, dim=-1)
    cum = torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)  # (..., K+1)
    lo_edge = spacing_edges[..., :-1].contiguous()
    hi_edge = spacing_edges[..., 1:].contiguous()
    # proposal interval i overlaps [lo, hi] iff p_{i+1} > lo and p_i < hi
    first = torch.searchsorted(proposal_spacing_edges[..., 1:].contiguous(), lo_edge, right=True).clamp(0, k)
    end = torch.searchsorted(proposal_spacing_edges[..., :-1].contiguous(), hi_edge, right=False).clamp(0, k)
    end = torch.maximum(end, first)
    return cum.gather(-1, end) - cum.gather(-1, first)


def interlevel_loss(
    weights: Tensor,
    spacing_edges: Tensor,
    proposal_weights: list[Tensor],
    proposal_spacing_edges: list[Tensor],
    eps: float = 1e-7,
) -> Tensor:
    """Mip-NeRF 360 interlevel (proposal) loss: sum over proposal levels of
    mean over rays and intervals of relu(w - w_outer)^2 / (w + eps), NeRF weights detached.

    weights (..., S), spacing_edges (..., S+1): the NeRF level; proposal_weights[k] (..., K_k),
    proposal_spacing_edges[k] (..., K_k+1): proposal level k. Returns a scalar (0 with no proposals).
    """
    w = weights.detach()
    edges = spacing_edges.detach()
    loss = w.new_zeros(())
    for prop_w, prop_edges in zip(proposal_weights, proposal_spacing_edges):
        bound = outer_weights(edges, prop_edges.detach(), prop_w)
        loss = loss + (torch.relu(w - bound).square() / (w + eps)).mean()
    return loss
