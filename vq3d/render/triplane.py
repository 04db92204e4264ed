"""Triplane feature lookup: bilinear features of 3D points from three axis-aligned planes.

Planes are `(B, 3, C, R, R)` and cover the cube [-2, 2]^3 (the range of the contraction):
plane 0 is XY, plane 1 is YZ, plane 2 is ZX -- three distinct planes (EG3D's `generate_planes`
gives XY, XZ, ZX, two of them the same plane; eg3d issue #67). Within plane k, indexed
`[c, v, u]` (row v, column u), the column coordinate u is the first axis of its pair and the
row coordinate v the second: XY -> (u=x, v=y), YZ -> (u=y, v=z), ZX -> (u=z, v=x).
Texel j of a row or column is centred at -2 + 4 (j + 0.5) / R (grid_sample's
`align_corners=False`); points beyond the outermost texel centres read the border texel
(`padding_mode="border"`). The three plane features are summed or averaged.

Speed (CPU): the lookup is one `embedding_bag` over a channel-last table (12 weighted rows per
point: 3 planes x 4 bilinear corners), and its backward sums each texel's points with
`embedding_bag` over the points sorted by texel, then adds one row per distinct texel
(`scatter_corners`; on GPU a plain `index_add_`) -- much faster than `grid_sample`'s CPU
backward on large planes. Both run over chunks of points, so temporaries stay bounded.
Activation memory: only the coordinates are saved for backward (indices and weights are
recomputed); the plane values are saved only when the coordinates themselves need a gradient.

Precision (`vq3d.precision`): coordinates, corner indices and bilinear fractions are fp32; the
features are read in the table's dtype (bf16 planes under autocast give bf16 features, with no
fp32 copy of the planes), so the 12 corner weights are cast to it for that sum; the table's
gradient is accumulated in fp32 (with fp32 weights) and returned in the table's dtype.
Chunk sizes come from the render's `ExecutionPolicy` (`vq3d.render.execution`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vq3d.precision import LOW_PRECISION, full_precision, upcast, wide
from vq3d.render.execution import DEFAULT_POLICY, ExecutionPolicy, lookup_bytes_per_point

PlaneReduce = Literal["sum", "mean"]

PLANE_EXTENT = 2.0  # planes cover [-PLANE_EXTENT, PLANE_EXTENT]^3


def planes_to_table(planes: Tensor) -> Tensor:
    """Channel-last view/copy of `planes` (B, 3, C, R, R) -> (B, 3, R, R, C), contiguous.

    No copy is made when `planes` is already channel-last in memory (e.g. produced as
    `x.view(B, 3, R, R, C).permute(0, 1, 4, 2, 3)`); the copy's backward is a free permute.
    """
    if planes.dim() != 5 or planes.shape[1] != 3 or planes.shape[-1] != planes.shape[-2]:
        raise ValueError(f"planes must be (B, 3, C, R, R), got {tuple(planes.shape)}")
    if planes.shape[-1] < 2:
        raise ValueError("plane resolution must be at least 2")
    return planes.permute(0, 1, 3, 4, 2).contiguous()


def corner_indices(coords: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Bilinear corners of points on the three planes.

    coords: (B, N, 3) fp32 points in [-2, 2]^3 (others are clamped to the border texels).
    Returns row00 (B*N, 3), int32 (int64 for tables of 2^31 rows or more): for each plane, the
    row of the flattened table (B*3*R*R, C) holding the point's lower-left corner texel (the
    others are row00 + 1, + R, + R + 1, see `corner_rows`); weights (B*N, 3, 4): the bilinear
    weights of those 4 corners (each plane's sum to 1).
    """
    if coords.dtype in LOW_PRECISION:
        raise TypeError(f"plane coordinates must be fp32 (the precision policy), got {coords.dtype}")
    batch, n, _ = coords.shape
    r = resolution
    pix = coords.reshape(-1, 3) * (r / (2.0 * PLANE_EXTENT)) + (r - 1) / 2.0  # texel j's centre at j
    # nan (from a diverged step, which the step guard then skips) reads texel 0, not out of range
    pix = pix.nan_to_num_(0.0).clamp_(0.0, r - 1.0)
    lo = pix.floor().clamp_(max=r - 2)
    frac = pix.sub_(lo)  # (P, 3) in [0, 1]
    # plane k reads (u, v) = axes (k, k+1 mod 3): append axis 0, then u = [:, :3], v = [:, 1:];
    # int32 rows (sorting them in the backward is twice as fast) unless the table is too large
    index_dtype = torch.int32 if batch * 3 * r * r < 2**31 else torch.int64
    lo = torch.cat([lo, lo[:, :1]], dim=1).to(index_dtype)
    frac = torch.cat([frac, frac[:, :1]], dim=1)
    plane_id = (torch.arange(batch, device=coords.device, dtype=index_dtype) * (3 * r * r)).repeat_interleave(
        n).unsqueeze(1) + torch.arange(3, device=coords.device, dtype=index_dtype) * (r * r)
    row00 = plane_id + lo[:, 1:] * r + lo[:, :3]
    fu, fv = frac[:, :3], frac[:, 1:]
    gu, gv = 1.0 - fu, 1.0 - fv
    # corners (u0,v0) (u0+1,v0) (u0,v0+1) (u0+1,v0+1); no out= writes, so that it compiles
    weights = torch.stack([gu * gv, fu * gv, gu * fv, fu * fv], dim=-1)
    return row00, weights


def corner_rows(row00: Tensor, resolution: int) -> Tensor:
    """All 12 table rows (P, 12) of the corners (order: plane, then (0,0), (1,0), (0,1), (1,1))."""
    corner = torch.arange(4, device=row00.device, dtype=row00.dtype)  # built on the device: no copy
    offsets = corner % 2 + corner // 2 * resolution  # 0, 1, R, R + 1
    return (row00.unsqueeze(-1) + offsets).view(row00.shape[0], 12)


def gather_corners(table: Tensor, row00: Tensor, weights: Tensor, resolution: int,
                   scale: float = 1.0, indexed: bool = False) -> Tensor:
    """Features (P, C) in the table's dtype = scale * sum of the 12 weighted corner rows of
    `table` (rows, C); the fp32 weights are cast to that dtype (bf16 features are allowed).
    `indexed`: as indexing and a sum, which `torch.compile` fuses into one loop (eager it would
    hold 12 rows a point; `embedding_bag` does not)."""
    w = weights.view(-1, 12)
    if scale != 1.0:
        w = w * scale
    w = w.to(table.dtype)
    rows = corner_rows(row00, resolution)
    if indexed:
        return (table[rows] * w.unsqueeze(-1)).sum(1)
    return F.embedding_bag(rows, table, mode="sum", per_sample_weights=w)


def dense_segment(entries: int, rows: int, channels: int) -> bool:
    """Whether the `segment` scatter of `entries` lower-left rows (3 a point) into a gradient of
    `rows` x `channels` takes a bag for every row (dense) rather than one per distinct texel:
    where its temporaries, a corner's sums (rows x C fp32) and each row's count and offset (~32
    bytes), take no more than the 12 weighted rows of C fp32 a point that the chunk budget counts
    for the index_add path. Speed is no reason against it: measured on 2 CPU cores (16 channels),
    dense took 4.6 / 1.9 / 0.71 / 0.43 ms against 8.7 / 5.7 / 2.4 / 0.60 ms for per-texel
    index_add at 4, 1, 1/4 and 1/16 entries a row (batch 8, 32x32 planes; 128x128 planes at 1/4
    and 1/16: 6.2 / 3.0 against 15.0 / 3.2 ms)."""
    return rows * (4 * channels + 32) <= (entries // 3) * 48 * channels


def scatter_corners(out: Tensor, row00: Tensor, weights: Tensor, grad: Tensor, resolution: int,
                    scale: float = 1.0, method: str = "auto", chunk: int | None = None) -> Tensor:
    """Adjoint of `gather_corners`: out[row] += scale * weight * grad[p] for every corner of every
    point p. out: (rows, C), modified in place and returned (fp32 for a gradient: many small
    sums); row00 (P, 3), weights (P, 3, 4), grad (P, C) (cast to out's dtype); `chunk` points
    at a time (default: the CPU budget's chunk for C channels).

    method: "segment" (sort the points' lower-left rows and sum each texel's points with one
    `embedding_bag` per corner: when the entries are many against the rows, with a bag for every
    row, so that each corner's sums are one dense block added at the corner's offset; otherwise
    one bag per distinct texel, added with `index_add_` -- fast on CPU, where `index_add_` costs
    ~50-100 ns a row),
    "index_add" (one atomic row add per entry: fast on GPU), or "auto" (by device).
    """
    if method == "auto":
        method = "index_add" if grad.is_cuda else "segment"
    if method not in ("segment", "index_add"):
        raise ValueError(f"unknown scatter method {method!r}")
    c = grad.shape[-1]
    if chunk is None:
        chunk = DEFAULT_POLICY.per_chunk(lookup_bytes_per_point(c, 0, 1))
    corner_offsets = (0, 1, resolution, resolution + 1)
    rows = out.shape[0]
    for start in range(0, row00.shape[0], chunk):
        sl = slice(start, start + chunk)
        g = grad[sl].to(out.dtype)
        w = weights[sl] * scale if scale != 1.0 else weights[sl]
        if method == "index_add":
            src = (g[:, None, :] * w.reshape(-1, 12, 1)).reshape(-1, c)
            out.index_add_(0, corner_rows(row00[sl], resolution).reshape(-1), src)
            continue
        keys, order = row00[sl].reshape(-1).sort()
        point = torch.div(order, 3, rounding_mode="floor")
        w_sorted = w.reshape(-1, 4)[order]  # (3 * chunk, 4)
        if dense_segment(keys.numel(), rows, c):
            # a bag for every row of `out` (empty ones sum to 0): each corner's sums are then a
            # dense block, added to `out` shifted by the corner's offset, with no per-row index_add
            counts = torch.bincount(keys, minlength=rows)
            offsets = counts.cumsum(0) - counts  # start of each row's run in sorted order
            for corner, offset in enumerate(corner_offsets):
                sums = F.embedding_bag(point, g, offsets, mode="sum",
                                       per_sample_weights=w_sorted[:, corner].contiguous())
                out[offset:].add_(sums[:rows - offset])
                del sums
            continue
        texels, counts = torch.unique_consecutive(keys, return_counts=True)
        offsets = counts.cumsum(0) - counts  # start of each texel's run in sorted order
        for corner, offset in enumerate(corner_offsets):
            sums = F.embedding_bag(point, g, offsets, mode="sum",
                                   per_sample_weights=w_sorted[:, corner].contiguous())
            out.index_add_(0, texels + offset if offset else texels, sums)
            del sums  # free before the next corner's sums are allocated
    return out


class _TriplaneLookup(torch.autograd.Function):
    """features (B, N, C) = scale * sum over planes of bilinear(table, coords), in the table's
    dtype; coords are fp32. The table's gradient is summed in fp32."""

    @staticmethod
    def forward(ctx, table: Tensor, coords: Tensor, scale: float,  # type: ignore[override]
                policy: ExecutionPolicy) -> Tensor:
        batch, _, r, _, c = table.shape
        n = coords.shape[1]
        flat_table = table.reshape(-1, c)
        out = table.new_empty(batch, n, c)
        chunk = policy.per_chunk(lookup_bytes_per_point(c, 0, 1))
        with full_precision():
            for sl in point_chunks(batch, n, chunk):
                row00, weights = corner_indices(coords[:, sl], r)
                out[:, sl] = gather_corners(flat_table, row00, weights, r, scale).view(batch, -1, c)
        ctx.scale, ctx.policy, ctx.chunk = scale, policy, chunk
        ctx.table_shape, ctx.table_dtype = table.shape, table.dtype
        ctx.save_for_backward(coords, table if ctx.needs_input_grad[1] else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        coords, table = ctx.saved_tensors
        batch, _, r, _, c = ctx.table_shape
        n = coords.shape[1]
        grad_table = (grad_out.new_zeros(batch * 3 * r * r, c, dtype=wide(ctx.table_dtype))
                      if ctx.needs_input_grad[0] else None)
        grad_coords = torch.zeros_like(coords) if ctx.needs_input_grad[1] else None
        with full_precision():
            for sl in point_chunks(batch, n, ctx.chunk):
                row00, weights = corner_indices(coords[:, sl], r)
                grad_flat = upcast(grad_out[:, sl].reshape(-1, c))
                if grad_table is not None:
                    scatter_corners(grad_table, row00, weights, grad_flat, r, ctx.scale, ctx.policy.scatter,
                                    ctx.chunk)
                if grad_coords is not None:
                    grad_coords[:, sl] = ctx.scale * _coords_grad(table.reshape(-1, c), coords[:, sl], row00,
                                                                  grad_flat, r)
        if grad_table is not None:
            grad_table = grad_table.view(ctx.table_shape).to(ctx.table_dtype)
        return grad_table, grad_coords, None, None


def point_chunks(batch: int, n: int, points: int) -> list[slice]:
    """Slices of the N axis so that each chunk holds at most about `points` points over the batch,
    in chunks of equal size (the last one shorter by less than the number of chunks): few
    distinct shapes, so that a compiled chunk step (`render.compile_field`) compiles few graphs."""
    most = max(1, points // max(batch, 1))
    count = -(-n // most)  # ceil
    step = max(1, -(-n // max(count, 1)))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _coords_grad(table: Tensor, coords: Tensor, row00: Tensor, grad: Tensor, r: int) -> Tensor:
    """d(loss)/d(coords) (B, N, 3) of the bilinear lookup (zero where the border clamps)."""
    batch, n, _ = coords.shape
    pix = coords * (r / (2.0 * PLANE_EXTENT)) + (r - 1) / 2.0
    inside = (pix > 0) & (pix < r - 1)  # strictly between the outermost texel centres
    pix = pix.clamp(0.0, r - 1.0)
    frac = pix - pix.floor().clamp(max=r - 2)
    fu, fv = frac, frac.roll(-1, dims=-1)  # (B, N, 3) per plane
    corners = upcast(table[corner_rows(row00, r)].view(batch, n, 3, 4, -1))  # (B, N, plane, corner, C)
    g = (corners * grad.view(batch, n, 1, 1, -1)).sum(-1)  # (B, N, 3, 4): grad . f_corner
    d_fu = (1 - fv) * (g[..., 1] - g[..., 0]) + fv * (g[..., 3] - g[..., 2])
    d_fv = (1 - fu) * (g[..., 2] - g[..., 0]) + fu * (g[..., 3] - g[..., 1])
    # plane k: u is axis k, v is axis k+1 -> axis a receives d_fu of plane a and d_fv of plane a-1
    per_axis = d_fu + d_fv.roll(1, dims=-1)
    return per_axis * inside.to(per_axis.dtype) * (r / (2.0 * PLANE_EXTENT))


def triplane_lookup(table: Tensor, coords: Tensor, reduce: PlaneReduce = "sum",
                    policy: ExecutionPolicy = DEFAULT_POLICY) -> Tensor:
    """Features (B, N, C), in the table's dtype, of points `coords` (B, N, 3) in [-2, 2]^3 from a
    channel-last table.

    table: (B, 3, R, R, C) from `planes_to_table`. Differentiable in both arguments. The
    coordinates are used in fp32 whatever their dtype (the precision policy).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"unknown plane reduction {reduce!r}: use 'sum' or 'mean'")
    if table.dim() != 5 or table.shape[1] != 3:
        raise ValueError(f"table must be (B, 3, R, R, C), got {tuple(table.shape)}")
    if coords.dim() != 3 or coords.shape[0] != table.shape[0] or coords.shape[-1] != 3:
        raise ValueError(f"coords must be (B, N, 3) with B={table.shape[0]}, got {tuple(coords.shape)}")
    return _TriplaneLookup.apply(table, upcast(coords), 1.0 / 3.0 if reduce == "mean" else 1.0, policy)


def sample_triplanes(planes: Tensor, coords: Tensor, reduce: PlaneReduce = "sum") -> Tensor:
    """Features (B, N, C) of points (B, N, 3) from planes (B, 3, C, R, R) covering [-2, 2]^3."""
    return triplane_lookup(planes_to_table(planes), coords, reduce)
