"""`vq3d reconstruct --stage1 RUN IMAGE_OR_FOLDER... --out DIR`: photos to NeRFs in one pass."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="turn photos into NeRFs (views, depth, video, point cloud, PLY/OBJ/GLB mesh)")
    p.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    p.add_argument("inputs", nargs="+", help="image files or folders (JPEG, PNG, WebP, any size or mode)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--radius", type=float, help="novel-view radius (default: the training sampling radius)")
    p.add_argument("--frames", type=int, default=48, help="orbit video frames (0 = no video)")
    p.add_argument("--views", type=int, default=4, help="novel views per image")
    p.add_argument("--mesh-res", type=int, default=64, help="marching-cubes grid size (per axis, over [-1, 1]^3)")
    p.add_argument("--mesh-level", type=float, help="marching-cubes density threshold (default: halfway between "
                   "the field's median and its 99th percentile)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="then optimize each scene against its photo for N steps, MLPs frozen (0 = one pass only)")
    p.add_argument("--refine-target", choices=("planes", "latents"), default="planes",
                   help="what --refine optimizes: the decoded triplanes or the decoder's continuous input")
    p.add_argument("--refine-lr", type=float, default=0.01, help="Adam learning rate of --refine")
    p.add_argument("--depth-model", help="with --refine: a depth model (local folder or cached hub id) whose "
                   "relative disparity adds the depth loss of Eq. 1-2")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vq3d.reconstruct import reconstruct

    summary = reconstruct(args.stage1, args.inputs, args.out, radius=args.radius, n_frames=args.frames,
                          n_views=args.views, mesh_resolution=args.mesh_res, batch_size=args.batch_size,
                          device=args.device, mesh_level=args.mesh_level,
                          refine_steps=args.refine, refine_target=args.refine_target, refine_lr=args.refine_lr,
                          depth_model=args.depth_model)
    print(json.dumps({"written": len(summary["images"]), "skipped": len(summary["skipped"])}), file=sys.stderr)
    return 0
