"""The paper's pointwise, weighted, scale- and shift-invariant depth loss (Eq. 1-2) and the
scale loss (Eq. 3).

For one image with pixels i = 1..N and NeRF samples k = 1..L, D_ik is the inverse depth
(disparity) of sample k on ray i, W_ik its volume-rendering weight and d_i the pseudo-GT
disparity. Eq. 1 solves the weighted least squares

    s*, t* = argmin_{s,t} 1/N sum_i sum_k W_ik (s D_ik + t - d_i)^2

in closed form from the 2x2 normal equations, and Eq. 2 is the weighted residual at (s*, t*).
Supervising every sample's weight (not the accumulated depth) makes the loss behave like a
distortion loss that pulls the weight onto the pseudo-GT surface.

The normal sums and the residual are fp32 under autocast too (the precision policy,
`vq3d.precision`): sums over every pixel and sample lose too much in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.precision import fp32


def _normal_sums(weights: Tensor, sample_disparity: Tensor, target: Tensor) -> tuple[Tensor, ...]:
    """Per-image sums of Eq. 1's normal equations: sum W D^2, sum W D, sum W, sum W D d, sum W d (each (B,))."""
    W, D, d = weights, sample_disparity, target[..., None]
    WD = W * D
    return ((WD * D).sum(dim=(1, 2)), WD.sum(dim=(1, 2)), W.sum(dim=(1, 2)),
            (WD * d).sum(dim=(1, 2)), (W * d).sum(dim=(1, 2)))


def _solve(a: Tensor, b: Tensor, c: Tensor, e: Tensor, f: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    det = a * c - b * b
    det = torch.where(det.abs() < eps, torch.full_like(det, eps), det)
    return (c * e - b * f) / det, (a * f - b * e) / det


@fp32
def solve_scale_shift(weights: Tensor, sample_disparity: Tensor, target: Tensor,
                      eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Closed-form s*, t* of Eq. 1 per image.

    weights, sample_disparity: (B, N, L); target: (B, N). Returns s*, t*: (B,).
    Normal equations: [sum W D^2, sum W D; sum W D, sum W] [s; t] = [sum W D d; sum W d].
    """
    return _solve(*_normal_sums(weights, sample_disparity, target), eps=eps)


@fp32
def depth_loss(weights: Tensor, sample_disparity: Tensor, target: Tensor,
               grad_through_st: bool = True, mask: Tensor | None = None,
               min_scale: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 2 averaged over the batch; also returns s*, t* (B,) for Eq. 3 and logging.

    weights, sample_disparity: (B, N, L); target: (B, N) pseudo-GT disparity; mask: optional
    (B, N) of pixels to use. With `grad_through_st=False` s*, t* are treated as constants.

    `min_scale` > 0 clamps s* from below (and re-solves t for that s). Why: while the weights
    are spread along every ray, s* is ~0 and the loss's gradient along each ray is proportional
    to s*, so geometry never starts to form (a saddle). A floor early in training breaks it;
    once s* exceeds the floor the loss is exactly Eq. 2 again.
    """
    if mask is not None:
        weights = weights * mask[..., None].to(weights.dtype)
    sums = _normal_sums(weights, sample_disparity, target)
    s, t = _solve(*sums)
    if min_scale > 0:
        # Second normal equation b s + c t = f gives the best t for a given s (equal to t* when
        # s = s*), with b = sum W D, c = sum W, f = sum W d.
        _, b, c, _, f = sums
        s = s.clamp_min(min_scale)
        t = (f - s * b) / c.clamp_min(1e-8)
    if not grad_through_st:
        s, t = s.detach(), t.detach()
    return _weighted_residual(weights, sample_disparity, target, s, t, mask), s, t


def _weighted_residual(weights: Tensor, sample_disparity: Tensor, target: Tensor, s: Tensor, t: Tensor,
                       mask: Tensor | None) -> Tensor:
    """Eq. 2 at the given s, t (B,): sum_ik W_ik (s D_ik + t - d_i)^2 / N, averaged over the batch."""
    residual = s[:, None, None] * sample_disparity + t[:, None, None] - target[..., None]
    n_pixels = weights.shape[1] if mask is None else mask.sum(dim=1).clamp_min(1)
    per_image = (weights * residual.square()).sum(dim=(1, 2)) / n_pixels
    return per_image.mean()


@fp32
def metric_depth_loss(weights: Tensor, sample_disparity: Tensor, target: Tensor,
                      mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eq. 2 with the scale and shift known (s = 1, t = 0), for targets in the renderer's own
    disparity units (the synthetic scenes' true 1 / depth); also returns Eq. 1's s* (B,), detached,
    which should approach 1.

    Why: Eq. 1-2 leave each image's disparity free up to s and t, so the shift t, i.e. how far
    the scene sits from the camera, is fixed only by the novel-view GAN. Measured on the demo
    preset: with the relative loss the object was rendered at 2.1x its true distance and the
    walls near infinity, so views that orbit the origin moved the object the wrong way.
    weights, sample_disparity: (B, N, L); target: (B, N).
    """
    if mask is not None:
        weights = weights * mask[..., None].to(weights.dtype)
    ones = torch.ones(weights.shape[0], dtype=weights.dtype, device=weights.device)
    loss = _weighted_residual(weights, sample_disparity, target, ones, torch.zeros_like(ones), mask)
    with torch.no_grad():
        s, _ = solve_scale_shift(weights, sample_disparity, target)
    return loss, s


def scale_loss(s: Tensor, small_scale: float, max_scale: float = 1.0) -> Tensor:
    """Eq. 3: max(0, -s*) + lambda_smallscale * max(s* - max_scale, 0), averaged over the batch.

    The first term keeps the disparity scale from flipping sign; the second keeps rendered
    disparity from becoming flatter than the target (perceptually flat novel views). The paper
    uses max_scale = 1; it is in the units of `loss.scale_unit` (look-at or world disparity), so a
    dataset whose true geometry has a larger s* (see the synthetic benchmark) needs a larger one.
    """
    return (F.relu(-s) + small_scale * F.relu(s - max_scale)).mean()


ROBUST_QUANTILES = (0.02, 0.98)  # what robust_normalize_disparity maps to 0 and 1


def robust_normalize_disparity(disparity: Tensor, quantiles: tuple[float, float] = ROBUST_QUANTILES) -> Tensor:
    """Per-image affine normalization that maps the target's 2nd and 98th percentiles to 0 and
    1; (B, ...) -> same. Units of Eq. 1's s* and Eq. 3's threshold then follow the bulk of the
    image, not its two most extreme pixels (one stray pixel of min-max normalization can halve
    every other pixel's range). Percentiles by nearest rank (a sort: no host sync)."""
    flat = disparity.flatten(1)
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    lo_rank, hi_rank = (min(n - 1, max(0, round(q * (n - 1)))) for q in quantiles)
    shape = (-1, *[1] * (disparity.dim() - 1))
    lo, hi = ordered[:, lo_rank].view(shape), ordered[:, hi_rank].view(shape)
    return (disparity - lo) / (hi - lo).clamp_min(1e-8)


def normalize_disparity(disparity: Tensor) -> Tensor:
    """Per-image min-max normalization to [0, 1] (the depth cache's convention); (B, ...) -> same."""
    flat = disparity.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (disparity.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (disparity.dim() - 1))
    return (disparity - lo) / (hi - lo).clamp_min(1e-8)
