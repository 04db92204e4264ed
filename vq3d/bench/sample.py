"""Stage-2 sampling throughput with and without the KV cache (`vq3d bench sample --json`).

Two settings, each sampled twice with the same model, batch, seed and sequence length:
  demo: the demo preset's GPT over (32/4)^2 = 64 image tokens of its model.codebook_groups ids
        each, at the positions its stage2.group_ids gives them (vocabulary: demo codebook);
  long: 1024 image tokens (the paper's 32x32 grid) with a small GPT (4 layers, width 256).
"With cache" decodes one position per step from the KV cache; "without cache" recomputes the
full forward over the growing prefix every step (only the last position's head is evaluated).
Every run is complete (nothing is extrapolated; short runs are repeated for at least 1 s and
averaged) and both modes must sample identical ids.
`speedup` = cached tokens/s / uncached tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vq3d.config import Stage2Config, demo
from vq3d.models.gpt import GPT, gpt_param_count
from vq3d.models.sampling import sample
from vq3d.train.stage2 import ids_per_position

NUM_CLASSES = 10  # class-conditional, as for ImageNet-like data


def _settings(long_tokens: int) -> dict[str, tuple[int, int, Stage2Config, int]]:
    """name -> (vocab_size, seq_len in ids, Stage2Config, ids a stream position)."""
    d = demo()
    grid = d.data.resolution // d.model.patch_size
    info = {"seq_len": grid**2 * d.model.codebook_groups, "grid": grid}
    small = Stage2Config(layers=4, width=256, heads=4)
    return {
        "demo": (d.model.codebook_size, info["seq_len"], d.stage2, ids_per_position(d, info)),
        "long": (8192, long_tokens, small, 1),
    }


def _time_sampling(
    model: GPT, batch: int, use_cache: bool, seed: int, min_seconds: float = 1.0
) -> tuple[float, int, torch.Tensor]:
    """Mean seconds per complete sampling run (repeated until min_seconds pass), runs, ids."""
    labels = torch.arange(batch) % NUM_CLASSES
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        ids = sample(model, batch, labels, temperature=1.0, seed=seed, use_cache=use_cache)
        ids.cpu()  # waits for a GPU to finish the run
        runs += 1
    return (time.perf_counter() - start) / runs, runs, ids


def run_setting(vocab: int, seq_len: int, cfg: Stage2Config, batch: int, seed: int = 0,
                device: str = "cpu", uncached: bool = True, ids_per_token: int = 1) -> dict:
    """Tokens (ids) per second of sampling with the KV cache (and without it, when `uncached`)."""
    torch.manual_seed(seed)
    model = GPT(vocab, seq_len, NUM_CLASSES, cfg, ids_per_token).eval().to(device)
    _time_sampling(model, batch, True, seed, min_seconds=0.0)  # warm-up (allocator, kernels)
    cached_s, cached_runs, cached_ids = _time_sampling(model, batch, True, seed)
    tokens = batch * seq_len
    if not uncached:
        return {"seq_len": seq_len, "ids_per_token": ids_per_token, "vocab_size": vocab, "layers": cfg.layers,
                "width": cfg.width, "params": gpt_param_count(model), "batch": batch,
                "cached_seconds": round(cached_s, 4), "cached_runs": cached_runs,
                "cached_tokens_per_s": round(tokens / cached_s, 1)}
    uncached_s, uncached_runs, uncached_ids = _time_sampling(model, batch, False, seed)
    return {
        "seq_len": seq_len,
        "ids_per_token": ids_per_token,
        "vocab_size": vocab,
        "layers": cfg.layers,
        "width": cfg.width,
        "heads": cfg.heads,
        "params": gpt_param_count(model),
        "batch": batch,
        "cached_seconds": round(cached_s, 4),  # per complete run (mean over *_runs runs)
        "uncached_seconds": round(uncached_s, 4),
        "cached_runs": cached_runs,
        "uncached_runs": uncached_runs,
        "cached_tokens_per_s": round(tokens / cached_s, 1),
        "uncached_tokens_per_s": round(tokens / uncached_s, 1),
        "speedup": round(uncached_s / cached_s, 2),
        "identical_samples": bool(torch.equal(cached_ids, uncached_ids)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vq3d bench sample", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch", type=int, default=1, help="samples per run (both settings)")
    parser.add_argument("--long-tokens", type=int, default=1024, help="sequence length of 'long'")
    parser.add_argument("--only", choices=["demo", "long"], help="run one setting")
    # one thread by default: small per-step ops crawl when threads oversubscribe shared cores
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {
        "benchmark": "sample",
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "settings": {},
    }
    for name, (vocab, seq_len, cfg, ids_per_token) in _settings(args.long_tokens).items():
        if args.only and name != args.only:
            continue
        results["settings"][name] = run_setting(vocab, seq_len, cfg, args.batch, ids_per_token=ids_per_token)
    if "long" in results["settings"]:
        results["speedup"] = results["settings"]["long"]["speedup"]  # the headline: 1024 tokens

    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results["settings"].items():
            print(f"{name}: {r['seq_len']} tokens, batch {r['batch']}: "
                  f"cached {r['cached_tokens_per_s']} tok/s, uncached {r['uncached_tokens_per_s']} tok/s, "
                  f"speedup {r['speedup']}x, "
                  f"identical samples: {r['identical_samples']}")
    return 0
