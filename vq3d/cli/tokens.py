"""`vq3d tokens --stage1 RUN --data DIR --out TOK`: encode a dataset into Stage-1 token ids."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokens", help="encode a dataset with the Stage-1 encoder (for Stage 2)")
    p.add_argument("--stage1", required=True, help="Stage-1 run, exported folder (vq3d export-run) or cached hub id")
    p.add_argument("--data", required=True, help="dataset folder or file list")
    p.add_argument("--out", required=True, help="token folder (ids.npy, labels.npy, tokens.json)")
    p.add_argument("--split", default="train", help="dataset split to encode (default: train)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--hflip", action="store_true",
                   help="also encode every image mirrored left-right (twice the Stage-2 training sequences)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vq3d.data.tokens import extract_tokens

    info = extract_tokens(args.stage1, args.data, args.out, split=args.split, batch_size=args.batch_size,
                          device=args.device, num_workers=args.workers, hflip=args.hflip)
    print(json.dumps({k: info[k] for k in ("count", "seq_len", "codebook_size", "num_classes")}), file=sys.stderr)
    return 0
