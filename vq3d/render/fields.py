"""The proposal and NeRF MLPs: triplane features -> density (and colour).

Both are small EG3D-style decoders (paper Sec. 3.3: 2 layers, 32 hidden units): softplus hidden
activations (computed as z - log(sigmoid(z)), see `softplus_and_sigmoid`), density =
softplus(raw - 1) (EG3D's ray marcher), colour = sigmoid(raw) in [0, 1] rendered directly (no
upsampler).

Memory (`recompute=True`, the default): `FieldMLP.from_triplanes` fuses lookup and MLP in one
autograd Function (`_TriplaneField`) that keeps only each sample's coordinates and either its C
features or (shared by all samples) the planes' table, and in backward recomputes each chunk of
points' hidden activations (and features), backpropagates through the MLP by hand and scatters
the feature gradient into the planes' gradient chunk by chunk -- so a sample costs 3 + C (or 3)
floats of activation memory instead of ~C + 2 * hidden + 20, and temporaries stay bounded by one
chunk.
With a feature callable (`FieldMLP.forward`) the features are saved and only the hidden
activations recomputed (`_RecomputedMLP`).

Compiled chunks (`render.compile_field`): each chunk's forward (`field_chunk_forward`: corners,
lookup, MLP) and its backward up to the scatter (`field_chunk_backward`: recomputed features and
the MLP's backward by hand) are plain functions of tensors, run eagerly or through
`torch.compile` (fused loops instead of one pass over memory per operation); the scatter into
the planes' gradient stays eager (`scatter_corners`).

Precision (`vq3d.precision`): the MLP runs in the autocast dtype when autocast is on (on CPU
or CUDA), else in its inputs' dtype (fp32; fp64 in gradient checks), with its inputs and weights
cast explicitly; each chunk's weight-gradient product is computed in that dtype (a bf16 matmul
accumulates in fp32 inside) and the chunks are summed in fp32; density and colour are returned
in fp32 (they feed transmittance and compositing). Chunk sizes come from the render's `ExecutionPolicy`.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vq3d.precision import compute_dtype, full_precision, upcast, wide
from vq3d.render.execution import DEFAULT_POLICY, ExecutionPolicy, compile_once, lookup_bytes_per_point
from vq3d.render.triplane import (
    PlaneReduce,
    corner_indices,
    gather_corners,
    point_chunks,
    scatter_corners,
    triplane_lookup,
)


def softplus_and_sigmoid(z: Tensor) -> tuple[Tensor, Tensor]:
    """softplus(z) = log(1 + e^z) and its derivative sigmoid(z), from one sigmoid and one log:
    softplus(z) = z - log(sigmoid(z)). Faster on CPU than `F.softplus` alone; absolute error
    below 1e-6 in float32 (z is clamped at -60, where softplus < 1e-26). Overwrites `z` when
    no gradient is tracked through it."""
    if torch.is_grad_enabled() and z.requires_grad:
        z = z.clamp(min=-60.0)
        s = torch.sigmoid(z)
        return z - torch.log(s), s
    z = z.clamp_(min=-60.0)  # in place: no graph needs z (fewer temporaries)
    s = torch.sigmoid(z)
    return z.sub_(torch.log(s)), s


def field_raw(x: Tensor, params: list[Tensor], with_rgb: bool) -> Tensor:
    """The field MLP on features x (..., C) with weights `params` [W1, b1, W2, b2, ...]:
    density (..., 1) [and rgb (..., 3)], activated."""
    num = len(params) // 2
    for i in range(num):
        x = F.linear(x, params[2 * i], params[2 * i + 1])
        if i < num - 1:
            x = softplus_and_sigmoid(x)[0]
    density = F.softplus(x[..., :1] - 1.0)
    if not with_rgb:
        return density
    return torch.cat([density, torch.sigmoid(x[..., 1:])], dim=-1)


class FieldMLP(nn.Module):
    """features (..., C) -> density (...,) [and rgb (..., 3) when `with_rgb`].

    `layers` linear layers in all: layers - 1 hidden layers of width `hidden`, then the head.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int, with_rgb: bool, recompute: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {layers}")
        dims = [in_dim] + [hidden] * (layers - 1) + [4 if with_rgb else 1]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.with_rgb = with_rgb
        self.recompute = recompute

    def params(self) -> list[Tensor]:
        """Weights and biases in layer order [W1, b1, W2, b2, ...]."""
        return [t for linear in self.linears for t in (linear.weight, linear.bias)]

    def raw(self, x: Tensor, params: list[Tensor] | None = None) -> Tensor:
        """(..., C) -> (..., 1 or 4): density [and rgb], activated; `params` replace the weights."""
        return field_raw(x, self.params() if params is None else params, self.with_rgb)

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        return out[..., 0], (out[..., 1:] if self.with_rgb else None)

    def _tracks_grad(self, *tensors: Tensor) -> bool:
        return torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, *self.params()))

    def chunk_points(self, policy: ExecutionPolicy) -> int:
        """Points per chunk of this MLP's fused lookup under `policy`."""
        first = self.linears[0]
        return policy.per_chunk(lookup_bytes_per_point(first.in_features, first.out_features,
                                                              len(self.linears)))

    def forward(self, features: Tensor,
                policy: ExecutionPolicy = DEFAULT_POLICY) -> tuple[Tensor, Tensor | None]:
        """features (..., C) -> density (...,) >= 0 and rgb (..., 3) in [0, 1] (None without
        colour), both fp32; computed in the autocast dtype when autocast is on."""
        dtype = compute_dtype(features.device, upcast(features).dtype)
        if self.recompute and self._tracks_grad(features):
            out = _RecomputedMLP.apply(self, features, dtype, self.chunk_points(policy), *self.params())
        else:
            with full_precision():
                out = upcast(self.raw(features.to(dtype), [p.to(dtype) for p in self.params()]))
        return self._split(out)

    def from_triplanes(self, table: Tensor, coords: Tensor, reduce: PlaneReduce = "sum",
                       keep_table: bool = True,
                       policy: ExecutionPolicy = DEFAULT_POLICY) -> tuple[Tensor, Tensor | None]:
        """Density (B, M) and rgb (B, M, 3), fp32, of contracted points `coords` (B, M, 3) read
        from `table` (B, 3, R, R, C).

        The same as `self(triplane_lookup(table, coords, reduce))`, differentiable in `table` and
        the MLP weights (not in `coords`), with the lean backward described in the module doc:
        `keep_table` saves the table (shared by all calls) and recomputes the features in
        backward; otherwise the features are saved (C floats a sample) and the table may be
        freed after forward -- whichever costs less memory.
        """
        if not (self.recompute and self._tracks_grad(table)):
            return self(triplane_lookup(table, coords, reduce, policy), policy)
        if coords.requires_grad:
            raise ValueError("from_triplanes does not differentiate the coordinates; detach them")
        scale = 1.0 / 3.0 if reduce == "mean" else 1.0
        dtype = compute_dtype(table.device, upcast(table).dtype)
        out = _TriplaneField.apply(self, table, upcast(coords), scale, not keep_table, dtype, policy, *self.params())
        return self._split(out)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


class _RecomputedMLP(torch.autograd.Function):
    """`mlp.raw(x)` in `dtype`, returned in fp32, that saves only x and recomputes the hidden
    layers in backward, `chunk` rows at a time."""

    @staticmethod
    def forward(ctx, mlp: FieldMLP, x: Tensor, dtype: torch.dtype, chunk: int,  # type: ignore[override]
                *params: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        with full_precision():
            cast = [p.to(dtype) for p in params]
            out = torch.cat([upcast(mlp.raw(flat[sl].to(dtype), cast)) for sl in _chunks(flat.shape[0], chunk)])
        ctx.mlp, ctx.dtype, ctx.chunk = mlp, dtype, chunk
        ctx.save_for_backward(x, *params)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, *params = ctx.saved_tensors
        need_x, need_p = ctx.needs_input_grad[1], list(ctx.needs_input_grad[4:])
        flat = x.reshape(-1, x.shape[-1])
        grad_flat = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = torch.empty_like(flat) if need_x else None
        grad_p = [torch.zeros_like(p, dtype=wide(p.dtype)) if need else None for p, need in zip(params, need_p)]
        with full_precision():
            cast = [p.to(ctx.dtype) for p in params]
            for sl in _chunks(flat.shape[0], ctx.chunk):
                g_x, grads = _mlp_backward(ctx.mlp.with_rgb, flat[sl].to(ctx.dtype), cast, need_x, need_p,
                                           grad_flat[sl])
                _add_grads(grad_p, grads)
                if need_x:
                    grad_x[sl] = g_x
        grad_p = [g.to(p.dtype) if g is not None else None for g, p in zip(grad_p, params)]
        return (None, grad_x.view_as(x) if need_x else None, None, None, *grad_p)


class _TriplaneField(torch.autograd.Function):
    """`mlp.raw(triplane_lookup(table, coords))` in `dtype` (returned in fp32), saving (table,
    coords) for backward, or, with `save_features`, (features, coords) so that the table can be
    freed after forward. The table's gradient is summed in fp32."""

    @staticmethod
    def forward(ctx, mlp: FieldMLP, table: Tensor, coords: Tensor, scale: float,  # type: ignore[override]
                save_features: bool, dtype: torch.dtype, policy: ExecutionPolicy, *params: Tensor) -> Tensor:
        batch, _, r, _, c = table.shape
        n = coords.shape[1]
        flat_table = table.reshape(-1, c)
        chunk = mlp.chunk_points(policy)
        out = coords.new_empty(batch, n, 1 + 3 * mlp.with_rgb, dtype=wide(dtype))
        feats = table.new_empty(batch, n, c) if save_features else None
        step, _ = _chunk_steps(policy.compiled)
        with full_precision():
            cast = [p.to(dtype) for p in params]
            for sl in point_chunks(batch, n, chunk):
                y, x = step(flat_table, coords[:, sl], cast, r, scale, mlp.with_rgb, save_features)
                out[:, sl] = y.view(batch, -1, out.shape[-1])
                if save_features:
                    feats[:, sl] = x.view(batch, -1, c)
        ctx.mlp, ctx.scale, ctx.table_shape, ctx.table_dtype = mlp, scale, table.shape, table.dtype
        ctx.dtype, ctx.policy, ctx.chunk = dtype, policy, chunk
        ctx.save_for_backward(feats if save_features else table, coords, *params)
        ctx.save_features = save_features
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        source, coords, *params = ctx.saved_tensors
        need_table, need_p = ctx.needs_input_grad[1], list(ctx.needs_input_grad[7:])
        batch, _, r, _, c = ctx.table_shape
        n = coords.shape[1]
        grad_table = grad_out.new_zeros(batch * 3 * r * r, c, dtype=wide(ctx.table_dtype)) if need_table else None
        grad_p = [torch.zeros_like(p, dtype=wide(p.dtype)) if need else None for p, need in zip(params, need_p)]
        _, step = _chunk_steps(ctx.policy.compiled)
        with full_precision():
            cast = [p.to(ctx.dtype) for p in params]
            for sl in point_chunks(batch, n, ctx.chunk):
                chunk_source = source[:, sl].reshape(-1, c) if ctx.save_features else source.reshape(-1, c)
                grad_chunk = grad_out[:, sl].reshape(batch * (sl.stop - sl.start), -1)
                g_x, row00, weights, grads = step(chunk_source, coords[:, sl], grad_chunk, cast, r, ctx.scale,
                                                  ctx.mlp.with_rgb, not ctx.save_features, need_table, need_p)
                _add_grads(grad_p, grads)
                if need_table:
                    scatter_corners(grad_table, row00, weights, g_x, r, ctx.scale, ctx.policy.scatter, ctx.chunk)
        if grad_table is not None:
            grad_table = grad_table.view(ctx.table_shape).to(ctx.table_dtype)
        grad_p = [g.to(p.dtype) if g is not None else None for g, p in zip(grad_p, params)]
        return (None, grad_table, None, None, None, None, None, *grad_p)


def _mlp_backward(with_rgb: bool, x: Tensor, params: list[Tensor], need_x: bool, need_p: list[bool],
                  grad_out: Tensor) -> tuple[Tensor | None, list[Tensor | None]]:
    """Recompute `field_raw(x)` for one chunk x (P, C) and backpropagate `grad_out` (P, 1 or 4) by
    hand (softplus' = sigmoid), in the dtype of x and `params`. Returns d(loss)/dx in that dtype
    (None unless `need_x`) and the weights' gradients in that dtype (None where not `need_p`),
    which the caller sums over chunks in fp32."""
    num = len(params) // 2
    grad_out = grad_out.to(x.dtype)
    hidden = [x]  # inputs of each linear layer
    slopes = []  # softplus'(z) = sigmoid(z) of each hidden layer
    h = x
    for i in range(num - 1):
        h, slope = softplus_and_sigmoid(F.linear(h, params[2 * i], params[2 * i + 1]))
        slopes.append(slope)
        hidden.append(h)
    o = F.linear(h, params[-2], params[-1])  # (P, 1 or 4)
    g = grad_out[:, :1] * torch.sigmoid(o[:, :1] - 1.0)  # density = softplus(o - 1)
    if with_rgb:
        rgb = torch.sigmoid(o[:, 1:])
        g = torch.cat([g, grad_out[:, 1:] * rgb * (1.0 - rgb)], dim=1)
    grads: list[Tensor | None] = [None] * len(params)
    for i in range(num - 1, -1, -1):
        if need_p[2 * i]:
            grads[2 * i] = g.t() @ hidden[i]
        if need_p[2 * i + 1]:
            grads[2 * i + 1] = g.sum(0, dtype=wide(g.dtype))  # many small terms: summed in fp32
        if i == 0 and not need_x:
            return None, grads
        # d/d(input of layer i); for a one-output head (density) a broadcast product: the same
        # values, 2x faster on CPU than a K=1 matmul
        g = g * params[2 * i] if g.shape[1] == 1 else g @ params[2 * i]
        if i > 0:
            g = g * slopes[i - 1]  # through the softplus of hidden layer i
    return g, grads


def _add_grads(sums: list[Tensor | None], grads: list[Tensor | None]) -> None:
    """Sum one chunk's weight gradients into the fp32 totals (`+=` casts a bf16 product up)."""
    for total, grad in zip(sums, grads):
        if total is not None and grad is not None:
            total += grad


def field_chunk_forward(table: Tensor, coords: Tensor, params: list[Tensor], resolution: int, scale: float,
                        with_rgb: bool, keep_features: bool, indexed: bool) -> tuple[Tensor, Tensor | None]:
    """One chunk of `_TriplaneField`'s forward: the field's output (P, 1 or 4), in the dtype of
    `params`, of contracted points coords (B, n, 3) read from the flat table (rows, C), and the
    features (P, C) when `keep_features`. `indexed`: the lookup as indexing (one fused loop when
    compiled) instead of `embedding_bag` (faster eager)."""
    row00, weights = corner_indices(coords, resolution)
    x = gather_corners(table, row00, weights, resolution, scale, indexed)
    return field_raw(x.to(params[0].dtype), params, with_rgb), (x if keep_features else None)


def field_chunk_backward(source: Tensor, coords: Tensor, grad_out: Tensor, params: list[Tensor], resolution: int,
                         scale: float, with_rgb: bool, from_table: bool, need_x: bool, need_p: list[bool],
                         indexed: bool):
    """One chunk of `_TriplaneField`'s backward up to the scatter: recompute the features (from
    the flat table when `from_table`, else `source` holds them, (P, C)) and backpropagate through
    the MLP. Returns (d(loss)/d(features) or None, row00, weights (the corners, None unless
    needed), the weights' gradients in the dtype of `params`)."""
    row00 = weights = None
    if need_x or from_table:
        row00, weights = corner_indices(coords, resolution)
    x = gather_corners(source, row00, weights, resolution, scale, indexed) if from_table else source
    g_x, grads = _mlp_backward(with_rgb, x.to(params[0].dtype), params, need_x, need_p, grad_out)
    return g_x, row00, weights, grads


@functools.cache
def _chunk_steps(compiled: bool) -> tuple[Callable, Callable]:
    """The forward and backward chunk steps of `_TriplaneField`, with the lookup each pays with:
    compiled (indexing, fused; a fallback to eager looks up with embedding_bag), or eager."""
    steps = (field_chunk_forward, field_chunk_backward)
    if compiled:
        eager = (("indexed", False),)
        return tuple(functools.partial(compile_once(fn, eager), indexed=True) for fn in steps)  # type: ignore[return-value]
    return tuple(functools.partial(fn, indexed=False) for fn in steps)  # type: ignore[return-value]
