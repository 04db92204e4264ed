"""`vq3d bench compile [--json]`: does `train.compile` pay for its compile time in a CPU run?

Times the Stage-1 autoencoder's training pass (encoder -> quantizer -> decoder, forward and
backward, at a preset's shapes) three ways in one process: eager; `train.compile`'s regions
(`vq3d.train.compile.compile_regions`: the encoder and the decoder, one graph each); and each
transformer block compiled on its own (PyTorch's "regional compilation": the blocks of both ViTs
share one graph at the demo's sizes, so it compiles once; measured here as the alternative, not an
option of the trainer). Each compiled variant's first call compiles with an empty inductor cache of
its own (a temporary `TORCHINDUCTOR_CACHE_DIR`), as in a fresh clone; the steady timings are
medians over rounds in which the variants alternate, so that load from other processes on a shared
machine hits all alike. `break_even_steps` is the compile time over the milliseconds a step saves:
a run shorter than that loses steps to compiling (the renderer's own compile,
`render.compile_field`, is timed by `vq3d bench render`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import torch
from torch import nn

from vq3d.config import PRESETS
from vq3d.models.stage1 import Stage1Model
from vq3d.models.vit import Block
from vq3d.train.compile import compile_regions


def compile_blocks(model: nn.Module) -> int:
    """Compile every transformer block of the encoder and decoder in place; returns how many."""
    blocks = [m for m in (*model.encoder.modules(), *model.decoder.modules()) if isinstance(m, Block)]
    for block in blocks:
        block.compile(fullgraph=True, dynamic=False)
    return len(blocks)


# how each variant compiles a model in place (None: eager)
VARIANTS: dict[str, Callable[[nn.Module], object] | None] = {
    "eager": None, "modules": compile_regions, "blocks": compile_blocks}


def autoencoder_pass(model: Stage1Model, images: torch.Tensor) -> Callable[[], None]:
    """One training pass of the autoencoder (no renderer): a loss on the planes and the VQ loss,
    backward into every parameter (gradients are zeroed first, so nothing accumulates)."""
    def run() -> None:
        model.zero_grad(set_to_none=True)
        quant = model.quantizer(model.encoder(images))
        planes = model.decoder(quant.codes)
        (planes.square().mean() + quant.loss).backward()
    return run


def _first_call(run: Callable[[], None], cold_cache: bool) -> float:
    """Seconds of the first call; with `cold_cache` inductor compiles into a fresh temporary folder
    with its in-memory caches cleared (`temporary_cache_dir`), as in a fresh clone."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with tempfile.TemporaryDirectory(prefix="vq3d_inductor_") as folder, \
            (temporary_cache_dir(folder) if cold_cache else contextlib.nullcontext()):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench compile", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="the model's sizes")
    parser.add_argument("--batch", type=int, default=0, help="images per pass (0: the preset's batch)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of timed calls")
    parser.add_argument("--calls", type=int, default=20, help="calls per round and variant")
    parser.add_argument("--warm-cache", action="store_true",
                        help="compile with the usual inductor cache, not an empty one")
    parser.add_argument("--variants", default="eager,modules,blocks",
                        help="comma-separated, from eager, modules, blocks (eager always runs: the baseline)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")
    chosen = {"eager", *(v.strip() for v in args.variants.split(",") if v.strip())}
    if chosen - set(VARIANTS):
        parser.error(f"unknown variants {sorted(chosen - set(VARIANTS))}: use {', '.join(VARIANTS)}")

    cfg = PRESETS[args.preset]()
    batch = args.batch or cfg.train.batch_size
    torch.manual_seed(args.seed)
    base = Stage1Model(cfg).train()
    res = cfg.data.resolution
    images = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    runs, first = {}, {}
    for name, compile_fn in VARIANTS.items():
        if name not in chosen:
            continue
        model = copy.deepcopy(base)
        if compile_fn is not None:
            compile_fn(model)
        runs[name] = autoencoder_pass(model, images)
        first[name] = _first_call(runs[name], cold_cache=not args.warm_cache)
        for _ in range(3):  # warm-up
            runs[name]()
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                run()
            rounds[name].append(1000.0 * (time.perf_counter() - start) / args.calls)
    eager_ms = statistics.median(rounds["eager"])
    variants = {}
    for name in runs:
        ms = statistics.median(rounds[name])
        entry = {"first_call_s": round(first[name], 2), "ms_per_pass": round(ms, 2),
                 "rounds_ms": [round(x, 1) for x in rounds[name]]}
        if name != "eager":
            saved = eager_ms - ms
            extra = first[name] - first["eager"]
            entry.update(saved_ms_per_pass=round(saved, 2), speedup=round(eager_ms / ms, 3),
                         break_even_steps=round(1000.0 * extra / saved) if saved > 0 else None)
        variants[name] = entry
    result = {
        "benchmark": "compile", "preset": args.preset, "batch": batch, "resolution": res,
        "rounds": args.rounds, "calls": args.calls, "cold_cache": not args.warm_cache,
        "variants": variants, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, v in variants.items():
            tail = (f", saves {v['saved_ms_per_pass']:.1f} ms, pays back after {v['break_even_steps']} steps"
                    if name != "eager" and v["break_even_steps"] is not None else "")
            print(f"{name:8s} {v['ms_per_pass']:7.1f} ms a pass, first call {v['first_call_s']:.1f} s{tail}")
    return 0
