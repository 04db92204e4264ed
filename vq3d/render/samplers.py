"""Ray samplers in normalized "s-space" (Mip-NeRF 360, Sec. 2 and 3).

A ray's distance t in [near, far] maps to s in [0, 1], linear in disparity (inverse depth):

    disparity(s) = (1 - s) / near + s / far          (1/far = 0 when far is infinite)
    t(s)         = 1 / disparity(s)

Samples are *intervals*: each level holds S + 1 sorted edges in s with the first edge at 0 and
the last at 1, so the S intervals always partition the whole ray (and with `far = inf` the last
interval reaches infinity). The first level spaces its edges evenly in s (equally spaced
disparities, jittered in training); later levels resample the previous level's weight histogram
by inverse CDF (Mip-NeRF 360's proposal sampling), after max-dilation of the histogram and
annealing of its weights (w^a, a = slope x / ((slope - 1) x + 1), x = step / anneal_steps),
both as in the Mip-NeRF 360 code (`internal/models.py`, `internal/stepfun.py`). Everything here
runs without gradients: sample positions are not differentiated, and in fp32 under autocast
too (the precision policy, `vq3d.precision`): bf16 would merge 33 NeRF edges onto 7.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vq3d.precision import GEOMETRY_DTYPE, fp32, wide
from vq3d.render.execution import DEFAULT_POLICY, ExecutionPolicy, compile_once, resample_bytes_per_ray


def s_to_disparity(s: Tensor, near: float, far: float) -> Tensor:
    """Disparity (1/t) at normalized distances `s` (any shape); linear in s."""
    inv_far = 0.0 if math.isinf(far) else 1.0 / far
    return (1.0 - s) / near + s * inv_far


def s_to_t(s: Tensor, near: float, far: float) -> Tensor:
    """Ray distance t at normalized distances `s`; t(1) = far (inf when far is infinite)."""
    return 1.0 / s_to_disparity(s, near, far)


def check_near_far(near: float, far: float) -> None:
    if not (near > 0.0 and far > near):
        raise ValueError(f"need 0 < near < far (far may be inf), got near={near}, far={far}")


def anneal_power(step: int | None, anneal_steps: int, slope: float) -> float:
    """Exponent applied to proposal weights before resampling (Mip-NeRF 360 annealing).

    Rises from 0 at step 0 (resampling ignores the histogram's shape) to 1 at `anneal_steps`
    along the curve slope x / ((slope - 1) x + 1); 1 when `step` is None or annealing is off.
    """
    if step is None or anneal_steps <= 0 or slope <= 0:
        return 1.0
    x = min(max(step / anneal_steps, 0.0), 1.0)
    return slope * x / ((slope - 1.0) * x + 1.0)


def stratified_u(shape: tuple[int, ...], num: int, jitter: bool, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = GEOMETRY_DTYPE) -> Tensor:
    """Positions (*shape, num - 1) in (0, 1), in `dtype` (fp32, or fp64; never bf16), for the
    num - 1 interior edges of `num` intervals.

    Fixed at k / num (k = 1..num-1) without jitter; with jitter edge k is uniform in
    [(k - 0.5) / num, (k + 0.5) / num], so the edges stay sorted and cover (0, 1) evenly. The
    jitter is drawn on `device`, from `generator`, which must live there (no host copies).
    """
    device, dtype = torch.device(device), wide(dtype)
    k = torch.arange(1, num, device=device, dtype=dtype)
    if not jitter:
        return (k / num).expand(*shape, num - 1).contiguous()
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the sampling generator lives on {generator.device}, the rays on {device}: "
                         "draw the jitter where the rays are")
    noise = torch.rand(*shape, num - 1, generator=generator, dtype=dtype, device=device)
    return (k - 0.5 + noise) / num


def sample_histogram(edges: Tensor, mass: Tensor, u: Tensor) -> Tensor:
    """Inverse CDF of the piecewise-constant density with `edges` (..., K+1), `mass` (..., K).

    u: (..., M) sorted positions in [0, 1]. Returns s (..., M), sorted. `mass` needs no
    normalization but must have a positive sum on every ray.
    """
    cdf = torch.cumsum(mass, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf / cdf[..., -1:]], dim=-1)  # (..., K+1)
    k = mass.shape[-1]
    idx = (torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True) - 1).clamp(0, k - 1)
    c0, c1 = cdf.gather(-1, idx), cdf.gather(-1, idx + 1)
    e0, e1 = edges.gather(-1, idx), edges.gather(-1, idx + 1)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return e0 + frac * (e1 - e0)


def uniform_edges(shape: tuple[int, ...], num: int, u: Tensor | None = None) -> Tensor:
    """Edges (*shape, num + 1) evenly spaced in s over [0, 1]; interior edges at `u` if given."""
    if u is None:
        u = stratified_u(shape, num, jitter=False)
    zeros = torch.zeros(*shape, 1, dtype=u.dtype, device=u.device)
    return torch.cat([zeros, u, zeros + 1.0], dim=-1)


def resample_edges(edges: Tensor, weights: Tensor, u: Tensor, anneal: float = 1.0) -> Tensor:
    """New edges (..., M + 2) from the weight histogram (`edges` (..., K+1), `weights` (..., K)).

    u: (..., M) positions in (0, 1) for the interior edges (see `stratified_u`); the first and
    last edges are 0 and 1. Weights are raised to `anneal` (per interval of positive width) and
    mixed with a tiny uniform density so that empty histograms still sample the whole ray.
    """
    width = edges[..., 1:] - edges[..., :-1]
    w = weights.clamp_min(0.0)
    if anneal != 1.0:
        w = torch.where(width > 0, (w + 1e-12).pow(anneal), torch.zeros_like(w))
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    mass = w + 1e-5 * width  # never all zero: width sums to 1
    interior = sample_histogram(edges, mass, u)
    zeros = torch.zeros_like(interior[..., :1])
    return torch.cat([zeros, interior, zeros + 1.0], dim=-1)


def max_dilate_weights(edges: Tensor, weights: Tensor, dilation: float) -> tuple[Tensor, Tensor]:
    """Mip-NeRF 360's max-dilation of a weight histogram, in s-space over the domain [0, 1].

    Each interval [e_i, e_{i+1}] is widened by `dilation` on both sides; the dilated density at
    a point is the maximum density (weight / width) of the widened intervals covering it.
    edges (..., K+1), weights (..., K) -> the dilated histogram's edges (..., 2K) (the widened
    intervals' ends, clipped to [0, 1]) and weights (..., 2K-1), renormalized to sum 1.
    Range maxima use a sparse table: O(K log K) per ray.
    """
    k = weights.shape[-1]
    width = edges[..., 1:] - edges[..., :-1]
    pdf = torch.where(width > 0, weights / width.clamp_min(1e-12), torch.zeros_like(weights)).clamp_min(0.0)
    # breakpoints: widened starts e_i - d (i < K) then widened ends e_{i+1} + d; both runs sorted
    points = torch.cat([edges[..., :-1] - dilation, edges[..., 1:] + dilation], dim=-1).clamp(0.0, 1.0)
    new_edges, order = points.sort(dim=-1)
    # between breakpoints j and j+1, the intervals whose widened span covers the gap are those
    # that started at or before j and have not ended: a contiguous range [lo, hi]
    starts_seen = torch.cumsum((order < k).to(torch.int64), dim=-1)[..., :-1]  # (..., 2K-1)
    ends_seen = torch.arange(1, 2 * k, device=edges.device) - starts_seen
    hi, lo = starts_seen - 1, ends_seen
    valid = lo <= hi
    lo, hi = lo.clamp(0, k - 1), hi.clamp(0, k - 1)
    # sparse table: level j holds the max over windows of 2^j intervals starting at i (0-padded)
    levels = [pdf]
    span = 1
    while 2 * span <= k:
        prev = levels[-1]
        shifted = torch.cat([prev[..., span:], torch.zeros_like(prev[..., :span])], dim=-1)
        levels.append(torch.maximum(prev, shifted))
        span *= 2
    flat = torch.stack(levels, dim=-2).flatten(-2)  # (..., L * K)
    # floor(log2(n)) for n = 0..k, built on the device (no host-to-device copy): the number of
    # powers 2^j (j >= 1) that n reaches
    counts = torch.arange(k + 1, device=edges.device)
    floor_log2 = sum(((counts >= (1 << j)).long() for j in range(1, len(levels))), torch.zeros_like(counts))
    level = floor_log2[(hi - lo + 1).clamp(1, k)]
    a = flat.gather(-1, level * k + lo)
    b = flat.gather(-1, level * k + (hi + 1 - (1 << level)).clamp_min(0))
    dilated_pdf = torch.where(valid, torch.maximum(a, b), torch.zeros_like(a))
    mass = dilated_pdf * (new_edges[..., 1:] - new_edges[..., :-1])
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
    return new_edges, mass


def dilation_for_level(level: int, samples_per_level: list[int], multiplier: float, bias: float) -> float:
    """Mip-NeRF 360's dilation before resampling level `level` (>= 1): bias + multiplier times
    the expected width of an interval after the levels so far (1 / prod of their sample counts).
    """
    prod = 1
    for n in samples_per_level[:level]:
        prod *= n
    return bias + multiplier / prod


@fp32
def propose_edges(edges: Tensor, weights: Tensor, u: Tensor, dilation: float, anneal: float,
                  policy: ExecutionPolicy = DEFAULT_POLICY) -> Tensor:
    """The next level's edges (..., M + 2) from the previous level's histogram (edges (..., K+1),
    weights (..., K)): dilate by `dilation` (if > 0), anneal, resample at `u` (..., M). Rays are
    resampled in chunks sized by `policy` (the temporaries of dilation)."""
    lead = edges.shape[:-1]
    edges = edges.reshape(-1, edges.shape[-1])
    weights = weights.reshape(-1, weights.shape[-1])
    u = u.reshape(-1, u.shape[-1])
    chunk = policy.per_chunk(resample_bytes_per_ray(weights.shape[-1]))
    # compiled once annealing is over (a new exponent each step would compile a graph each step)
    step = compile_once(_propose_chunk) if policy.compiled and anneal == 1.0 else _propose_chunk
    if chunk >= edges.shape[0]:  # one chunk: no copy into `out`
        return step(edges, weights, u, dilation, anneal).view(*lead, -1)
    out = edges.new_empty(edges.shape[0], u.shape[-1] + 2)
    for start in range(0, edges.shape[0], chunk):
        sl = slice(start, start + chunk)
        out[sl] = step(edges[sl], weights[sl], u[sl], dilation, anneal)
    return out.view(*lead, -1)


def _propose_chunk(edges: Tensor, weights: Tensor, u: Tensor, dilation: float, anneal: float) -> Tensor:
    """`propose_edges` on rays (R, K+1), (R, K), (R, M) -> (R, M + 2)."""
    if dilation > 0:
        edges, weights = max_dilate_weights(edges, weights, dilation)
    return resample_edges(edges, weights, u, anneal)
