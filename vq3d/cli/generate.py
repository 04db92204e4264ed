"""`vq3d generate --stage1 RUN --stage2 RUN2 [--class K|NAME] -n N --out DIR`: new 3D scenes."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample new 3D scenes with Stage 2 and render them")
    p.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    p.add_argument("--stage2", required=True, help="Stage-2 run, exported folder or cached hub id")
    p.add_argument("--class", dest="class_label", help="class id or name (default: a random class each)")
    p.add_argument("-n", type=int, default=8, help="number of scenes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--radius", type=float, help="novel-view radius (default: the training sampling radius)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--frames", type=int, default=48, help="orbit video frames (0 = no video)")
    p.add_argument("--views", type=int, default=4, help="novel views per scene")
    p.add_argument("--res", type=int, help="render resolution (default: the training resolution)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vq3d.generate import generate

    records = generate(args.stage1, args.stage2, args.out, args.n, class_label=args.class_label,
                       radius=args.radius, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, guidance=args.guidance, n_frames=args.frames, n_views=args.views,
                       resolution=args.res, device=args.device, batch_size=args.batch_size)
    print(json.dumps({"written": len(records), "out": args.out}), file=sys.stderr)
    return 0
