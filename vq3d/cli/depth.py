"""`vq3d depth`: pseudo-GT disparity for a dataset with a monocular depth model (resumable)."""

from __future__ import annotations

import argparse
import os

from vq3d.errors import UserError


def _part(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must look like K/N, not {text!r}") from None
    return index, count


def register(sub: argparse._SubParsersAction) -> None:
    from vq3d.data.depth_cache import DEFAULT_DEPTH_MODEL

    p = sub.add_parser(
        "depth", help="cache pseudo-GT depth (disparity) for a dataset",
        description="Run a monocular depth model (transformers AutoModelForDepthEstimation) over "
                    "a dataset and store each image's disparity, normalized to [0,1], at the "
                    "training resolution and crop. Resumable: cached images are skipped; changed "
                    "images are recomputed. Nothing is downloaded without --allow-download.")
    p.add_argument("--data", required=True,
                   help="image folder, file list or WebDataset shards: the folder training reads "
                        "(e.g. imagenet/train; cache keys are paths relative to it)")
    p.add_argument("--out", required=True, help="cache folder (set data.depth_cache to it)")
    p.add_argument("--model", default=DEFAULT_DEPTH_MODEL,
                   help=f"hub name or local folder (default {DEFAULT_DEPTH_MODEL}, the paper's DPT)")
    p.add_argument("--res", type=int, default=256, help="training resolution (default 256)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on GPU, fp32 on CPU")
    p.add_argument("--allow-download", action="store_true",
                   help="let transformers download the model (default: local files only)")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "flat", "filelist",
                                                      "webdataset"])
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding workers (default: CPU cores, at most 8)")
    p.add_argument("--part", type=_part, default=(0, 1), metavar="K/N",
                   help="process part K of N (one process per GPU)")
    p.add_argument("--write-shards", default=None, metavar="DIR",
                   help="WebDataset input: also write shards with KEY.disp.png members to DIR")
    p.add_argument("--prune", action="store_true",
                   help="delete cache entries of images that changed or no longer exist")
    p.add_argument("--model-output", default="auto", choices=["auto", "disparity", "depth"],
                   help="what the model predicts (auto: depth for metric models)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group(
        "estimator-like maps of a synthetic dataset (no model: its true camera-axis disparity, normalized per "
        "image, a random affine map, a random monotone gamma, blurred and noised, seeded per scene)")
    g.add_argument("--estimator-like", action="store_true", help="write them (--data: a `vq3d synth` folder)")
    g.add_argument("--gamma", type=float, default=1.5, help="exponent drawn in [1/g, g] per image (1: none)")
    g.add_argument("--blur", type=float, default=0.02, help="Gaussian sigma, a fraction of the side (0: none)")
    g.add_argument("--noise", type=float, default=0.02, help="std of the additive noise (0: none)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scale", type=float, default=2.0, help="affine scale drawn in [1/s, s] per image (1: none)")
    g.add_argument("--shift", type=float, default=0.5, help="affine shift drawn in [0, s] per image (0: none)")
    g.add_argument("--axis", default="camera", choices=["camera", "ray"],
                   help="inverse depth along the camera axis (1/z, as estimators give) or the ray (1/t)")
    p.set_defaults(func=_depth)


def _depth(args: argparse.Namespace) -> int:
    from vq3d.data.depth_compute import compute_depth_cache

    if args.estimator_like:
        from vq3d.data.loader import is_synthetic_root
        from vq3d.data.pseudo_depth import Corruption, write_estimator_cache

        if not is_synthetic_root(args.data):
            raise UserError(f"--estimator-like needs a synthetic dataset (`vq3d synth`); {args.data} is not one")
        corruption = Corruption(args.gamma, args.blur, args.noise, args.seed, args.scale, args.shift, args.axis)
        written, kept = write_estimator_cache(args.data, args.out, corruption, progress=not args.no_progress)
        print(f"depth cache {args.out}: {written} written, {kept} already there ({corruption.name})")
        return 0

    report = compute_depth_cache(
        args.data, args.out, model=args.model, resolution=args.res, batch_size=args.batch_size,
        device=args.device, allow_download=args.allow_download, kind=args.kind,
        num_workers=args.workers, part=args.part, write_shards=args.write_shards,
        prune=args.prune, progress=not args.no_progress, precision=args.precision,
        model_output=args.model_output)
    print(f"depth cache {args.out}: {report.computed} computed, {report.already_cached} "
          f"{report.unit} already cached, {len(report.bad) + report.known_bad} unusable, "
          f"{report.pruned} stale removed "
          f"({report.seconds:.1f} s, {report.images_per_second:.1f} img/s)")
    for key, reason in report.bad.items():
        print(f"  unusable: {key}: {reason}")
    if report.total and report.computed + report.already_cached == 0:
        raise UserError(f"no usable images in {args.data}: run `vq3d data check {args.data}`")
    return 0
