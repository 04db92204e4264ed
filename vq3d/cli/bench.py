"""`vq3d bench NAME [--json]`: run one of the benchmarks in `vq3d/bench/` (also `benchmarks/`)."""

from __future__ import annotations

import argparse
import importlib

# name -> module with `main(argv: list[str]) -> int`
BENCHMARKS = {
    "synth": "vq3d.bench.synth",
    "loader": "vq3d.bench.loader",
    "sample": "vq3d.bench.sample",
    "render": "vq3d.bench.render",
    "viewer": "vq3d.bench.viewer",
    "paper-step": "vq3d.bench.paper_step",
    "gpu": "vq3d.bench.gpu",
    "compile": "vq3d.bench.compile",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and memory benchmarks (JSON on stdout)")
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (e.g. --json)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHMARKS[args.name]).main(args.rest)
