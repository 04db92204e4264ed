"""`vq3d eval ...`: evaluation runners; one JSON object on stdout, a human table on stderr."""

from __future__ import annotations

import argparse
import json
import sys


def print_result(metrics: dict, as_json: bool) -> None:
    """JSON on stdout (when asked) and an aligned table on stderr."""
    if as_json:
        print(json.dumps(metrics, indent=None, sort_keys=True))
    width = max((len(k) for k in metrics), default=0)
    for k, v in metrics.items():
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}}  {text}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate trained models (metrics as JSON)")
    kinds = p.add_subparsers(dest="kind", metavar="WHAT", required=True)
    s1 = kinds.add_parser("stage1", help="Stage 1 on held-out synthetic scenes vs ground truth")
    s1.add_argument("--run", required=True, help="Stage-1 run folder")
    s1.add_argument("--data", required=True, help="synthetic dataset folder (vq3d synth)")
    s1.add_argument("--split", default="test", help="test (held-out scenes), train or all")
    s1.add_argument("--max-scenes", type=int, default=0, help="evaluate at most this many scenes (0 = all)")
    s1.add_argument("--batch-size", type=int, default=16)
    s1.add_argument("--device", default="cpu")
    s1.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    s1.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s1.set_defaults(func=_stage1)


def _stage1(args: argparse.Namespace) -> int:
    from vq3d.eval.stage1 import evaluate_stage1

    metrics = evaluate_stage1(args.run, args.data, split=args.split, max_scenes=args.max_scenes,
                              batch_size=args.batch_size, device=args.device, use_ema=not args.no_ema)
    print_result(metrics, args.json)
    return 0
