"""The paper preset's training step, measured on a CPU machine (`vq3d bench paper-step --json`).

Sizes: 256x256, ViT-S encoder, ViT-L decoder, 512x512x32 triplanes, 64+64+32 samples per ray,
both discriminators (the paper preset's GAN runs from step 0), batch 1. One JSON object:

- **A real step on this CPU** (the CPU execution policy: 32 MB chunks, `segment` scatter):
  its time, the process's peak resident memory against `--limit-gib` (`memory_ratio` must
  stay below 1), with R1 on this step.
- **Operator calls** (`operator_calls`), counted by the PyTorch profiler: one training render
  (256x256 rays, forward + backward, the regularizers included) under the CPU policy and under
  the GPU policy (the chunk budget an 80 GB GPU gives, `index_add` scatter), against the
  target of 2,000; and a whole training step under the GPU policy. On a GPU each call is at
  least one kernel launch.
- **FLOPs** (`flops`, from the operators' shapes: `vq3d.bench.flops`, on fake tensors): the
  encoder, decoder and renderer each forward + backward as in a step, the whole step with and
  without R1, and the discriminators with the rest (quantizer, losses) as the difference.
- **Projections** (`projection`): an H100's step time at 40% model-FLOPs utilisation from the
  R1-amortised FLOPs, the cost of the paper preset's schedule in H100-days, and bf16 peak memory
  by batch size from fake-tensor steps (`vq3d.bench.fake_step`): per image, fixed, and the
  largest batch that fits 80 GB (checked by one more fake step at it and one above it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from typing import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from vq3d.bench.fake_step import _fake_construction, fake_step_memory
from vq3d.bench.flops import count_flops
from vq3d.bench.opcount import count_operator_calls
from vq3d.config import Config, load_config
from vq3d.losses.stage1 import nerf_regularizers
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import canonical_cameras, sample_novel_cameras
from vq3d.render.renderer import Renderer
from vq3d.train.stage1 import Stage1Trainer

GIB = 1024**3
H100_BF16_TFLOPS = 989.4  # dense bf16 peak of an H100 SXM (NVIDIA's data sheet)
MFU = 0.4
GPU_MEMORY_GIB = 80.0
# the chunk budget of the GPU policy: a quarter of what an 80 GB GPU has free beside the paper
# preset's ~10.4 GiB of weights, gradients and Adam states (vq3d.render.execution)
GPU_CHUNK_MB = 16384.0
RENDER_OPS_TARGET = 2000


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _random_batch(cfg: Config, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, res = cfg.train.batch_size, cfg.data.resolution
    return {"image": torch.rand(b, 3, res, res, generator=g) * 2 - 1, "disparity": torch.rand(b, 1, res, res, generator=g)}


def _gpu_policy(cfg: Config) -> Config:
    return replace(cfg, render=replace(cfg.render, chunk_mb=GPU_CHUNK_MB, scatter="index_add"))


def real_step(cfg: Config) -> dict:
    """Build the trainer and run one real step on the CPU (R1 on it); time and memory."""
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        trainer = Stage1Trainer(cfg, run_dir)
        built_s, after_build = time.perf_counter() - t0, _peak_rss_bytes()
        t0 = time.perf_counter()
        logs = trainer.train_step(_random_batch(cfg))
        finite = bool(logs["skipped"] == 0)
        step_s = time.perf_counter() - t0
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"generator_params_m": round(params / 1e6, 1),
            "discriminator_params_m": round(sum(p.numel() for p in trainer.d_params) / 1e6, 1),
            "step_finite": finite, "r1_this_step": cfg.loss.r1_every > 0, "build_s": round(built_s, 1),
            "step_s": round(step_s, 1), "rss_after_build_gib": round(after_build / GIB, 2),
            "peak_rss_gib": round(_peak_rss_bytes() / GIB, 2)}


def _render_pass(cfg: Config) -> tuple[Callable[[list], None], list]:
    """A closure that renders a scene (batch 1) from given cameras at the training size, forward
    and backward with the regularizers, and the cameras of a step: the canonical view and, when
    the GAN runs, a novel view."""
    r, m = cfg.render, cfg.model
    renderer = Renderer(r, m.plane_channels)
    res = cfg.data.resolution
    planes = (torch.randn(1, 3, m.plane_channels, m.plane_resolution, m.plane_resolution) * 0.1).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    cameras = [canonical_cameras(1, r.camera_distance, r.fov_deg)]
    if cfg.loss.gan > 0:
        cameras.append(sample_novel_cameras(1, r.camera_distance, r.fov_deg, r.sampling_radius, gen))

    def run(views: list) -> None:
        loss = planes.new_zeros(())
        for cams in views:
            out = renderer.render_cameras(planes, cams, res, res, train=True, step=10**6, generator=gen)
            distortion, interlevel = nerf_regularizers(out)
            loss = loss + out.rgb.square().mean() + out.depth.mean() + distortion + interlevel
        loss.backward()

    return run, cameras


def operator_calls(cfg: Config) -> dict:
    """Profiler counts: one render forward + backward under both policies; a GPU-policy step."""
    counts = {}
    for name, policy_cfg in (("cpu_policy", cfg), ("gpu_policy", _gpu_policy(cfg))):
        render, cameras = _render_pass(policy_cfg)
        _, calls = count_operator_calls(lambda: render(cameras[:1]))
        counts[name] = sum(calls.values())
    gpu_cfg = _gpu_policy(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Stage1Trainer(gpu_cfg, run_dir)
        trainer.step = 1  # not an R1 step
        _, step_calls = count_operator_calls(lambda: trainer.train_step(_random_batch(gpu_cfg)))
    return {"render_fwd_bwd": counts, "render_target": RENDER_OPS_TARGET,
            "render_meets_target": counts["gpu_policy"] <= RENDER_OPS_TARGET,
            "step_gpu_policy": sum(step_calls.values()),
            "gpu_policy": {"render.chunk_mb": GPU_CHUNK_MB, "render.scatter": "index_add"}}


def flops(cfg: Config) -> dict:
    """FLOPs of the regions and of whole steps, on fake tensors (shapes only)."""
    cfg = _gpu_policy(cfg)
    res, b = cfg.data.resolution, cfg.train.batch_size
    out: dict[str, int] = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        with _fake_construction():
            model = Stage1Model(cfg)
        images = torch.rand(b, 3, res, res) * 2 - 1
        _, out["encoder"] = count_flops(lambda: model.encoder(images).sum().backward())
        codes = torch.randn(b, model.grid**2, cfg.model.codebook_dim).requires_grad_(True)
        _, out["decoder"] = count_flops(lambda: model.decoder(codes).sum().backward())
        render, cameras = _render_pass(cfg)
        _, per_image = count_flops(lambda: render(cameras))
        out["renderer"] = per_image * b
        with tempfile.TemporaryDirectory() as run_dir:
            with _fake_construction():
                trainer = Stage1Trainer(cfg, run_dir)
            data = _random_batch(cfg)
            r1 = max(1, cfg.loss.r1_every)
            trainer.step = r1 + 1
            _, out["step_without_r1"] = count_flops(lambda: trainer.train_step(data))
            trainer.step = 2 * r1
            _, out["step_with_r1"] = count_flops(lambda: trainer.train_step(data))
    out["discriminators_and_rest"] = out["step_without_r1"] - out["encoder"] - out["decoder"] - out["renderer"]
    out["r1_extra"] = out["step_with_r1"] - out["step_without_r1"]
    out["step_amortized"] = out["step_without_r1"] + out["r1_extra"] // max(1, cfg.loss.r1_every)
    return out


def memory_projection(cfg: Config, batches: tuple[int, ...], max_batch: int) -> dict:
    """bf16 peak memory of fake-tensor steps by batch size; the largest batch under 80 GB."""
    def peak(batch: int) -> int:
        c = _gpu_policy(cfg)
        c = replace(c, train=replace(c.train, batch_size=batch, precision="bf16"))
        return fake_step_memory(c)["peak"]

    peaks = {b: peak(b) for b in batches}
    lo, hi = batches[-2], batches[-1]
    per_image = (peaks[hi] - peaks[lo]) / (hi - lo)
    fixed = peaks[hi] - per_image * hi
    limit = GPU_MEMORY_GIB * 1e9  # a GPU's "80 GB" are decimal
    largest = largest_fitting(peak, limit, guess=int((limit - fixed) // max(per_image, 1.0)), cap=max_batch)
    return {"peak_gib_by_batch": {str(b): round(p / GIB, 2) for b, p in peaks.items()},
            "per_image_gib": round(per_image / GIB, 2), "fixed_gib": round(fixed / GIB, 2),
            "largest_batch_80gb": largest, "largest_batch_searched_up_to": max_batch, "chunk_mb": GPU_CHUNK_MB}


def largest_fitting(peak: Callable[[int], int], limit: float, guess: int, cap: int = 1 << 16) -> int:
    """The largest batch b <= cap with peak(b) <= limit (peak grows with b), from a guess; 0 if
    not even batch 1 fits (`largest_passing`)."""
    return largest_passing(lambda b: peak(b) <= limit, guess, cap)


def largest_passing(fits: Callable[[int], bool], guess: int, cap: int = 1 << 16, grow: float = 2.0) -> int:
    """The largest b in 1..cap with fits(b), for a monotone `fits` (true up to some b, false
    after), from a guess: up by a step of (grow - 1) x the guess, doubling the step after each
    success, or halving down, to a bracket; then bisect. 0 if fits(1) is false. Each b is asked
    at most once."""
    guess = min(max(1, guess), cap)
    if fits(guess):
        good, bad = guess, None
        step = max(1, int(guess * (grow - 1)))
        while bad is None and good < cap:
            nxt = min(cap, good + step)
            step *= 2
            if fits(nxt):
                good = nxt
            else:
                bad = nxt
        if bad is None:
            return good
    else:
        good, bad = 0, guess
        while bad > 1:
            nxt = bad // 2
            if fits(nxt):
                good = nxt
                break
            bad = nxt
        if good == 0:
            return 0
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def projection(preset: str, flop_counts: dict, batch: int) -> dict:
    """Step time on an H100 at `MFU`, and the cost of the preset's own schedule (its steps at
    its batch size, not the benchmark's) in H100-days."""
    per_image = flop_counts["step_amortized"] / batch
    rate = H100_BF16_TFLOPS * 1e12 * MFU
    schedule = load_config(preset).train
    step_s = per_image * schedule.batch_size / rate
    return {"h100_bf16_tflops": H100_BF16_TFLOPS, "mfu": MFU, "flops_per_image": int(per_image),
            "h100_s_per_image": round(per_image / rate, 4),
            "schedule": {"steps": schedule.steps, "batch": schedule.batch_size},
            "h100_step_s_at_schedule_batch": round(step_s, 2),
            "schedule_h100_days": round(step_s * schedule.steps / 86400, 1),
            "caveat": "FLOPs of matmuls, convolutions and attention only; the renderer's lookups and "
                      "compositing are memory-bound, so its share of the time is larger than of the FLOPs"}


def run(preset: str, batch: int, overrides: list[str], memory_batches: tuple[int, ...], max_batch: int) -> dict:
    cfg = load_config(preset, [], ["train.device=cpu", f"train.batch_size={batch}", *overrides])
    result = {"preset": preset, "batch": batch, "resolution": cfg.data.resolution}
    result.update(real_step(cfg))
    result["operator_calls"] = operator_calls(cfg)
    result["flops"] = flops(cfg)
    result["projection"] = projection(preset, result["flops"], batch)
    result["memory_bf16"] = memory_projection(cfg, memory_batches, max_batch)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vq3d bench paper-step", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--limit-gib", type=float, default=24.0, help="the memory the real step must fit in")
    p.add_argument("--memory-batches", default="1,2,4,8", help="batch sizes of the bf16 memory projection")
    p.add_argument("--max-batch", type=int, default=4096, help="largest batch the 80 GB search tries")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory_batches = tuple(int(b) for b in args.memory_batches.split(","))
    if len(memory_batches) < 2 or any(b < 1 for b in memory_batches):
        print("--memory-batches needs at least two positive batch sizes", file=sys.stderr)
        return 2
    result = run(args.preset, args.batch, args.set, memory_batches, args.max_batch)
    result.update(limit_gib=args.limit_gib, memory_ratio=round(result["peak_rss_gib"] / args.limit_gib, 3),
                  threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine())
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2), file=sys.stderr)
    return 0 if result["step_finite"] and result["memory_ratio"] < 1 else 1
