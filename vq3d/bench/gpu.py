"""`vq3d bench gpu --json`: the check to run on the first GPU the project is lent (<= 8 minutes).

One JSON object with a section per check, each timed and each failing alone (its error is
reported, the others still run):

- `render_bf16_agreement`: one full-resolution render in bf16 autocast (bf16 planes, the
  precision policy) against fp32: geometry dtypes, the largest relative depth error and colour
  difference, against the CPU test's bounds (1%, 0.01).
- `step` / `step_compiled`: the preset's training step (bf16 on CUDA) at batch 1 and at the
  largest power-of-two batch that fits (found by doubling until out of memory), eager and with
  `train.compile`: seconds per step, images per second, peak memory, host synchronisations in
  a step (CUDA's sync debug mode; `HostSyncRecorder` on CPU) and the model-FLOPs utilisation
  from the step's counted FLOPs (`vq3d.bench.paper_step.flops`) and the GPU's bf16 peak.
- `torchrun_1`: one Stage-1 step through `torchrun --nproc_per_node 1 -m vq3d train stage1`.
- `render`: a training render (forward + backward) and an inference render at the preset's
  size: rays per second, peak memory, operator calls and, on CUDA, kernel launches.
- `stage2_sampling`: tokens per second of Stage-2 sampling with the KV cache (1,024 tokens and
  the preset's GPT on CUDA).

On CPU the same code runs on the tiny preset (a smoke test, run by the test suite); what needs
CUDA is skipped with the reason. Exit code 1 if any check failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vq3d.bench.opcount import count_operator_calls
from vq3d.bench.paper_step import flops as count_step_flops
from vq3d.bench.sample import run_setting
from vq3d.config import Config, Stage2Config, load_config
from vq3d.losses.stage1 import nerf_regularizers
from vq3d.render.cameras import canonical_cameras
from vq3d.render.renderer import Renderer
from vq3d.utils.host_sync import HostSyncRecorder

# dense bf16 peaks (NVIDIA data sheets), by a substring of the device name
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean seconds of `fn` over `repeats` runs after one warm-up, synchronised."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


class Context:
    def __init__(self, preset: str, device: torch.device, max_batch: int) -> None:
        self.preset, self.device, self.max_batch = preset, device, max_batch
        self.cuda = device.type == "cuda"
        self.repeats = 5 if self.cuda else 2
        self.largest: int | None = None  # the largest batch found to fit (found once)
        self._flops_per_image: float | None = None

    def config(self, *overrides: str) -> Config:
        precision = "bf16" if self.cuda else "fp32"  # bf16 matmuls crawl on most CPUs
        base = [f"train.device={self.device}", f"train.precision={precision}"]
        if not self.cuda:  # the GPU execution policy, so host syncs are those a GPU would see
            base.append("render.scatter=index_add")
        return load_config(self.preset, [], base + list(overrides))

    def flops_per_image(self) -> float:
        if self._flops_per_image is None:
            cfg = load_config(self.preset, [], ["train.device=cpu", "train.batch_size=1"])
            self._flops_per_image = float(count_step_flops(cfg)["step_without_r1"])  # timed steps skip R1
        return self._flops_per_image

    def peak_flops(self) -> float | None:
        if not self.cuda:
            return None
        name = torch.cuda.get_device_name(self.device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
        return None


def _smooth_planes(batch: int, channels: int, resolution: int, device: torch.device) -> torch.Tensor:
    coarse = torch.randn(batch, 3 * channels, 8, 8, device=device)
    fine = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return fine.view(batch, 3, channels, resolution, resolution)


def check_render_bf16(ctx: Context) -> dict:
    cfg = ctx.config()
    res, m = cfg.data.resolution, cfg.model
    torch.manual_seed(0)
    renderer = Renderer(cfg.render, m.plane_channels).to(ctx.device)
    planes = _smooth_planes(1, m.plane_channels, m.plane_resolution, ctx.device)
    cams = canonical_cameras(1, cfg.render.camera_distance, cfg.render.fov_deg, ctx.device)
    with torch.no_grad():
        ref = renderer.render_cameras(planes, cams, res, res)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            low = renderer.render_cameras(planes.bfloat16(), cams, res, res)
    rel = (low.depth - ref.depth).abs() / ref.depth
    result = {
        "resolution": res, "samples": renderer.samples_per_level,
        "geometry_fp32": all(t.dtype == torch.float32 for t in (low.depth, low.weights, low.spacing_edges,
                                                                 low.sample_disparity, low.rgb)),
        "depth_rel_error_max": float(rel.max()), "depth_rel_error_median": float(rel.median()),
        "rgb_abs_error_max": float((low.rgb - ref.rgb).abs().max()),
        "nerf_edges_strictly_increasing": bool((low.spacing_edges.diff(dim=-1) > 0).all()),
    }
    result["within_cpu_test_bounds"] = (result["geometry_fp32"] and result["depth_rel_error_max"] < 0.01
                                        and result["rgb_abs_error_max"] < 0.01)
    return result


def _data(cfg: Config, batch: int, device: torch.device) -> dict:
    res = cfg.data.resolution
    return {"image": torch.rand(batch, 3, res, res, device=device) * 2 - 1,
            "disparity": torch.rand(batch, 1, res, res, device=device)}


def _host_syncs(trainer: Any, data: dict, device: torch.device) -> int:
    """Host synchronisations of one training step."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.train_step(data)
                trainer.step += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    with HostSyncRecorder() as recorder:
        trainer.train_step(data)
        trainer.step += 1
    return len(recorder.syncs)


def _time_step(ctx: Context, batch: int, compiled: bool) -> dict:
    from vq3d.train.stage1 import Stage1Trainer

    cfg = ctx.config(f"train.batch_size={batch}", f"train.compile={str(compiled).lower()}",
                     "loss.r1_every=0")  # R1 is 1 step in 16: timed apart below
    _free(ctx.device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Stage1Trainer(cfg, run_dir)
        data = _data(cfg, batch, ctx.device)
        t0 = time.perf_counter()
        for _ in range(2):  # warm-up: allocator, kernels, compilation
            trainer.train_step(data)
            trainer.step += 1
        _sync(ctx.device)
        warmup_s = time.perf_counter() - t0

        def step() -> None:
            trainer.train_step(data)
            trainer.step += 1

        seconds = _timed(step, ctx.device, ctx.repeats)
        syncs = _host_syncs(trainer, data, ctx.device)
        result = {"batch": batch, "step_s": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
                  "warmup_s": round(warmup_s, 1), "peak_memory_gib": _peak_gib(ctx.device),
                  "host_syncs_per_step": syncs}
        peak = ctx.peak_flops()
        if peak is not None:
            result["mfu"] = round(ctx.flops_per_image() * batch / seconds / peak, 3)
        trainer = data = None  # free them before the next batch is tried
    _free(ctx.device)
    return result


def _fits(ctx: Context, batch: int) -> bool:
    try:
        _time_step(ctx, batch, compiled=False)
        return True
    except torch.OutOfMemoryError:
        _free(ctx.device)
        return False


def largest_batch(ctx: Context) -> int:
    """The largest power of two <= max_batch whose step fits (doubling until out of memory)."""
    if ctx.largest is None:
        batch = 1
        while batch * 2 <= ctx.max_batch and _fits(ctx, batch * 2):
            batch *= 2
        ctx.largest = batch
    return ctx.largest


def check_step(ctx: Context, compiled: bool = False) -> dict:
    if compiled and not ctx.cuda:
        raise Skip("compiled steps are timed on CUDA only (tests/test_stage1_compile.py checks "
                   "compilation against eager on CPU)")
    largest = largest_batch(ctx)
    rows = [_time_step(ctx, b, compiled) for b in sorted({1, largest})]
    return {"batch_1": rows[0], "largest_batch": rows[-1], "largest_batch_fits": largest,
            "searched_up_to": ctx.max_batch, "precision": "bf16" if ctx.cuda else "fp32",
            "flops_per_image": ctx.flops_per_image()}


def check_torchrun(ctx: Context) -> dict:
    cfg = ctx.config()
    res = cfg.data.resolution
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        synth = [sys.executable, "-m", "vq3d", "synth", "--out", str(data), "--n", "4", "--res", str(res),
                 "--views", "1", "--supersample", "1", "--no-progress"]
        subprocess.run(synth, check=True, capture_output=True, timeout=300)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "vq3d", "train", "stage1",
               "--preset", ctx.preset, "--data", str(data), "--out", str(run), "--steps", "1",
               "--set", "train.batch_size=1", "--set", f"train.device={ctx.device.type}",
               "--set", f"train.precision={'bf16' if ctx.cuda else 'fp32'}", "--set", "data.num_workers=0"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        seconds = time.perf_counter() - t0
        checkpoint = (run / "checkpoints" / "step_00000001" / "model.safetensors").is_file()
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"exit_code": proc.returncode, "seconds": round(seconds, 1), "checkpoint_written": checkpoint}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_render(ctx: Context) -> dict:
    cfg = ctx.config()
    res, m = cfg.data.resolution, cfg.model
    torch.manual_seed(0)
    renderer = Renderer(cfg.render, m.plane_channels).to(ctx.device)
    planes = _smooth_planes(1, m.plane_channels, m.plane_resolution, ctx.device).requires_grad_(True)
    cams = canonical_cameras(1, cfg.render.camera_distance, cfg.render.fov_deg, ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)

    def train_render() -> None:
        with autocast:
            out = renderer.render_cameras(planes.bfloat16() if ctx.cuda else planes, cams, res, res, train=True,
                                          step=10**6, generator=gen)
            distortion, interlevel = nerf_regularizers(out)
            loss = out.rgb.square().mean() + out.depth.mean() + distortion + interlevel
        loss.backward()

    def inference_render() -> None:
        with torch.no_grad(), autocast:
            renderer.render_cameras(planes, cams, res, res)

    rays = res * res
    _free(ctx.device)
    train_s = _timed(train_render, ctx.device, ctx.repeats)
    train_peak = _peak_gib(ctx.device)
    infer_s = _timed(inference_render, ctx.device, ctx.repeats)
    _, calls = count_operator_calls(train_render)
    result = {"rays": rays, "samples": renderer.samples_per_level, "plane_resolution": m.plane_resolution,
              "train_rays_per_s": round(rays / train_s), "inference_rays_per_s": round(rays / infer_s),
              "train_peak_memory_gib": train_peak, "train_operator_calls": sum(calls.values())}
    if ctx.cuda:
        result["train_cuda_kernels"] = _cuda_kernels(train_render, ctx.device)
    return result


def _cuda_kernels(fn: Callable[[], None], device: torch.device) -> int | str:
    """CUDA kernels launched by `fn` (the profiler's CUDA activity; a reason if it cannot)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        _sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            _sync(device)
        return sum(1 for e in prof.events() if str(e.device_type).endswith("CUDA"))
    except Exception as err:  # CUPTI missing or busy: the rest of the check stands
        return f"not counted: {type(err).__name__}: {err}"[:300]


def check_stage2(ctx: Context) -> dict:
    if ctx.cuda:
        cfg = load_config(ctx.preset).stage2
        vocab, tokens, batch = load_config(ctx.preset).model.codebook_size, 1024, 8
    else:
        cfg, vocab, tokens, batch = Stage2Config(layers=1, width=32, heads=2), 64, 16, 2
    row = run_setting(vocab, tokens, cfg, batch, device=str(ctx.device), uncached=False)
    return {k: row[k] for k in ("seq_len", "layers", "width", "params", "batch", "cached_tokens_per_s")}


CHECKS: list[tuple[str, Callable[[Context], dict]]] = [
    ("render_bf16_agreement", check_render_bf16),
    ("step", check_step),
    ("step_compiled", lambda ctx: check_step(ctx, compiled=True)),
    ("torchrun_1", check_torchrun),
    ("render", check_render),
    ("stage2_sampling", check_stage2),
]


def run(preset: str | None, device: str, max_batch: int, budget_s: float) -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    ctx = Context(preset or ("paper" if dev.type == "cuda" else "tiny"), dev, max_batch)
    report: dict[str, Any] = {
        "benchmark": "gpu", "preset": ctx.preset, "device": torch.cuda.get_device_name(dev) if ctx.cuda else "cpu",
        "torch": torch.__version__, "cuda_version": torch.version.cuda, "machine": platform.machine(),
        "checks": {}, "seconds": {}, "skipped": {}, "errors": {}}
    if not ctx.cuda:
        report["skipped"]["cuda"] = ("no CUDA device: the tiny preset on the CPU, fp32 steps (bf16 only in the "
                                     "render agreement check, through CPU autocast)")
    start = time.perf_counter()
    for name, check in CHECKS:
        if time.perf_counter() - start > budget_s:
            report["skipped"][name] = f"over the time budget of {budget_s:.0f} s"
            continue
        t0 = time.perf_counter()
        try:
            report["checks"][name] = check(ctx)
        except Skip as why:
            report["skipped"][name] = str(why)
        except Exception as err:  # one failing check must not hide the others' results
            report["errors"][name] = f"{type(err).__name__}: {err}"[:2000] + "\n" + traceback.format_exc()[-2000:]
            _free(ctx.device)
        report["seconds"][name] = round(time.perf_counter() - t0, 1)
    report["total_s"] = round(time.perf_counter() - start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vq3d bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--preset", default=None, help="default: paper on CUDA, tiny on CPU")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the step search tries")
    p.add_argument("--budget-s", type=float, default=420.0, help="checks not started by then are skipped")
    args = p.parse_args(argv)
    report = run(args.preset, args.device, args.max_batch, args.budget_s)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 1 if report["errors"] else 0
