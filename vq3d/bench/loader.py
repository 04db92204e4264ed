"""Loader throughput against a plain PIL loop, and depth-cache throughput (`vq3d bench loader`).

Data: `--n` (200) random-ish JPEGs (smooth colour fields plus fine noise, quality 90) of
varied sizes between 400x300 and 600x500, written to a temporary folder (in the page cache
for every contestant).

Contestants, each producing float32 (3, R, R) images in [-1, 1] at R = `--res` (256):
  plain:  one process: Image.open -> convert("RGB") -> resize shorter side (bicubic) -> centre
          crop -> float tensor; the straightforward loop.
  ours:   build_dataset + build_loader on CPU (ImageDataset, DataLoader with `--workers`
          workers, JPEG draft decoding, one antialiased resize of the centre square in
          torch's uint8 kernel, float conversion in the workers). The first pass, which
          includes starting the workers, is reported separately.
  ours_uint8_workers: the same with uint8 images from the workers converted to float in the
          main process (what build_loader does for a GPU device).
The contestants run in `--rounds` interleaved rounds and each one's best round counts (other
processes on a shared machine slow whichever runs at the time).
`speedup` = ours images/s / plain images/s (target >= 1.8 with 2 workers on 2 cores).

Depth: a tiny random DPT (saved to the temporary folder) fills a depth cache for the same
images at `--depth-res`; images/s excludes model loading and one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vq3d.utils.optional import require


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of sizes 400..600 x 300..500 with smooth structure and fine noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = int(rng.integers(400, 601)), int(rng.integers(300, 501))
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
        noise = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
        pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def plain_load(path: Path, res: int) -> torch.Tensor:
    """The reference: (3, res, res) float32 in [-1, 1] the obvious way."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = res / min(w, h)
    img = img.resize((max(res, round(w * scale)), max(res, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - res) // 2, (h - res) // 2
    img = img.crop((left, top, left + res, top + res))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0


def time_plain(paths: list[Path], res: int) -> float:
    """Images per second of one pass of the plain loop."""
    start = time.perf_counter()
    for path in paths:
        plain_load(path, res)
    return len(paths) / (time.perf_counter() - start)


def make_loader(folder: Path, res: int, workers: int, batch_size: int,
                uint8_from_workers: bool = False):
    from vq3d.config import DataConfig
    from vq3d.data.loader import build_dataset, build_loader

    data = DataConfig(path=str(folder), kind="flat", resolution=res)
    dataset = build_dataset(data, "train", train=False)
    loader = build_loader(dataset, batch_size, num_workers=workers, shuffle=False, drop_last=False)
    if uint8_from_workers:  # what build_loader does for a GPU device
        loader.dataset.emit_uint8 = True
    return loader


def time_loader(loader) -> float:
    """Images per second of one pass over the loader (float32 batches in the main process)."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        assert batch["image"].dtype == torch.float32
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def time_depth(folder: Path, tmp: Path, res: int, workers: int) -> dict:
    transformers = require("transformers", "transformers", "the depth-estimation benchmark")
    DPTConfig, DPTForDepthEstimation = transformers.DPTConfig, transformers.DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    from vq3d.data.depth_compute import compute_depth_cache
    from vq3d.data.depth_model import DepthEstimator

    model_dir = tmp / "tiny-dpt"
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, image_size=64, patch_size=8,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 16, 16],
                       fusion_hidden_size=16, head_hidden_size=16,
                       reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(model_dir)
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(model_dir)
    estimator = DepthEstimator(str(model_dir), device="cpu")
    estimator.predict_disparity(torch.zeros((16, 64, 64, 3), dtype=torch.uint8), res)  # warm-up
    report = compute_depth_cache(str(folder), tmp / "cache", resolution=res, batch_size=16,
                                 num_workers=workers, progress=False, estimator=estimator)
    resume = compute_depth_cache(str(folder), tmp / "cache", resolution=res, progress=False,
                                 num_workers=workers, estimator=estimator)
    return {"model": "tiny random DPT (4 layers, width 32, input 64x64)", "res": res,
            "images": report.computed, "images_per_s": round(report.images_per_second, 1),
            "resume_computed": resume.computed, "resume_seconds": round(resume.seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench loader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--n", type=int, default=200, help="number of JPEGs")
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--depth-res", type=int, default=64)
    parser.add_argument("--no-depth", action="store_true", help="skip the depth-cache timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="vq3d-bench-loader-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "jpegs"
        folder.mkdir()
        paths = make_jpegs(folder, args.n)
        time_plain(paths[:10], args.res)  # warm-up
        ours_loader = make_loader(folder, args.res, args.workers, args.batch_size)
        uint8_loader = make_loader(folder, args.res, args.workers, args.batch_size, True)
        first = time_loader(ours_loader)  # includes starting the workers
        time_loader(uint8_loader)
        # Interleaved rounds, best of each: other processes on a shared machine slow down
        # whichever contestant runs at the time; the best round is the least disturbed.
        rounds: dict[str, list[float]] = {"plain": [], "ours": [], "uint8": []}
        for _ in range(args.rounds):
            rounds["plain"].append(time_plain(paths, args.res))
            rounds["ours"].append(time_loader(ours_loader))
            rounds["uint8"].append(time_loader(uint8_loader))
        del ours_loader, uint8_loader
        plain, steady, steady_uint8 = (max(rounds[k]) for k in ("plain", "ours", "uint8"))
        result = {
            "benchmark": "loader",
            "images": args.n, "res": args.res, "workers": args.workers,
            "batch_size": args.batch_size, "rounds": args.rounds,
            "plain_images_per_s": round(plain, 1),
            "ours_images_per_s": round(steady, 1),
            "ours_first_pass_images_per_s": round(first, 1),
            "ours_uint8_workers_images_per_s": round(steady_uint8, 1),
            "speedup": round(steady / plain, 2),
            "speedup_per_round": [round(o / p, 2) for o, p in zip(rounds["ours"], rounds["plain"])],
            "target_speedup": 1.8,
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
        }
        if not args.no_depth:
            result["depth_cache"] = time_depth(folder, tmp, args.depth_res, args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0
