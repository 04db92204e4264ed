"""`vq3d eval ...`: evaluation runners; one JSON object on stdout, a human table on stderr.

    vq3d eval stage1 --run RUN --data SYNTH                 ground-truth metrics of Stage 1
    vq3d eval train-features --data SYNTH --out FEAT        the synthetic benchmark's feature net
    vq3d eval generation --stage1 RUN [--stage2 RUN2] --data DIR [--inception F] [--features FEAT]
    vq3d eval radius --stage1 RUN [--stage2 RUN2] --data DIR --radii 0,0.1,0.2 --out DIR

Metrics whose weights are absent are left out and listed under "skipped" with the reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import math
import os
import sys
from typing import Any

from vq3d.errors import UserError


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def print_result(metrics: dict, as_json: bool) -> None:
    """JSON on stdout (when asked) and an aligned table on stderr; tables of rows (a list of
    dicts under "rows") are printed as columns; skipped metrics once each, grouped by reason."""
    if as_json:  # strict JSON: a non-finite number (e.g. PSNR of identical images) becomes null
        print(json.dumps(_finite_or_null(metrics), indent=None, sort_keys=True, allow_nan=False))
    scalars = {k: v for k, v in metrics.items() if k not in ("rows", "skipped") and not isinstance(v, (dict, list))}
    width = max((len(k) for k in scalars), default=0)
    for k, v in scalars.items():
        print(f"{k:<{width}}  {_text(v)}", file=sys.stderr)
    rows = metrics.get("rows") or []
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        widths = [max(len(c), *(len(_text(row.get(c, ""))) for row in rows)) for c in columns]
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths)), file=sys.stderr)
        for row in rows:
            print("  ".join(_text(row.get(c, "")).rjust(w) for c, w in zip(columns, widths)), file=sys.stderr)
    for key in ("csv", "plots"):
        if metrics.get(key):
            print(f"{key}: {metrics[key] if isinstance(metrics[key], str) else ', '.join(metrics[key])}",
                  file=sys.stderr)
    by_reason: dict[str, list[str]] = {}
    for name, reason in (metrics.get("skipped") or {}).items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        print(f"skipped {', '.join(names)}: {reason}", file=sys.stderr)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--features", help="domain feature net folder (vq3d eval train-features)")
    p.add_argument("--split", default="test", help="real images: test (held out, default), train or val")
    p.add_argument("--cache", help="reference-statistics cache folder (default: the synthetic dataset's "
                                   "folder, else the Stage-1 run folder)")
    p.add_argument("--max-real", type=int, default=0, help="real images in the reference statistics (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="image decoding processes (default: CPU cores, at most 4; 0 = in the main process)")
    p.add_argument("--no-progress", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate trained models (metrics as JSON)")
    kinds = p.add_subparsers(dest="kind", metavar="WHAT", required=True)

    s1 = kinds.add_parser("stage1", help="Stage 1 on held-out synthetic scenes vs ground truth")
    s1.add_argument("--run", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    s1.add_argument("--data", required=True, help="synthetic dataset folder (vq3d synth)")
    s1.add_argument("--split", default="test", choices=("test", "train", "all"),
                    help="test (held-out scenes, default), train, or all scenes")
    s1.add_argument("--max-scenes", type=int, default=0, help="evaluate at most this many scenes (0 = all)")
    s1.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    s1.add_argument("--lpips-vgg", help="VGG16 weights for LPIPS (default: the run's loss.lpips_vgg_path)")
    s1.add_argument("--lpips-lin", help="LPIPS vgg.pth linear weights (default: the run's loss.lpips_lin_path)")
    s1.add_argument("--panel", help="also write a PNG of the first scenes: input, reconstruction, depth "
                    "and two novel views against the truth")
    s1.add_argument("--panel-rows", type=int, default=6, help="scenes in the --panel picture")
    _common(s1)
    s1.set_defaults(func=_stage1)

    tf = kinds.add_parser("train-features", help="train the synthetic benchmark's domain feature net")
    tf.add_argument("--data", required=True, help="synthetic dataset folder (vq3d synth)")
    tf.add_argument("--out", required=True, help="folder for feature_net.safetensors + .json")
    length = tf.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    length.add_argument("--epochs", type=float, help="passes over the training images instead of --steps")
    tf.add_argument("--minutes", type=float, help="stop after this many minutes at most")
    tf.add_argument("--width", type=int, default=32, help="channels of the first stage")
    tf.add_argument("--feature-dim", type=int, default=128)
    tf.add_argument("--canonical-only", action="store_true", help="train on canonical images only "
                                                                  "(default: also the ground-truth novel views)")
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--no-progress", action="store_true")
    tf.add_argument("--batch-size", type=int, default=64)
    tf.add_argument("--device", default="cpu")
    tf.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    tf.set_defaults(func=_train_features)

    gen = kinds.add_parser("generation", help="FID/IS/KID, depth accuracy, disparity scale, non-flatness "
                                              "of reconstructions (Stage 1) and samples (Stage 2)")
    gen.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    gen.add_argument("--stage2", help="Stage-2 run, exported folder or cached hub id (adds sample metrics)")
    gen.add_argument("--data", required=True, help="dataset whose real images are the reference")
    gen.add_argument("--n", type=int, default=1000, help="reconstructions and samples to score")
    gen.add_argument("--depth-model", help="depth model folder or cached hub id (depth accuracy, disparity scale)")
    gen.add_argument("--radius", type=float, help="novel-view disc radius (default: the run's sampling radius)")
    gen.add_argument("--nfs-far", type=float, help="far bound of the non-flatness histogram when render.far is inf")
    _weights(gen)
    _common(gen)
    gen.set_defaults(func=_generation)

    rad = kinds.add_parser("radius", help="FID and ground-truth metrics against the novel-view radius (Fig. 7)")
    rad.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    rad.add_argument("--stage2", help="Stage-2 run, exported folder or cached hub id (adds sample FID by radius)")
    rad.add_argument("--data", required=True, help="synthetic dataset (ground truth) or real images (FID only)")
    rad.add_argument("--radii", required=True, help="comma-separated radii, e.g. 0,0.1,0.2,0.3")
    rad.add_argument("--out", required=True, help="folder for radius.csv and the plots")
    rad.add_argument("--n", type=int, default=64, help="scenes reconstructed and samples drawn")
    rad.add_argument("--views", type=int, default=1, help="views per scene at each radius")
    rad.add_argument("--lpips-vgg", help="VGG16 weights for LPIPS (default: the run's loss.lpips_vgg_path)")
    rad.add_argument("--lpips-lin", help="LPIPS vgg.pth linear weights (default: the run's loss.lpips_lin_path)")
    _weights(rad)
    _common(rad)
    rad.set_defaults(func=_radius)

    rf = kinds.add_parser("refine", help="one-pass reconstructions against refined ones (vq3d reconstruct "
                                         "--refine), scored against ground truth on held-out synthetic scenes")
    rf.add_argument("--run", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    rf.add_argument("--data", required=True, help="synthetic dataset (vq3d synth); its held-out scenes are scored")
    rf.add_argument("--steps", default="0,25,100", help="comma-separated refine step counts (0 = one pass)")
    rf.add_argument("--targets", default="planes,latents", help="what is optimized: planes, latents or both")
    rf.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the refinement")
    rf.add_argument("--depth-cache", help="relative pseudo-GT disparity of the scenes (vq3d depth "
                    "--estimator-like): adds the depth loss, as a depth model would on a photo")
    rf.add_argument("--max-scenes", type=int, default=50, help="held-out scenes scored (0 = all)")
    rf.add_argument("--device", default="cpu")
    rf.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    rf.set_defaults(func=_refine)

    t3 = kinds.add_parser("table3", help="the paper's Table 3 ablations under its relative depth loss, "
                                         "trained and scored on the synthetic benchmark")
    t3.add_argument("--data", required=True, help="synthetic dataset to train on")
    t3.add_argument("--eval-data", required=True, help="synthetic dataset whose held-out scenes score the rows "
                                                        "(another seed for a fair test)")
    t3.add_argument("--steps", type=int, required=True, help="steps per row (the demo preset's schedule scaled)")
    t3.add_argument("--out", required=True, help="folder of the rows' runs, table3.md and table3.json")
    t3.add_argument("--set", dest="base", action="append", default=[], metavar="KEY=VALUE",
                    help="the full model's settings beyond the demo preset (e.g. data.depth_cache=...)")
    t3.add_argument("--features", help="domain feature net (vq3d eval train-features): the FID-like column")
    t3.add_argument("--rows", help="comma-separated subset of: full, no_gan, no_scale, no_nerf_losses, "
                                   "no_depth, no_triplanes, cnn")
    t3.add_argument("--jobs", type=int, default=1, help="rows trained at once (the cores are shared)")
    t3.add_argument("--preset", default="demo", help="the preset every row starts from")
    t3.set_defaults(func=_table3)


def _table3(args: argparse.Namespace) -> int:
    from vq3d.eval.table3 import table3

    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    table3(args.out, args.data, args.eval_data, args.steps, args.base, args.features, rows, args.jobs,
           preset=args.preset)
    print((Path(args.out) / "table3.md").read_text())
    return 0


def _stage1(args: argparse.Namespace) -> int:
    from vq3d.eval.stage1 import evaluate_stage1

    metrics = evaluate_stage1(args.run, args.data, split=args.split, max_scenes=args.max_scenes,
                              batch_size=args.batch_size, device=args.device, use_ema=not args.no_ema,
                              lpips_vgg=args.lpips_vgg, lpips_lin=args.lpips_lin,
                              panel=args.panel, panel_rows=args.panel_rows)
    if args.panel:
        print(f"panel written to {args.panel}", file=sys.stderr)
    print_result(metrics, args.json)
    return 0


def _refine(args: argparse.Namespace) -> int:
    from vq3d.eval.refine import evaluate_refine

    try:
        steps = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--steps {args.steps!r}: comma-separated integers, e.g. 0,25,100") from None
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    print_result(evaluate_refine(args.run, args.data, steps, targets, args.max_scenes, args.lr, args.depth_cache,
                                 args.device), args.json)
    return 0


def _train_features(args: argparse.Namespace) -> int:
    from vq3d.eval.train_features import train_features

    info = train_features(args.data, args.out, steps=args.steps, epochs=args.epochs, minutes=args.minutes,
                          batch_size=args.batch_size, seed=args.seed, width=args.width,
                          feature_dim=args.feature_dim, novel_views=not args.canonical_only, device=args.device,
                          progress=not args.no_progress)
    print_result({k: v for k, v in info.items() if k != "dataset"}, args.json)
    return 0


def _generation(args: argparse.Namespace) -> int:
    from vq3d.eval.generation import evaluate_generation

    metrics = evaluate_generation(
        args.stage1, args.data, stage2_run=args.stage2, n=args.n, inception=args.inception, features=args.features,
        depth_model=args.depth_model, radius=args.radius, split=args.split, cache_dir=args.cache,
        max_real=args.max_real, batch_size=args.batch_size, device=args.device, seed=args.seed,
        use_ema=not args.no_ema, nfs_far=args.nfs_far, workers=args.workers, progress=not args.no_progress)
    print_result(metrics, args.json)
    return 0


def _radius(args: argparse.Namespace) -> int:
    from vq3d.eval.radius import evaluate_radius

    metrics = evaluate_radius(
        args.stage1, args.data, args.radii, args.out, stage2_run=args.stage2, n=args.n, views=args.views,
        inception=args.inception, features=args.features, lpips_vgg=args.lpips_vgg, lpips_lin=args.lpips_lin,
        split=args.split, cache_dir=args.cache, max_real=args.max_real, batch_size=args.batch_size,
        device=args.device, seed=args.seed, use_ema=not args.no_ema, workers=args.workers,
        progress=not args.no_progress)
    print_result(metrics, args.json)
    return 0
