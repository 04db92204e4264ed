"""`vq3d bench gpu`: the first check to run on a GPU machine (6 minutes, hard; no install).

    python -m vq3d bench gpu --json --out gpu.json      # from the checkout's root

It needs only torch, numpy, pillow, pyyaml, tqdm, safetensors and huggingface_hub (and Triton
for `torch.compile`). Checks run in order of value, each failing alone; `--out` is rewritten
atomically as each check starts and ends, so a job killed at its limit leaves every finished
check (`vq3d.bench.gpu_report`); each check prints one line to stderr as it ends. `--budget-s`
(default 360) is enforced inside checks: what it stops is skipped with "budget" in the reason.
On CPU the same code runs on the tiny preset (the test suite runs it).

The report (one JSON object):

- `benchmark`, `preset`, `device`, `budget_s`; `status`: running, finished or stopped at the
  budget; `running`: the check in progress when the file was written; `order`: the checks' order;
  `checks` {name: result}, `skipped` {name: reason}, `errors` {name: {error, traceback (last 15
  lines)}}, `seconds` {name: s}, `elapsed_s`, `total_s`.
- `environment`: python, torch, CUDA runtime, cuDNN, NCCL, Triton, driver, GPU name, count,
  memory, compute capability, bf16 peak (TFLOP/s); `compile`: C compiler and Python headers
  found or not (`vq3d.bench.gpu_env`).
- `render_bf16_agreement`: one full-resolution render in bf16 autocast (bf16 planes) against
  fp32: geometry dtypes, depth relative error and rgb error (median, p99, max over rays);
  `within_bounds`: geometry fp32 and p99 errors under 1% / 0.01 (a few rays whose resampled
  edges move may exceed them; the maximum is reported, not judged).
- `render`: `by_kernel` {torch, triton (CUDA with Triton)}: a training render (forward + backward,
  regularizers) and an inference render at the preset's size: rays per second, peak allocated /
  reserved GiB, on CUDA the peak beyond the planes, their gradient and the outputs (MB) and kernel
  launches, the chunk budget and operator calls; `triton_speedup_train`.
- `stage2_sampling`: tokens per second of KV-cached sampling (the preset's GPT on CUDA).
- `step`: the training step (bf16 on CUDA, GAN and novel views on, R1 off) at batch 1 and 2 on
  one trainer (`vq3d.bench.gpu_step`): rows of `step_s`, `images_per_s`, `peak_allocated_gib`,
  `peak_reserved_gib`, `mfu`; `per_image_gib` and `fixed_gib` from the two; batch 1 also has
  `regions_s` (encoder, quantizer, decoder, renderer, losses, discriminators, optimizer, other;
  `vq3d.bench.regions`), `host_syncs_per_step`, `chunk` and `projected` (the fake-tensor peak
  and the step time at 40% MFU); `render_kernel`, and with the fused renderer on CUDA
  `torch_kernel`: batch 1 and 2 rendered by the torch path, beside them.
- `largest_batch`: `rows` (every batch probed: fits or not, time and memory), `largest_batch`,
  `guess`, and `largest`: its row with the same details as batch 1.
- `step_compiled`: the step at the largest batch with the ViT encoder and decoder compiled
  (compile seconds, speed-up over eager), or skipped saying what the toolchain lacks.
- `ddp_two_ranks`: `torchrun --nproc_per_node 2`, one Stage-1 step under DDP, both ranks on the
  one GPU over gloo (`vq3d.bench.ddp_check`): `ranks_identical` and the backend used.

Exit code 1 if a check failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vq3d.bench.gpu_env import environment, peak_bf16_flops
from vq3d.bench.gpu_report import Budget, OverBudget, Report, Skip
from vq3d.bench.gpu_step import StepRig, check_compiled, check_largest_batch, check_step, free_memory, memory_peaks
from vq3d.config import Config, Stage2Config, load_config

DEFAULT_BUDGET_S = 360.0


class Context:
    """What the checks share: the preset, device, budget, results so far and one step rig."""

    def __init__(self, preset: str, device: torch.device, max_batch: int, budget: Budget, ddp_preset: str) -> None:
        self.preset, self.device, self.max_batch, self.budget = preset, device, max_batch, budget
        self.ddp_preset = ddp_preset
        self.cuda = device.type == "cuda"
        self.repeats = 3 if self.cuda else 2
        self.largest: int | None = None  # the largest batch found to fit
        self.results: dict[str, dict] = {}
        self._flops_per_image: float | None = None
        self._rig: StepRig | None = None

    def config(self, *overrides: str) -> Config:
        precision = "bf16" if self.cuda else "fp32"  # bf16 matmuls crawl on most CPUs
        base = [f"train.device={self.device}", f"train.precision={precision}"]
        if not self.cuda:  # the GPU execution policy, so host syncs are those a GPU would see
            base.append("render.scatter=index_add")
        return load_config(self.preset, [], base + list(overrides))

    def flops_per_image(self) -> float:
        """FLOPs of one training step per image (R1 off), counted on fake tensors, once."""
        if self._flops_per_image is None:
            from vq3d.bench.paper_step import flops as count_step_flops

            cfg = load_config(self.preset, [], ["train.device=cpu", "train.batch_size=1"])
            self._flops_per_image = float(count_step_flops(cfg)["step_without_r1"])
        return self._flops_per_image

    def peak_flops(self) -> float | None:
        return peak_bf16_flops(torch.cuda.get_device_name(self.device)) if self.cuda else None

    def rig(self) -> StepRig:
        if self._rig is None:
            self._rig = StepRig(self)
        return self._rig

    def drop_rig(self) -> None:
        if self._rig is not None:
            self._rig.close()
            self._rig = None

    def result(self, name: str) -> dict | None:
        return self.results.get(name)

    @staticmethod
    def skip(reason: str) -> Skip:
        return Skip(reason)


def _smooth_planes(batch: int, channels: int, resolution: int, device: torch.device) -> torch.Tensor:
    coarse = torch.randn(batch, 3 * channels, 8, 8, device=device)
    fine = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return fine.view(batch, 3, channels, resolution, resolution)


def _quantiles(x: torch.Tensor) -> dict[str, float]:
    x = x.flatten().float()
    q = torch.quantile(x[:: max(1, x.numel() // 2**20)], torch.tensor([0.5, 0.99], device=x.device))
    return {"median": float(q[0]), "p99": float(q[1]), "max": float(x.max())}


def _render_setup(ctx: Context) -> tuple[Any, Config, torch.Tensor, Any]:
    from vq3d.render.cameras import canonical_cameras
    from vq3d.render.renderer import Renderer

    cfg = ctx.config()
    torch.manual_seed(0)
    renderer = Renderer(cfg.render, cfg.model.plane_channels).to(ctx.device)
    planes = _smooth_planes(1, cfg.model.plane_channels, cfg.model.plane_resolution, ctx.device)
    cams = canonical_cameras(1, cfg.render.camera_distance, cfg.render.fov_deg, ctx.device)
    return renderer, cfg, planes, cams


def check_environment(ctx: Context) -> dict:
    return environment(ctx.device)


def check_render_bf16(ctx: Context) -> dict:
    renderer, cfg, planes, cams = _render_setup(ctx)
    res = cfg.data.resolution
    with torch.no_grad():
        ref = renderer.render_cameras(planes, cams, res, res)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            low = renderer.render_cameras(planes.bfloat16(), cams, res, res)
    depth = _quantiles((low.depth - ref.depth).abs() / ref.depth)
    rgb = _quantiles((low.rgb - ref.rgb).abs().amax(dim=1))
    geometry = all(t.dtype == torch.float32 for t in (low.depth, low.weights, low.spacing_edges,
                                                      low.sample_disparity, low.rgb))
    return {"resolution": res, "rays": res * res, "samples": renderer.samples_per_level, "geometry_fp32": geometry,
            "depth_rel_error": depth, "rgb_abs_error": rgb,
            "nerf_edges_strictly_increasing": bool((low.spacing_edges.diff(dim=-1) > 0).all()),
            "within_bounds": geometry and depth["p99"] < 0.01 and rgb["p99"] < 0.01,
            "bounds": "p99 depth relative error < 1%, p99 rgb error < 0.01 (colours in [-1, 1])"}


def _timed(fn: Callable[[], Any], ctx: Context) -> float:
    """Mean seconds of `fn` over ctx.repeats runs after one warm-up, synchronised."""
    fn()
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)
    t0 = time.perf_counter()
    for _ in range(ctx.repeats):
        ctx.budget.check("a render")
        fn()
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)
    return (time.perf_counter() - t0) / ctx.repeats


def check_render(ctx: Context) -> dict:
    """Training and inference renders at the preset's size, with each kernel that runs here."""
    from vq3d.render.fused import triton_available

    kernels = ["torch"] + (["triton"] if ctx.cuda and triton_available() else [])
    rows: dict[str, dict] = {}
    failure: Exception | None = None
    for kernel in kernels:  # each in its own try: a kernel that fails keeps the other's row
        try:
            rows[kernel] = _render_row(ctx, kernel)
        except Skip:
            raise
        except Exception as err:
            rows[kernel], failure = {"error": f"{type(err).__name__}: {err}"[:500]}, err
            free_memory(ctx.device)
    if failure is not None and all("error" in row for row in rows.values()):
        raise failure  # nothing measured: the check fails with the traceback
    result: dict[str, Any] = {"by_kernel": rows}
    if all("train_rays_per_s" in rows.get(k, {}) for k in ("torch", "triton")):
        result["triton_speedup_train"] = round(rows["triton"]["train_rays_per_s"] / rows["torch"]["train_rays_per_s"], 2)
        result["triton_train_rays_per_s_by_launch"] = _launch_rows(ctx)
    elif "triton" not in rows:
        result["triton"] = "not run: needs CUDA and Triton" if not ctx.cuda else "not run: Triton does not import"
    return result


def _training_render(ctx: Context, kernel: str):
    """A training render (fwd + bwd of image, depth, distortion and interlevel terms) at the
    preset's size with `kernel`: (the render's function, the list it keeps its output in, the
    renderer, config, planes, cameras, resolution)."""
    from dataclasses import replace

    from vq3d.losses.stage1 import nerf_regularizers

    renderer, cfg, planes, cams = _render_setup(ctx)
    renderer.cfg = replace(renderer.cfg, kernel=kernel)
    res = cfg.data.resolution
    planes = (planes.bfloat16() if ctx.cuda else planes).requires_grad_(True)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)
    kept: list[Any] = []

    def train_render() -> None:
        with autocast:
            out = renderer.render_cameras(planes, cams, res, res, train=True, step=10**6, generator=gen)
            distortion, interlevel = nerf_regularizers(out)
            loss = out.rgb.float().square().mean() + out.depth.mean() + distortion + interlevel
        loss.backward()
        kept[:] = [out]

    return train_render, kept, renderer, cfg, planes, cams, res


def _launch_rows(ctx: Context) -> dict:
    """Training-render rays per second of the fused kernels at each candidate launch shape
    (`vq3d.render.fused.LAUNCH_CANDIDATES`; the first is the default)."""
    from vq3d.render.fused import LAUNCH_CANDIDATES, launch_shape

    train_render, kept, *_, res = _training_render(ctx, "triton")
    rows = {}
    for launch in LAUNCH_CANDIDATES:
        name = (f"fwd {launch.fwd_rays}x{launch.fwd_warps}, bwd {launch.bwd_rays}x{launch.bwd_warps}"
                f"{' (default)' if launch == LAUNCH_CANDIDATES[0] else ''}")
        try:
            with launch_shape(**vars(launch)):
                rows[name] = round(res * res / _timed(train_render, ctx))
        except Skip:
            raise
        except Exception as err:  # one shape that fails to build or run keeps the others' rows
            rows[name] = f"{type(err).__name__}: {err}"[:300]
        kept.clear()
    return rows


def _render_row(ctx: Context, kernel: str) -> dict:
    from vq3d.bench.opcount import count_operator_calls

    train_render, kept, renderer, cfg, planes, cams, res = _training_render(ctx, kernel)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)

    def inference_render() -> None:
        with torch.no_grad(), autocast:
            renderer.render_cameras(planes, cams, res, res)

    train_s = _timed(train_render, ctx)
    kept.clear()
    planes.grad = None
    free_memory(ctx.device)
    before = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else 0
    train_render()
    peaks = memory_peaks(ctx.device)
    out = kept[0]
    out_bytes = sum(t.numel() * t.element_size() for t in (out.rgb, out.depth, out.disparity, out.opacity,
                                                            out.weights, out.sample_disparity, out.spacing_edges,
                                                            *out.proposal_weights, *out.proposal_spacing_edges))
    kept.clear()
    infer_s = _timed(inference_render, ctx)
    _, calls = count_operator_calls(train_render)
    kept.clear()
    row = {"rays": res * res, "samples": renderer.samples_per_level, "plane_resolution": cfg.model.plane_resolution,
           "train_rays_per_s": round(res * res / train_s), "inference_rays_per_s": round(res * res / infer_s),
           "train_peak_allocated_gib": peaks["peak_allocated_gib"], "train_peak_reserved_gib": peaks["peak_reserved_gib"],
           "chunk_mb": round(renderer.execution_policy(ctx.device).chunk_bytes / 2**20, 1),
           "train_operator_calls": sum(calls.values())}
    if ctx.cuda:
        planes_bytes = planes.numel() * planes.element_size()
        beyond = torch.cuda.max_memory_allocated(ctx.device) - before - out_bytes - planes_bytes  # the planes' grad
        row["train_peak_beyond_planes_and_outputs_mb"] = round(beyond / 2**20, 1)
        row["train_cuda_kernels"] = _cuda_kernels(train_render, ctx.device)
        kept.clear()
    return row


def _cuda_kernels(fn: Callable[[], None], device: torch.device) -> int | str:
    """CUDA kernels launched by `fn` (the profiler's CUDA activity; a reason if it cannot)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        return sum(1 for e in prof.events() if str(e.device_type).endswith("CUDA"))
    except Exception as err:  # CUPTI missing or busy: the rest of the check stands
        return f"not counted: {type(err).__name__}: {err}"[:300]


def check_stage2(ctx: Context) -> dict:
    from vq3d.bench.sample import run_setting

    if ctx.cuda:
        cfg = load_config(ctx.preset).stage2
        vocab, tokens, batch = load_config(ctx.preset).model.codebook_size, 1024, 8
    else:
        cfg, vocab, tokens, batch = Stage2Config(layers=1, width=32, heads=2), 64, 16, 2
    row = run_setting(vocab, tokens, cfg, batch, device=str(ctx.device), uncached=False)
    return {k: row[k] for k in ("seq_len", "layers", "width", "params", "batch", "cached_tokens_per_s")}


def check_ddp(ctx: Context) -> dict:
    from vq3d.bench.ddp_check import two_rank_step

    ctx.budget.require(30.0 if ctx.cuda else 5.0, "two ranks' start-up and step")
    ctx.drop_rig()  # the ranks need the GPU's memory
    device = f"cuda:{ctx.device.index or 0}" if ctx.cuda else "cpu"
    return two_rank_step(ctx.ddp_preset, device, "bf16" if ctx.cuda else "fp32", ctx.budget.left(),
                         adopt=ctx.budget.adopt)


CHECKS: list[tuple[str, Callable[[Context], dict]]] = [
    ("environment", check_environment),
    ("render_bf16_agreement", check_render_bf16),
    ("render", check_render),
    ("stage2_sampling", check_stage2),
    ("step", check_step),
    ("largest_batch", check_largest_batch),
    ("step_compiled", check_compiled),
    ("ddp_two_ranks", check_ddp),
]


def _summary(name: str, result: dict) -> str:
    """A few words of a check's result for its line on the screen."""
    if name == "environment":
        return f"{result.get('gpu', 'cpu')}, torch {result['torch']}, compile {'ok' if result['compile']['can_compile'] else 'no'}"
    if name == "render_bf16_agreement":
        return f"p99 depth error {result['depth_rel_error']['p99']:.2e}, within bounds: {result['within_bounds']}"
    if name == "render":
        rows = result["by_kernel"]
        return ", ".join(f"{k}: {r['train_rays_per_s']:,} training rays/s" for k, r in rows.items())
    if name == "stage2_sampling":
        return f"{result['cached_tokens_per_s']:,.0f} tokens/s"
    if name == "step":
        return f"batch 1: {result['batch_1']['step_s']:.3f} s/step"
    if name == "largest_batch":
        return f"largest batch {result['largest_batch']} ({len(result['rows'])} probed)"
    if name == "step_compiled" and "compiled" in result:
        return f"{result['compiled']['speedup_over_eager']:.2f}x eager"
    if name == "ddp_two_ranks":
        return f"ranks identical: {result['ranks_identical']} ({result['backend']})"
    return ""


def run(preset: str | None, device: str, max_batch: int, budget_s: float, out: str | None = None,
        ddp_preset: str | None = None, start: float | None = None) -> dict:
    """Run every check within the budget; returns the report (also written to `out`)."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    budget = Budget(budget_s, start)
    cuda = dev.type == "cuda"
    ctx = Context(preset or ("paper" if cuda else "tiny"), dev, max_batch, budget,
                  ddp_preset or ("demo" if cuda else "tiny"))
    header = {"preset": ctx.preset, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
              "torch": torch.__version__, "machine": platform.machine(), "budget_s": budget_s,
              "max_batch": max_batch, "ddp_preset": ctx.ddp_preset}
    report = Report(out, header, [name for name, _ in CHECKS], clock=budget.elapsed)
    if not cuda:
        report.data["note"] = ("no CUDA device: the tiny preset on the CPU, fp32 steps (bf16 only in the render "
                               "agreement check, through CPU autocast)")

    def on_deadline() -> int:  # the watchdog: a check did not return by the deadline
        return report.stop_at_deadline(budget_s, budget.elapsed())

    budget.arm(on_deadline)
    try:
        for name, check in CHECKS:
            t0 = time.perf_counter()
            try:
                budget.check(name)
                report.start(name)
                result = check(ctx)
            except Skip as why:  # OverBudget included
                report.finish(name, time.perf_counter() - t0, skipped=str(why))
            except Exception as err:  # one failing check must not hide the others' results
                report.finish(name, time.perf_counter() - t0, error=err)
                del err  # its traceback holds the check's tensors
                free_memory(dev)
            else:
                ctx.results[name] = result
                report.finish(name, time.perf_counter() - t0, result=result, summary=_summary(name, result))
    finally:
        budget.disarm()
        ctx.drop_rig()
    over = any(str(r).startswith("budget") for r in report.data["skipped"].values())
    report.close("stopped at the budget" if over else "finished", budget.elapsed())
    return report.data


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    p = argparse.ArgumentParser(prog="vq3d bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    p.add_argument("--out", default=None, metavar="FILE", help="the report, rewritten atomically after every check")
    p.add_argument("--preset", default=None, help="default: paper on CUDA, tiny on CPU")
    p.add_argument("--ddp-preset", default=None, help="the two-rank check's preset (default: demo on CUDA, tiny on CPU)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--max-batch", type=int, default=128, help="largest batch the probe tries")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="the whole run's seconds, enforced inside checks (default 360)")
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.max_batch < 1:
        p.error("--budget-s must be > 0 and --max-batch >= 1")
    report = run(args.preset, args.device, args.max_batch, args.budget_s, args.out, args.ddp_preset, start)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2), flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
