"""Benchmark of the synthetic dataset generator: scenes per second, with and without file I/O.

`vq3d bench synth --json` (or `python benchmarks/synth.py --json`) prints one JSON object:
`generate_scenes_per_s` (sampling + ray casting by `--workers` processes + PNG/npy files +
manifest, into a temporary folder) and, as references in the same run,
`generate_one_process_scenes_per_s` (the same in one process) and `raycast_scenes_per_s` (one
process's sampling + ray casting + uint8/float32 conversion, no files). `io_overhead_share` is
what the files cost on top of the ray casting in one process (about 0 when the writer thread
hides the file system calls behind the ray casting, slightly negative within timing noise),
`speedup_over_one_process` what the workers buy. Each is the best of `--repeats` interleaved
runs (the machine may be shared). Target: >= 100 scenes/s at 64x64 with 4 novel views.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

TARGET_SCENES_PER_S = 100.0


def _raycast_only(n: int, resolution: int, views: int, seed: int, supersample: int) -> float:
    from vq3d.data.synthetic import render_scene, sample_scene

    start = time.perf_counter()
    for index in range(n):
        render = render_scene(sample_scene(seed, index, views), resolution, supersample)
        render.to_uint8()
        render.depth.astype(np.float32)
    return time.perf_counter() - start


def _generate(n: int, resolution: int, views: int, seed: int, supersample: int, workers: int) -> float:
    from vq3d.data.synthetic import CameraSettings
    from vq3d.data.synthetic_writer import generate_dataset

    with tempfile.TemporaryDirectory(prefix="vq3d-bench-synth-") as tmp:
        start = time.perf_counter()
        generate_dataset(tmp, n, resolution, views, seed, CameraSettings(supersample=supersample),
                         progress=False, workers=workers)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench synth", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--n", type=int, default=200, help="scenes per timed run")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersample", type=int, default=1,
                        help="rays per pixel side (1: the target's setting; `vq3d synth` defaults to 2, 4x the rays)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes of the timed generation (0: one per core, as `vq3d synth`)")
    args = parser.parse_args(argv)
    from vq3d.data.synthetic_writer import default_workers

    workers = args.workers or default_workers()

    _raycast_only(2, args.res, args.views, args.seed, args.supersample)  # warm-up: imports and cached ray directions
    cast_times, one_times, gen_times = [], [], []
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits all three
        cast_times.append(_raycast_only(args.n, args.res, args.views, args.seed, args.supersample))
        one_times.append(_generate(args.n, args.res, args.views, args.seed, args.supersample, 1))
        gen_times.append(_generate(args.n, args.res, args.views, args.seed, args.supersample, workers))
    cast_s, one_s, gen_s = min(cast_times), min(one_times), min(gen_times)
    cast_rate, gen_rate = args.n / cast_s, args.n / gen_s
    result = {
        "benchmark": "synth",
        "resolution": args.res,
        "views": args.views,
        "supersample": args.supersample,
        "scenes": args.n,
        "repeats": args.repeats,
        "workers": workers,
        "generate_scenes_per_s": round(gen_rate, 1),
        "generate_one_process_scenes_per_s": round(args.n / one_s, 1),
        "speedup_over_one_process": round(one_s / gen_s, 3),
        "raycast_scenes_per_s": round(cast_rate, 1),
        "generate_over_raycast": round(gen_rate / cast_rate, 3),
        "io_overhead_share": round(1.0 - cast_s / one_s, 3),
        "raycast_rays_per_s": round(cast_rate * (1 + args.views) * (args.res * args.supersample) ** 2),
        "target_scenes_per_s": TARGET_SCENES_PER_S,
        "meets_target": gen_rate >= TARGET_SCENES_PER_S,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"generate: {gen_rate:.1f} scenes/s ({args.res}x{args.res}, {args.views} novel views, "
              f"{workers} processes; {result['speedup_over_one_process']:.2f}x one process)")
        print(f"one process, raycast only: {cast_rate:.1f} scenes/s; "
              f"I/O overhead {result['io_overhead_share']:.0%} of the time")
        verdict = "met" if result["meets_target"] else "NOT met"
        print(f"target >= {TARGET_SCENES_PER_S:.0f} scenes/s: {verdict}")
    return 0
