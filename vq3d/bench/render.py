"""`vq3d bench render [--json]`: speed and memory of the renderer against a plain reference.

The reference (`ReferenceRenderer`) is the same algorithm written in the straightforward style
of EG3D's importance renderer: at every level one `grid_sample` over the three stacked planes,
the MLP applied to every sample with every intermediate kept for autograd (proposal levels
included, with their graph into the planes), cumprod compositing. It shares the samplers, the
mapping of world points to plane coordinates (`Renderer.plane_coords`) and the MLP weights
with `Renderer`, and both draw the same jitter, so both render the same image
(the max abs difference is reported).

Timings: rays per second of an inference forward (no grad, `train=False`) and of a training
forward + backward (`train=True`; loss = MSE of the image + distortion + interlevel; gradients
with respect to the planes and all MLP weights via `torch.autograd.grad`), best of `--repeats`
rounds in which the two implementations alternate (so that load from other processes on a
shared machine hits both alike).
Kept for the backward (`saved_for_backward`): at the paper preset's sample counts, the bytes of
the tensors autograd saves in a training render beyond the render's outputs, its inputs and the
planes' channel-last table, per ray: the torch path against the Triton kernels
(`render.kernel=triton`; under TRITON_INTERPRET=1 on a CPU).
Built for a GPU (`triton_build`): the Triton kernels at the paper's sizes compiled for sm_90
(H100/H200) on this machine, no GPU needed, with the registers, spilled bytes and shared memory
that ptxas reports.
Compiled (`ours_compiled`, settings whose preset sets `render.compile_field`): the same training
forward + backward with the chunks compiled as Stage-1 training runs them, alternating with the
eager one, and the first call's seconds (compiling).
Peak memory: the largest net number of bytes allocated during one training forward + backward,
above what was allocated before it, read from the PyTorch profiler's allocation events
(`profile_memory=True`, the allocator's running total): real allocations including transient
ones and the planes' gradient, independent of the allocator's caching.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.config import RenderConfig, demo, paper, tiny
from vq3d.losses.nerf import distortion_loss, interlevel_loss
from vq3d.render.cameras import sample_novel_cameras
from vq3d.render.fields import FieldMLP
from vq3d.render.renderer import Renderer, RenderOutput
from vq3d.render.samplers import (
    anneal_power,
    dilation_for_level,
    max_dilate_weights,
    resample_edges,
    s_to_disparity,
    stratified_u,
    uniform_edges,
)


class ReferenceRenderer:
    """Plain EG3D-style implementation of `Renderer`'s algorithm (benchmark baseline only)."""

    def __init__(self, renderer: Renderer):
        self.cfg = renderer.cfg
        self.renderer = renderer  # shares its MLP weights

    @staticmethod
    def _mlp(mlp: FieldMLP, x: Tensor) -> tuple[Tensor, Tensor | None]:
        for i, linear in enumerate(mlp.linears):
            x = linear(x)
            if i < len(mlp.linears) - 1:
                x = F.softplus(x)
        density = F.softplus(x[..., 0] - 1.0)
        return density, (torch.sigmoid(x[..., 1:]) if mlp.with_rgb else None)

    def _sample_planes(self, planes: Tensor, coords: Tensor) -> Tensor:
        """EG3D's sample_from_planes (with distinct XY, YZ, ZX planes): (B, M, 3) -> (B, M, C)."""
        b, _, c, r, _ = planes.shape
        m = coords.shape[1]
        projected = torch.stack([coords[..., [0, 1]], coords[..., [1, 2]], coords[..., [2, 0]]], dim=1)
        grid = (projected / 2.0).reshape(b * 3, 1, m, 2)
        out = F.grid_sample(planes.reshape(b * 3, c, r, r), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        out = out.reshape(b, 3, c, m).permute(0, 1, 3, 2)  # (B, 3, M, C)
        return out.mean(1) if self.cfg.plane_reduce == "mean" else out.sum(1)

    def _weights(self, density: Tensor, t_edges: Tensor) -> Tensor:
        deltas = (t_edges[..., 1:] - t_edges[..., :-1]).clamp(0.0, 1e10)
        alpha = 1.0 - torch.exp(-density * deltas)
        if self.cfg.background == "none":
            alpha = torch.cat([alpha[..., :-1], torch.ones_like(alpha[..., -1:])], dim=-1)
        trans = torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], dim=-1).cumprod(dim=-1)
        return alpha * trans[..., :-1]

    def __call__(self, planes: Tensor, origins: Tensor, dirs: Tensor, *, train: bool, step: int | None = None,
                 generator: torch.Generator | None = None) -> RenderOutput:
        cfg, rend = self.cfg, self.renderer
        b, n = origins.shape[:2]
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        counts = rend.samples_per_level
        anneal = anneal_power(step, cfg.proposal_anneal_steps, cfg.proposal_anneal_slope) if train else 1.0
        jitter = train and cfg.stratified
        us = [stratified_u((b, n), k, jitter, generator, device=origins.device) for k in counts]
        prop_w, prop_e = [], []
        edges = weights = None
        for level, num in enumerate(counts):
            is_nerf = level == len(counts) - 1
            with torch.no_grad():
                if level == 0:
                    edges = uniform_edges((b, n), num, us[0])
                else:
                    e, w = edges, weights.detach()
                    d = dilation_for_level(level, counts, cfg.proposal_dilation, cfg.proposal_dilation_bias)
                    if d > 0:
                        e, w = max_dilate_weights(e, w, d)
                    edges = resample_edges(e, w, us[level], anneal)
            s_mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
            disp = s_to_disparity(s_mid, cfg.near, cfg.far)
            t_mid = 1.0 / disp
            t_edges = 1.0 / s_to_disparity(edges, cfg.near, cfg.far)
            points = origins.unsqueeze(2) + dirs.unsqueeze(2) * t_mid.unsqueeze(-1)
            coords = rend.plane_coords(points).reshape(b, n * num, 3)
            feats = self._sample_planes(planes, coords)
            density, rgb = self._mlp(rend.nerf_mlp if is_nerf else rend.proposal_mlp, feats)
            weights = self._weights(density.view(b, n, num), t_edges)
            if not is_nerf:
                prop_w.append(weights)
                prop_e.append(edges)
        opacity = weights.sum(-1)
        rgb01 = (weights.unsqueeze(-1) * rgb.view(b, n, num, 3)).sum(-2)
        if cfg.background == "white":
            rgb01 = rgb01 + (1.0 - opacity).unsqueeze(-1)
        inv_far = 0.0 if math.isinf(cfg.far) else 1.0 / cfg.far
        return RenderOutput(
            rgb=rgb01 * 2.0 - 1.0, depth=(weights * t_mid).sum(-1) / opacity.clamp_min(1e-6),
            disparity=(weights * disp).sum(-1) + (1.0 - opacity) * inv_far, opacity=opacity,
            weights=weights, sample_disparity=disp, spacing_edges=edges,
            proposal_weights=prop_w, proposal_spacing_edges=prop_e,
        )


# ----------------------------------------------------------------------------- measurement


SETTINGS = ("demo", "paper", "tiny")  # "tiny": a seconds-long smoke run for tests


def _setting(name: str) -> tuple[RenderConfig, dict]:
    if name == "tiny":
        cfg = tiny().render
        return cfg, dict(batch=2, channels=8, resolution=16, height=8, width=8)
    if name == "demo":
        cfg = demo().render
        return cfg, dict(batch=8, channels=16, resolution=32, height=32, width=32)
    cfg = paper().render
    return cfg, dict(batch=1, channels=32, resolution=512, height=64, width=64)


def _inputs(cfg: RenderConfig, spec: dict, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, c, r = spec["batch"], spec["channels"], spec["resolution"]
    # smooth-ish random planes: upsampled noise, so that densities vary along rays
    coarse = torch.randn(b * 3, c, 8, 8, generator=gen)
    planes = F.interpolate(coarse, size=(r, r), mode="bilinear", align_corners=False).view(b, 3, c, r, r)
    cams = sample_novel_cameras(b, cfg.camera_distance, cfg.fov_deg, cfg.sampling_radius, gen)
    origins, dirs = cams.rays(spec["height"], spec["width"])
    torch.manual_seed(seed)
    renderer = Renderer(cfg, c)
    return planes.contiguous(), origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3), renderer


def _loss(out: RenderOutput) -> Tensor:
    return (out.rgb.square().mean() + 0.01 * distortion_loss(out.weights, out.spacing_edges)
            + interlevel_loss(out.weights, out.spacing_edges, out.proposal_weights, out.proposal_spacing_edges))


def _train_step(render: Callable, planes: Tensor, origins: Tensor, dirs: Tensor,
                params: list[Tensor]) -> None:
    leaf = planes.detach().requires_grad_(True)
    out = render(leaf, origins, dirs, train=True, step=100, generator=torch.Generator().manual_seed(1))
    torch.autograd.grad(_loss(out), [leaf, *params], allow_unused=True)


def _best_times(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """Best wall time of each function over `repeats` rounds that run every function once."""
    for fn in fns:
        fn()  # warm-up
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def peak_memory_bytes(fn: Callable[[], None]) -> int:
    """Peak net bytes allocated while `fn` runs (PyTorch profiler allocation events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    current = peak = 0
    for _, size in sorted(sizes):
        current += size
        peak = max(peak, current)
    return peak


def saved_for_backward(render: Callable[[], RenderOutput], inputs: list[Tensor]) -> dict:
    """Bytes autograd keeps for the backward of one training render (`saved_tensors_hooks`):
    unique storages of the saved tensors, split into those the render's outputs hold anyway,
    the inputs' (planes, MLP weights) and the planes' channel-last table (one per view), and the
    rest, which the render adds for its backward ("extra")."""
    saved: dict[int, tuple[int, tuple]] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        saved.setdefault(storage.data_ptr(), (storage.nbytes(), tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = render()
    fields = [out.rgb, out.depth, out.disparity, out.opacity, out.weights, out.sample_disparity, out.spacing_edges,
              *out.proposal_weights, *out.proposal_spacing_edges]
    held = {t.untyped_storage().data_ptr() for t in fields if t is not None}
    given = {t.untyped_storage().data_ptr() for t in inputs}
    parts = {"outputs": 0, "inputs": 0, "table": 0, "extra": 0}
    table_bytes = max((n for n, _ in saved.values()), default=0)  # the table: the largest saved storage
    for ptr, (nbytes, shape) in saved.items():
        key = ("outputs" if ptr in held else "inputs" if ptr in given else
               "table" if len(shape) == 5 and nbytes == table_bytes else "extra")
        parts[key] += nbytes
    return parts


def _saved_bytes(kernel: str, rays_per_view: int = 64) -> dict:
    """Bytes kept for the backward per ray of a training render at the paper preset's samples
    (64 + 64 proposal, 32 NeRF; 32 channels, MLPs of 32), torch path or Triton kernels."""
    from dataclasses import replace

    # the torch path saves every sample's features while they fit in render.feature_cache_mb
    # (256 MB), else the table and the coordinates: scaled to these few rays, the budget makes
    # the choice a whole 256x256 view makes (the table)
    cache_mb = paper().render.feature_cache_mb * rays_per_view / (256 * 256)
    cfg = replace(paper().render, kernel=kernel, proposal_feature_grad=False, feature_cache_mb=cache_mb)
    spec = dict(batch=2, channels=32, resolution=16, height=8, width=rays_per_view // 8)  # a small table: as at
    # paper size, it costs less than the samples' features
    planes, origins, dirs, renderer = _inputs(cfg, spec)
    leaf = planes.requires_grad_(True)

    def render() -> RenderOutput:
        return renderer(leaf, origins, dirs, train=True, step=10**6, generator=torch.Generator().manual_seed(1))

    parts = saved_for_backward(render, [leaf, *renderer.parameters()])
    rays = origins.shape[0] * origins.shape[1]
    return {"kernel": kernel, "rays": rays, "samples": list(cfg.proposal_samples) + [cfg.nerf_samples],
            "extra_bytes_per_ray": parts["extra"] / rays, "output_bytes_per_ray": parts["outputs"] / rays,
            "table_bytes_per_view": parts["table"] / spec["batch"]}


def saved_bytes_report() -> dict:
    """The torch path's and the Triton kernels' bytes kept for the backward, side by side."""
    from vq3d.render.fused import triton_available

    report = {"torch": _saved_bytes("torch")}
    if triton_available():
        report["triton"] = _saved_bytes("triton")
        report["torch_over_triton"] = (report["torch"]["extra_bytes_per_ray"]
                                       / max(report["triton"]["extra_bytes_per_ray"], 1e-9))
    else:
        report["triton"] = "not measured: Triton does not run here (no GPU; TRITON_INTERPRET=1 runs its interpreter)"
    return report


def triton_build_report() -> dict | str:
    """The fused kernels at the paper's sizes, compiled for sm_90 (H100/H200) here, no GPU needed:
    registers per thread, spilled bytes, shared memory (`vq3d.render.triton_build`)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "not measured: Triton does not import here"
    from vq3d.config.presets import paper
    from vq3d.render.triton_build import build_report

    return build_report(paper())


def _measure(name: str, repeats: int) -> dict:
    cfg, spec = _setting(name)
    planes, origins, dirs, renderer = _inputs(cfg, spec)
    reference = ReferenceRenderer(renderer)
    params = list(renderer.parameters())
    rays = origins.shape[0] * origins.shape[1]
    with torch.no_grad():
        ours_img = renderer(planes, origins, dirs, train=False)
        ref_img = reference(planes, origins, dirs, train=False)
        ours_tr, ref_tr = (
            render(planes, origins, dirs, train=True, step=100, generator=torch.Generator().manual_seed(1))
            for render in (renderer, reference)
        )
    result = {
        "rays": rays, "batch": spec["batch"], "channels": spec["channels"],
        "plane_resolution": spec["resolution"],
        "samples": list(cfg.proposal_samples) + [cfg.nerf_samples],
        "max_abs_diff_rgb": float((ours_img.rgb - ref_img.rgb).abs().max()),
        "max_abs_diff_rgb_train": float((ours_tr.rgb - ref_tr.rgb).abs().max()),
        "max_abs_diff_depth_rel": float(((ours_img.depth - ref_img.depth).abs() / ref_img.depth).max()),
    }
    fns = {}
    for label, render in (("ours", renderer), ("reference", reference)):
        def fwd(render=render) -> None:
            with torch.no_grad():
                render(planes, origins, dirs, train=False)

        def fwd_bwd(render=render) -> None:
            _train_step(render, planes, origins, dirs, params)

        fns[label] = (fwd, fwd_bwd)
    # interleave the runs of both implementations so that load from other processes hits both alike
    best = _best_times([fn for pair in fns.values() for fn in pair], repeats)
    for i, label in enumerate(fns):
        result[label] = {
            "fwd_rays_per_s": rays / best[2 * i],
            "fwd_bwd_rays_per_s": rays / best[2 * i + 1],
            "peak_memory_bytes": peak_memory_bytes(fns[label][1]),
        }
    if cfg.compile_field:  # the preset's Stage-1 training compiles its renders: eager against compiled
        result["ours_compiled"] = _measure_compiled(cfg, spec["channels"], renderer, fns["ours"][1],
                                                    (planes, origins, dirs), repeats)
    result["speedup"] = result["ours"]["fwd_bwd_rays_per_s"] / result["reference"]["fwd_bwd_rays_per_s"]
    result["speedup_fwd"] = result["ours"]["fwd_rays_per_s"] / result["reference"]["fwd_rays_per_s"]
    result["memory_ratio"] = result["ours"]["peak_memory_bytes"] / result["reference"]["peak_memory_bytes"]
    return result


def _measure_compiled(cfg: RenderConfig, channels: int, eager: Renderer, eager_fwd_bwd: Callable[[], None],
                      inputs: tuple[Tensor, Tensor, Tensor], repeats: int) -> dict:
    """A training forward + backward of the same renderer with `render.compile_field` (as the
    Stage-1 trainer runs it), in rounds alternating with the eager one: rays per second, the
    first call's seconds (compiling, or loading inductor's cache) and the speed-up over eager."""
    compiled = Renderer(cfg, channels)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_field = True
    params = list(compiled.parameters())
    planes, origins, dirs = inputs
    rays = origins.shape[0] * origins.shape[1]

    def fwd_bwd() -> None:
        _train_step(compiled, planes, origins, dirs, params)

    start = time.perf_counter()
    fwd_bwd()
    first_call_s = time.perf_counter() - start
    eager_best, compiled_best = _best_times([eager_fwd_bwd, fwd_bwd], repeats)
    return {"fwd_bwd_rays_per_s": rays / compiled_best, "first_call_s": first_call_s,
            "speedup_over_eager": eager_best / compiled_best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench render", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--settings", default="demo,paper",
                        help="comma-separated: demo, paper (tiny: a smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in names:
        if s not in SETTINGS:
            print(f"vq3d bench render: error: unknown setting {s!r} (use {', '.join(SETTINGS)})",
                  file=sys.stderr)
            return 2
    report = {
        "benchmark": "render",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "memory_measure": "profiler allocation events: peak net bytes during one training fwd+bwd",
        "settings": {},
    }
    for s in names:
        report["settings"][s] = _measure(s, args.repeats)
    report["saved_for_backward"] = saved_bytes_report()
    report["triton_build"] = triton_build_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for s, r in report["settings"].items():
            print(f"{s}: speedup {r['speedup']:.2f}x (fwd {r['speedup_fwd']:.2f}x), memory ratio "
                  f"{r['memory_ratio']:.2f}, max |rgb diff| {r['max_abs_diff_rgb']:.2e}")
            if "ours_compiled" in r:
                c = r["ours_compiled"]
                print(f"{s}: compiled training render {c['speedup_over_eager']:.2f}x eager "
                      f"(first call {c['first_call_s']:.1f} s)")
        kept = report["saved_for_backward"]
        print(f"kept for the backward beyond outputs, bytes per ray (paper samples): torch "
              f"{kept['torch']['extra_bytes_per_ray']:.0f}, triton "
              f"{kept['triton']['extra_bytes_per_ray'] if isinstance(kept['triton'], dict) else kept['triton']}")
        build = report["triton_build"]
        if isinstance(build, dict):
            for key, usage in build.items():
                if isinstance(usage, dict) and "registers" in usage:  # (not the launch sizes)
                    print(f"{build['arch']} {key}: {usage['registers']} registers, {usage['spill_store_bytes']} B "
                          f"spilled, {usage['shared_bytes']} B shared")
        else:
            print(f"triton build: {build}")
    return 0
