"""`vq3d export-run RUN --out DIR`: a training run as a hub-style model folder with a model card."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-run", help="a Stage-1 or Stage-2 run as a hub-style folder (safetensors, config, "
                                          "class index, model card) that --stage1/--stage2 and from_pretrained load")
    p.add_argument("run", help="the run folder (--out of vq3d train stage1 or stage2)")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--eval-data", help="Stage 1: a synthetic dataset whose held-out scenes score the model card's "
                                       "metrics (vq3d eval stage1)")
    p.add_argument("--max-scenes", type=int, default=200, help="held-out scenes scored with --eval-data")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vq3d.export_run import export_run

    out = export_run(args.run, args.out, args.eval_data, args.max_scenes, args.device)
    print(f"exported {args.run} to {out}: load it with --stage1/--stage2 {out} or from_pretrained({str(out)!r})",
          file=sys.stderr)
    return 0
