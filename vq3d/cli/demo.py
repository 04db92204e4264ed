"""`vq3d demo --out DIR [--minutes M]`: the whole pipeline on synthetic data -> DIR/index.html."""

from __future__ import annotations

import argparse
import json
import sys

from vq3d.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="synthetic data -> Stage 1 -> Stage 2 -> metrics, renders, samples -> DIR/index.html",
        description="Runs every phase within about --minutes (training gets what the other phases "
                    "leave, split between the stages and printed up front) and writes a self-contained "
                    "DIR/index.html. Rerunning with the same --out skips finished phases and resumes a "
                    "killed training run.")
    add_config_args(p, default_preset="demo")
    p.add_argument("--out", required=True, metavar="DIR", help="demo folder (new, or one to continue)")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget for the whole run (default 15)")
    p.add_argument("--started-at", type=float, metavar="UNIX_TIME",
                   help="count --minutes from this moment instead of from now (`make demo` passes when "
                        "it started, so that the install counts)")
    p.add_argument("--scenes", type=int,
                   help="synthetic scenes, every 10th held out (default: 4000, or 300 per minute under "
                        "13.3 minutes)")
    p.add_argument("--res", type=int, help="image resolution (default: the preset's data.resolution)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", type=int, default=4, help="ground-truth novel views per scene (default 4)")
    p.add_argument("--stage1-minutes", type=float, help="fix Stage 1's training time instead of the split")
    p.add_argument("--stage2-minutes", type=float, help="fix Stage 2's training time instead of the split")
    p.add_argument("--stage1-steps", type=int, help="also stop Stage 1 after this many steps")
    p.add_argument("--stage2-steps", type=int, help="also stop Stage 2 after this many steps")
    p.add_argument("--stage1-fraction", type=float,  # None: vq3d.demo.plan.STAGE1_FRACTION (no torch import here)
                   help="Stage 1's share of the training time (default 0.9; Stage 2 gets the rest)")
    p.add_argument("--eval-scenes", type=int, default=200,
                   help="held-out scenes evaluated (0 = all; default 200)")
    p.add_argument("--recon-scenes", type=int, default=4,
                   help="held-out scenes shown on the page (default 4)")
    p.add_argument("--samples-per-class", type=int, default=2, help="generated scenes per class (default 2)")
    p.add_argument("--frames", type=int, default=24, help="orbit GIF frames (default 24)")
    p.add_argument("--mesh-res", type=int, default=32, help="marching-cubes grid of the reconstructions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-resume", action="store_true", help="refuse a --out that already holds a demo")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars in synth and the optional phases (the phase lines stay)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vq3d.demo import run_demo

    summary = run_demo(
        args.out, minutes=args.minutes, preset=args.preset, stage1_minutes=args.stage1_minutes,
        stage2_minutes=args.stage2_minutes, n_scenes=args.scenes, resolution=args.res, seed=args.seed,
        resume=not args.no_resume, views=args.views, stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps, stage1_fraction=args.stage1_fraction, eval_scenes=args.eval_scenes,
        recon_scenes=args.recon_scenes, samples_per_class=args.samples_per_class, frames=args.frames,
        mesh_resolution=args.mesh_res, config_files=args.config, overrides=args.overrides, device=args.device,
        progress=not args.no_progress, started_at=args.started_at)
    metrics = summary["stage1_metrics"]
    keys = ("novel_view_psnr", "copy_baseline_psnr", "psnr", "depth_accuracy", "disparity_scale")
    print(json.dumps({"index": summary["index"], "seconds": round(summary["seconds"], 1),
                      **{k: metrics[k] for k in keys if k in metrics}}))
    print(f"open {summary['index']}", file=sys.stderr)
    return 0
