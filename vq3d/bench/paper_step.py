"""One Stage-1 training step of the `paper` preset at batch 1 on CPU (`vq3d bench paper-step`).

Checks the issue's bar that the paper's sizes (256x256, ViT-S encoder, ViT-L decoder, 512x512x32
triplanes, 64+64+32 samples per ray, both discriminators with R1 on this step) train on a CPU
machine without running out of 24 GiB. It builds the real trainer and runs one generator and one
discriminator update on a random image and disparity target (the data do not change the cost).
Reports the process's peak resident memory (`ru_maxrss`), the memory held after building the
models and optimizers, the step time, and `memory_ratio` = peak / limit (must stay below 1).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time

import torch

from vq3d.config import load_config
from vq3d.train.run_control import RunControl
from vq3d.train.stage1 import Stage1Trainer

GIB = 1024**3


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run(preset: str, batch: int, overrides: list[str], seed: int = 0) -> dict:
    cfg = load_config(preset, [], ["train.device=cpu", f"train.batch_size={batch}", *overrides])
    res = cfg.data.resolution
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        trainer = Stage1Trainer(cfg, run_dir)
        built_s = time.perf_counter() - t0
        after_build = _peak_rss_bytes()
        g = torch.Generator().manual_seed(seed)
        batch_data = {"image": torch.rand(batch, 3, res, res, generator=g) * 2 - 1,
                      "disparity": torch.rand(batch, 1, res, res, generator=g)}
        rc = RunControl(10, show_progress=False, install_signals=False)
        t0 = time.perf_counter()
        logs = trainer.train_step(batch_data)
        step_s = time.perf_counter() - t0
        rc.close()
    params = sum(p.numel() for p in trainer.model.parameters())
    d_params = sum(p.numel() for p in trainer.d_params)
    return {
        "preset": preset, "batch": batch, "resolution": res,
        "generator_params_m": round(params / 1e6, 1), "discriminator_params_m": round(d_params / 1e6, 1),
        "step_finite": logs is not None, "r1_this_step": cfg.loss.r1_every > 0,
        "build_s": round(built_s, 1), "step_s": round(step_s, 1),
        "rss_after_build_gib": round(after_build / GIB, 2), "peak_rss_gib": round(_peak_rss_bytes() / GIB, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vq3d bench paper-step", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--limit-gib", type=float, default=24.0, help="the memory the step must fit in")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.preset, args.batch, args.set)
    result.update(limit_gib=args.limit_gib, memory_ratio=round(result["peak_rss_gib"] / args.limit_gib, 3),
                  threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}", file=sys.stderr)
    return 0 if result["step_finite"] and result["memory_ratio"] < 1 else 1
