"""The training-step checks of `vq3d bench gpu`: one Stage-1 trainer reused for every batch.

`StepRig` builds the preset's trainer once (R1 off: it is 1 step in 16, measured by `bench
paper-step`; the step index set so the GAN and the novel views are on) and times steps at any
batch on it, since a step takes the batch it is given. A row is one batch size: seconds per step,
images per second, peak allocated and reserved memory, MFU against the GPU's bf16 peak, and, for
the rows that ask for them, time by region (`vq3d.bench.regions`), host syncs per step, the
renderer's chunk size and the fake-tensor projection of the same step (`vq3d.bench.fake_step`:
peak memory; FLOPs at 40% MFU: time) beside the measurement.

The largest batch is probed with one step to see whether it fits and one more to time it, from a
guess that the memory of batches 1 and 2 gives; a CUDA allocation failure of the caching
allocator, cuBLAS or cuDNN means "does not fit", and every probe is a row.
"""

from __future__ import annotations

import gc
import tempfile
from contextlib import contextmanager
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator

import torch

from vq3d.bench.gpu_report import OverBudget, Skip
from vq3d.bench.paper_step import largest_passing
from vq3d.bench.regions import RegionClock
from vq3d.losses.stage1 import novel_gan_start
from vq3d.render.execution import lookup_bytes_per_point
from vq3d.utils.host_sync import HostSyncRecorder

if TYPE_CHECKING:
    from vq3d.bench.gpu import Context

GIB = 2**30
PROJECTED_MFU = 0.4  # the MFU `vq3d bench paper-step` projects at
COMPILE_S = 90.0  # what compiling the paper preset's ViTs may take (Inductor, fullgraph)
# what a failed CUDA allocation says when it does not come from the caching allocator
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
               "CUBLAS_STATUS_NOT_INITIALIZED", "cudaErrorMemoryAllocation")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` says a CUDA allocation failed (PyTorch's allocator, cuBLAS or cuDNN)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(m in str(err) for m in OOM_MARKERS))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_peaks(device: torch.device) -> dict[str, float | None]:
    """Peak allocated and reserved GiB since the last reset (None on CPU)."""
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRig:
    """One trainer of the context's preset, and the steps timed on it."""

    def __init__(self, ctx: "Context") -> None:
        from vq3d.train.stage1 import Stage1Trainer  # heavy import, only when used

        self.ctx, self.device = ctx, ctx.device
        self.cfg = ctx.config("train.batch_size=1", "loss.r1_every=0", "train.image_every=1000000000")
        self._tmp = tempfile.TemporaryDirectory()
        self.trainer = Stage1Trainer(self.cfg, self._tmp.name)
        self.start_step = max(self.cfg.loss.gan_start_steps, novel_gan_start(self.cfg.loss))
        self.trainer.step = self.start_step  # the GAN's steps: the ones a long run is made of
        self._data: dict[int, dict] = {}
        self.compiled = False

    def use_kernel(self, kernel: str) -> None:
        """Render with `kernel` from now on (the rig's config too, for the projection and probes)."""
        self.cfg = replace(self.cfg, render=replace(self.cfg.render, kernel=kernel))
        renderer = self.trainer.model.renderer
        renderer.cfg = replace(renderer.cfg, kernel=kernel)

    @contextmanager
    def kernel(self, kernel: str) -> Iterator[None]:
        """Render with `kernel` ("torch" or "triton") inside the block."""
        renderer = self.trainer.model.renderer
        saved = renderer.cfg
        renderer.cfg = replace(saved, kernel=kernel)
        try:
            yield
        finally:
            renderer.cfg = saved

    def close(self) -> None:
        self.trainer = None
        self._data.clear()
        free_memory(self.device)
        self._tmp.cleanup()

    def data(self, batch: int) -> dict:
        if batch not in self._data:
            self._data.clear()
            res, g = self.cfg.data.resolution, torch.Generator(device=self.device).manual_seed(batch)
            self._data[batch] = {
                "image": torch.rand(batch, 3, res, res, generator=g, device=self.device) * 2 - 1,
                "disparity": torch.rand(batch, 1, res, res, generator=g, device=self.device)}
        return self._data[batch]

    def step(self, batch: int) -> None:
        self.trainer.train_step(self.data(batch))
        self.trainer.step += 1

    def run_steps(self, batch: int, count: int) -> float:
        """Seconds of `count` steps at `batch`, synchronised (each step asks the budget first)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(count):
            self.ctx.budget.check(f"a step at batch {batch}")
            self.step(batch)
        _sync(self.device)
        return time.perf_counter() - t0

    def row(self, batch: int, warm: int, timed: int) -> dict:
        """Warm-up steps, then timed ones: step time, throughput, peak memory, MFU."""
        free_memory(self.device)
        warm_s = self.run_steps(batch, warm)
        seconds = self.run_steps(batch, timed) / timed
        row: dict[str, Any] = {"batch": batch, "fits": True, "step_s": round(seconds, 4),
                               "images_per_s": round(batch / seconds, 2), "warmup_s": round(warm_s, 2),
                               "timed_steps": timed, **memory_peaks(self.device)}
        peak = self.ctx.peak_flops()
        if peak is not None:
            row["mfu"] = round(self.ctx.flops_per_image() * batch / seconds / peak, 4)
        return row

    def probe(self, batch: int) -> dict:
        """One step to see whether `batch` fits, one more timed if it does; a row either way."""
        try:
            return self.row(batch, warm=1, timed=1)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            message = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        # freed here, not in the except clause, whose traceback still holds the step's tensors
        self._data.clear()
        free_memory(self.device)
        return {"batch": batch, "fits": False, "error": message}

    def details(self, row: dict, regions: bool = True) -> dict:
        """Add to a measured row: time by region, host syncs, the chunk, the projections."""
        batch = row["batch"]
        if regions:
            row["regions_s"] = self.region_seconds(batch)
        row["host_syncs_per_step"] = self.host_syncs(batch)
        row["chunk"] = self.chunk()
        row["projected"] = self.projection(batch)
        return row

    def region_seconds(self, batch: int) -> dict[str, float]:
        clock = RegionClock(self.device).attach(self.trainer)
        try:
            clock.mark("other")
            self.step(batch)
            clock.mark("other")
            return clock.seconds()
        finally:
            clock.detach()

    def host_syncs(self, batch: int) -> int:
        """Host synchronisations in one step (CUDA's sync debug mode; `HostSyncRecorder` on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.step(batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)
        with HostSyncRecorder() as recorder:
            self.step(batch)
        return len(recorder.syncs)

    def chunk(self) -> dict:
        """The renderer's chunk budget (fixed at its first render on this device) and points per chunk."""
        renderer, m = self.trainer.model.renderer, self.cfg.model
        policy = renderer.execution_policy(self.device)
        per_point = lookup_bytes_per_point(m.plane_channels, self.cfg.render.mlp_hidden, self.cfg.render.mlp_layers)
        return {"chunk_mb": round(policy.chunk_bytes / 2**20, 1), "points_per_chunk": policy.per_chunk(per_point),
                "scatter": policy.scatter}

    def projection(self, batch: int) -> dict:
        """The fake-tensor step of the same configuration with the torch renderer (its chunk
        budget, scatter and precision; the CPU's autocast rules), so read it beside the torch-kernel
        rows where the step used the fused one, and the step time its FLOPs give at 40% MFU."""
        from vq3d.bench.fake_step import fake_step_memory

        policy = self.trainer.model.renderer.execution_policy(self.device)
        cfg = replace(self.cfg, render=replace(self.cfg.render, chunk_mb=policy.chunk_bytes / 2**20,
                                               scatter="index_add"),
                      train=replace(self.cfg.train, device="cpu", batch_size=batch, compile=False))
        out: dict[str, Any] = {"peak_gib": round(fake_step_memory(cfg)["peak"] / GIB, 3)}
        peak = self.ctx.peak_flops()
        if peak is not None:
            out["step_s_at_40pct_mfu"] = round(self.ctx.flops_per_image() * batch / (PROJECTED_MFU * peak), 4)
        return out


def memory_per_image(one: dict, two: dict) -> dict:
    """Per-image and fixed memory from the rows of batch 1 and 2 (allocated peaks), or {} on CPU."""
    if one.get("peak_allocated_gib") is None:
        return {}
    per_image = two["peak_allocated_gib"] - one["peak_allocated_gib"]
    return {"per_image_gib": round(per_image, 3), "fixed_gib": round(one["peak_allocated_gib"] - per_image, 3)}


def batch_guess(ctx: "Context", per_image: dict) -> int:
    """The largest batch the memory of batches 1 and 2 predicts (95% of the GPU, the allocator's
    slack), or the search cap on CPU."""
    if not per_image or per_image["per_image_gib"] <= 0:
        return ctx.max_batch
    total = torch.cuda.mem_get_info(ctx.device)[1] / GIB
    return max(2, int((0.95 * total - per_image["fixed_gib"]) / per_image["per_image_gib"]))


def check_step(ctx: "Context") -> dict:
    """Batch 1 and 2 on the rig (the rig stays for the probe and the compiled step); on CUDA with
    the fused renderer, batch 1 and 2 with the torch renderer too."""
    from vq3d.render.fused import resolve_kernel

    rig = ctx.rig()
    kernel = resolve_kernel(rig.cfg.render, ctx.device)
    fallback: dict[str, str] = {}
    try:
        rows = [rig.row(b, warm=2, timed=ctx.repeats) for b in (1, 2)]
    except Exception as err:  # the fused kernels' first GPU run: fall back to torch for every later check
        if kernel != "triton" or isinstance(err, Skip):
            raise
        fallback = {"triton_error": f"{type(err).__name__}: {err}"[:500]}
        free_memory(ctx.device)
        rig.use_kernel("torch")
        kernel = "torch"
        rows = [rig.row(b, warm=2, timed=ctx.repeats) for b in (1, 2)]
    rig.details(rows[0])
    result = {"batch_1": rows[0], "batch_2": rows[1], **memory_per_image(*rows), "render_kernel": kernel, **fallback,
              "precision": rig.cfg.train.precision, "flops_per_image": ctx.flops_per_image(),
              "step_index": rig.start_step, "r1": "off (1 step in 16: vq3d bench paper-step measures it)"}
    if kernel == "triton":  # the same step with the reference renderer, beside it
        with rig.kernel("torch"):
            torch_rows = [rig.row(b, warm=1, timed=ctx.repeats) for b in (1, 2)]
        result["torch_kernel"] = {"batch_1": torch_rows[0], "batch_2": torch_rows[1], **memory_per_image(*torch_rows)}
    return result


def check_largest_batch(ctx: "Context") -> dict:
    """Probe for the largest batch that fits, then detail its row."""
    rig = ctx.rig()
    step = ctx.result("step") or {}
    per_image = {k: step[k] for k in ("per_image_gib", "fixed_gib") if k in step}
    guess = min(batch_guess(ctx, per_image), ctx.max_batch)
    rows: dict[int, dict] = {}

    def fits(batch: int) -> bool:
        rows[batch] = rig.probe(batch)
        return rows[batch]["fits"]

    stopped = None
    try:
        largest = largest_passing(fits, guess, cap=ctx.max_batch, grow=1.25)
    except OverBudget as err:  # keep the rows probed so far: the largest that fitted stands
        stopped = str(err)
        largest = max([b for b, r in rows.items() if r["fits"]], default=0)
    ctx.largest = largest
    result: dict[str, Any] = {"guess": guess, "searched_up_to": ctx.max_batch, "largest_batch": largest,
                              "rows": [rows[b] for b in sorted(rows)]}
    if stopped:
        result["search_stopped"] = stopped
        return result
    if largest >= 1:
        best = rows.get(largest) or rig.row(largest, warm=1, timed=1)
        result["largest"] = rig.details(dict(best))
    return result


def check_compiled(ctx: "Context") -> dict:
    """The step at the largest batch with the ViT encoder and decoder compiled (`train.compile`)."""
    from vq3d.bench.gpu_env import compile_toolchain
    from vq3d.train.compile import compile_regions

    if not ctx.cuda:
        raise ctx.skip("compiled steps are timed on CUDA only (tests/test_stage1_compile.py checks "
                       "compilation against eager on CPU)")
    tools = compile_toolchain()
    if not tools["can_compile"]:
        raise ctx.skip("torch.compile cannot build here: missing " + " and ".join(tools["missing"]))
    batch = ctx.largest or 1
    rig = ctx.rig()
    eager = rig.row(batch, warm=0, timed=ctx.repeats)
    ctx.budget.require(COMPILE_S, "compiling the encoder and decoder")
    compile_regions(rig.trainer.model)
    rig.compiled = True
    t0 = time.perf_counter()
    rig.step(batch)  # compilation
    _sync(ctx.device)
    compile_s = time.perf_counter() - t0
    try:
        row = rig.row(batch, warm=1, timed=ctx.repeats)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        return {"batch": batch, "compile_s": round(compile_s, 1), "fits": False, "eager": eager,
                "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    # (an out-of-memory here ends the rig's use: the two-rank check drops it next)
    row.update(compile_s=round(compile_s, 1), speedup_over_eager=round(eager["step_s"] / row["step_s"], 3))
    return {"compiled": row, "eager": eager, "regions_compiled": ["encoder", "decoder"]}
