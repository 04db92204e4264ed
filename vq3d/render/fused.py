"""`render.kernel`: which implementation renders a sampling level, and the fused (Triton) one's
autograd Function (`vq3d.render.triton_level` holds the kernels).

    "torch":  the reference path (`vq3d.render.fields`, `vq3d.render.compositing`);
    "triton": one kernel per level forward and one backward (`fused_level`);
    "auto":   triton on CUDA when Triton imports, torch elsewhere.

The fused level takes the planes' channel-last table, the rays and the level's sample edges in
s-space, and returns each sample's weight and the rays' colour (before any background), depth,
disparity and opacity, as the torch path computes them. What it keeps for the backward is the
rays (6 floats each) beside tensors the render holds anyway (the table, the edges, its outputs,
the MLP's weights), so the backward's memory does not grow with the samples.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vq3d.config import RenderConfig
from vq3d.config.validate import fused_unsupported

KERNELS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class Launch:
    """How the kernels are launched: rays per program and warps of the forward and the backward,
    and the backward's programs per streaming multiprocessor (each walks several ray blocks). A
    GPU tuning, not a model setting: the outputs do not depend on it beyond summation order.

    Defaults: what ptxas compiles without spilling to local memory at the paper's sizes for sm_90,
    in fp32 and bf16 planes (`vq3d bench render`'s triton_build, on any machine): forward 32 rays x
    8 warps (176-194 registers; at 4 warps fp32 planes spilled 236 B a thread), backward 16 rays x
    8 warps (179-255 registers; 32 x 4 spilled 0.8-0.9 KB). Whether fewer spills beat more rays in
    flight only a GPU can say: `vq3d bench gpu` times the alternatives (`LAUNCH_CANDIDATES`).
    """

    fwd_rays: int = 32
    fwd_warps: int = 8
    bwd_rays: int = 16
    bwd_warps: int = 8
    bwd_programs_per_sm: int = 8


LAUNCH = Launch()
# what `vq3d bench gpu` times beside the default (the launches of the first version among them)
LAUNCH_CANDIDATES = (LAUNCH, Launch(fwd_warps=4, bwd_rays=32, bwd_warps=4), Launch(fwd_rays=16, fwd_warps=4),
                     Launch(fwd_rays=64, bwd_rays=32))
_launch = LAUNCH


@contextlib.contextmanager
def launch_shape(**changes: int) -> Iterator[Launch]:
    """Render with another `Launch` inside the block (how `vq3d bench gpu` compares them)."""
    global _launch
    previous, _launch = _launch, replace(_launch, **changes)
    try:
        yield _launch
    finally:
        _launch = previous


def backward_programs(blocks: int, device: torch.device, launch: Launch) -> int:
    """Programs of the backward's grid: `launch.bwd_programs_per_sm` per SM on a GPU; under the
    interpreter 3, so that the tests see programs walk several blocks."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(blocks, sms * launch.bwd_programs_per_sm))
    return max(1, min(blocks, 3))


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the Triton kernels can run here: Triton imports, and there is a GPU or the
    interpreter is on (TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernel(cfg: RenderConfig, device: torch.device, implicit: bool = False) -> str:
    """"torch" or "triton" for renders of `cfg` on `device` (ValueError when triton is asked for
    and cannot run)."""
    if cfg.kernel not in KERNELS:
        raise ValueError(f"unknown render.kernel {cfg.kernel!r}: use {', '.join(KERNELS)}")
    reason = fused_unsupported(cfg, implicit)
    if cfg.kernel == "torch" or (cfg.kernel == "auto" and (reason or device.type != "cuda"
                                                           or not triton_available())):
        return "torch"
    if reason:
        raise ValueError(f"render.kernel=triton: {reason}")
    if not triton_available():
        raise ValueError("render.kernel=triton needs Triton and a GPU (or TRITON_INTERPRET=1 on a CPU): "
                         "pip install triton, or use render.kernel=torch")
    return "triton"


def _pad(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


class _FusedLevel(torch.autograd.Function):
    """(table, origins, dirs, edges, W1, b1, W2, b2) -> weights (R, S), rgb (R, 3), depth,
    disparity, opacity (R,); R rays flattened over the batch."""

    @staticmethod
    def forward(ctx, table: Tensor, origins: Tensor, dirs: Tensor, edges: Tensor,  # type: ignore[override]
                settings: dict, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor):
        from vq3d.render import triton_level as k

        rays, samples = edges.shape[0], edges.shape[1] - 1
        device = origins.device
        weights = torch.empty(rays, samples, device=device, dtype=torch.float32)
        rgb = torch.zeros(rays, 3, device=device, dtype=torch.float32)
        depth, disparity, opacity = (torch.empty(rays, device=device, dtype=torch.float32) for _ in range(3))
        launch = _launch
        grid = (max(1, math.ceil(rays / launch.fwd_rays)),)
        k._level_fwd[grid](table, origins, dirs, edges, w1, b1, w2, b2, weights, rgb, depth, disparity, opacity,
                           rays, settings["rays_per_batch"], settings["near"], settings["inv_far"],
                           settings["scene_scale"], settings["plane_scale"],
                           **kernel_constants(settings, samples, launch.fwd_rays), num_warps=launch.fwd_warps)
        ctx.settings, ctx.launch = settings, launch
        ctx.save_for_backward(table, origins, dirs, edges, w1, b1, w2, b2, weights, rgb, depth, opacity)
        return weights, rgb, depth, disparity, opacity

    @staticmethod
    @once_differentiable
    def backward(ctx, g_weights, g_rgb, g_depth, g_disparity, g_opacity):  # type: ignore[override]
        from vq3d.render import triton_level as k

        table, origins, dirs, edges, w1, b1, w2, b2, weights, rgb, depth, opacity = ctx.saved_tensors
        settings = ctx.settings
        rays, samples = edges.shape[0], edges.shape[1] - 1
        device = origins.device

        def grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
            return torch.zeros_like(like) if g is None else g.float().contiguous()

        g_weights, g_rgb = grad_or_zeros(g_weights, weights), grad_or_zeros(g_rgb, rgb)
        g_depth, g_disparity, g_opacity = (grad_or_zeros(g, opacity) for g in (g_depth, g_disparity, g_opacity))
        table_grad = ctx.needs_input_grad[0]
        grad_table = torch.zeros(table.shape, device=device, dtype=torch.float32) if table_grad else \
            torch.empty(1, device=device, dtype=torch.float32)
        c, h = w1.shape[1], w1.shape[0]
        o = w2.shape[0]
        cp, hp, op = _pad(c), _pad(h), _pad(o)
        launch = ctx.launch
        blocks = max(1, math.ceil(rays / launch.bwd_rays))
        programs = backward_programs(blocks, device, launch)
        part_w1 = torch.empty(programs, cp, hp, device=device, dtype=torch.float32)
        part_b1 = torch.empty(programs, hp, device=device, dtype=torch.float32)
        part_w2 = torch.empty(programs, hp, op, device=device, dtype=torch.float32)
        part_b2 = torch.empty(programs, op, device=device, dtype=torch.float32)
        k._level_bwd[(programs,)](table, origins, dirs, edges, w1, b1, w2, b2, weights, rgb, depth, opacity,
                                g_weights, g_rgb, g_depth, g_disparity, g_opacity,
                                grad_table, part_w1, part_b1, part_w2, part_b2,
                                rays, blocks, programs, settings["rays_per_batch"], settings["near"], settings["inv_far"],
                                settings["scene_scale"], settings["plane_scale"],
                                TABLE_GRAD=table_grad, **kernel_constants(settings, samples, launch.bwd_rays),
                                num_warps=launch.bwd_warps)
        grad_w1 = part_w1.sum(0)[:c, :h].t().to(w1.dtype)
        grad_b1 = part_b1.sum(0)[:h].to(b1.dtype)
        grad_w2 = part_w2.sum(0)[:h, :o].t().to(w2.dtype)
        grad_b2 = part_b2.sum(0)[:o].to(b2.dtype)
        grad_table = grad_table.to(table.dtype) if table_grad else None
        return grad_table, None, None, None, None, grad_w1, grad_b1, grad_w2, grad_b2


def level_settings(cfg: RenderConfig, channels: int, hidden: int, outputs: int, resolution: int, reduce: str,
                   opaque_last: bool) -> dict:
    """The kernels' settings for one level: the render's scalars and the sizes they specialise on
    (C plane channels, the MLP's hidden width and outputs, 1 or 4, the planes' resolution)."""
    return {"near": float(cfg.near), "inv_far": 0.0 if math.isinf(cfg.far) else 1.0 / cfg.far,
            "scene_scale": float(cfg.scene_scale), "plane_scale": 1.0 / 3.0 if reduce == "mean" else 1.0,
            "channels": channels, "hidden": hidden, "outputs": outputs, "resolution": resolution,
            "l2": cfg.contraction == "l2", "opaque_last": bool(opaque_last)}


def kernel_constants(settings: dict, samples: int, block: int) -> dict:
    """The kernels' compile-time constants for a level of `samples` samples, `block` rays per program."""
    return dict(S=samples, C=settings["channels"], H=settings["hidden"], O=settings["outputs"],
                CP=_pad(settings["channels"]), HP=_pad(settings["hidden"]), OP=_pad(settings["outputs"]),
                RES=settings["resolution"], BLOCK=block, L2=settings["l2"], OPAQUE_LAST=settings["opaque_last"])


def fused_level(table: Tensor, origins: Tensor, dirs: Tensor, edges: Tensor, mlp, cfg: RenderConfig,
                reduce: str, opaque_last: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One level rendered by the fused kernels.

    table (B, 3, R, R, C) channel-last planes (fp32 or bf16; differentiable unless detached);
    origins, dirs (B, N, 3) fp32 unit rays; edges (B, N, S + 1) s-space sample edges (no
    gradient); mlp: the level's `FieldMLP` (2 layers). Returns weights (B, N, S), rgb in [0, 1]
    (B, N, 3; zeros for a density-only MLP), depth, disparity, opacity (B, N), fp32.
    """
    batch, n = origins.shape[:2]
    first, head = mlp.linears[0], mlp.linears[-1]
    settings = level_settings(cfg, table.shape[-1], first.out_features, head.out_features, table.shape[2],
                              reduce, opaque_last)
    settings["rays_per_batch"] = n
    rays = batch * n
    params = [p.float() if p.dtype != torch.float32 else p for p in (first.weight, first.bias, head.weight, head.bias)]
    weights, rgb, depth, disparity, opacity = _FusedLevel.apply(
        table.contiguous(), origins.reshape(rays, 3).float().contiguous(), dirs.reshape(rays, 3).float().contiguous(),
        edges.reshape(rays, -1).float().contiguous(), settings, *params)
    return (weights.view(batch, n, -1), rgb.view(batch, n, 3), depth.view(batch, n), disparity.view(batch, n),
            opacity.view(batch, n))
