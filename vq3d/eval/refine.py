"""`vq3d eval refine`: does refining a reconstruction to its photo (`vq3d.refine`) help, against
ground truth on held-out synthetic scenes?

For each scene, each refine target and each step count N (0 is the one-pass reconstruction):
psnr of the canonical render against the input, novel_view_psnr against the ground-truth novel
views (the number that must not fall: a scene fitted to one view can lose its 3D), depth
accuracy against the true depth, and where the scene sits: the object's and the background's
median rendered / true depth (medians over scenes, as `eval stage1`); copy_baseline_psnr beside
them. With `depth_cache` (e.g.
`vq3d depth --estimator-like`), the depth loss of Eq. 1-2 joins the refinement, as it would with
a depth model on a photo.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vq3d.data.loader import is_synthetic_root
from vq3d.data.synthetic_dataset import SyntheticDataset
from vq3d.errors import UserError
from vq3d.eval.metrics import depth_accuracy, object_region, psnr, region_depth_ratio
from vq3d.refine import TARGETS, Refiner, refine_scene
from vq3d.render.cameras import Cameras
from vq3d.train.runs import load_stage1


def evaluate_refine(run_dir: str | Path, data_path: str | Path, steps: list[int], targets: tuple[str, ...] = TARGETS,
                    max_scenes: int = 50, lr: float = 0.01, depth_cache: str | Path | None = None,
                    device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """{target: {N: {"psnr", "novel_view_psnr", "depth_accuracy", "seconds_per_scene"}}} plus the
    copy baseline, over the first `max_scenes` held-out scenes."""
    if not is_synthetic_root(data_path):
        raise UserError(f"{data_path} is not a synthetic dataset: `eval refine` needs ground truth (vq3d synth)")
    if not steps or min(steps) < 0:
        raise UserError(f"--steps {steps}: give step counts >= 0, e.g. 0,25,100")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise UserError(f"refine targets {sorted(unknown)} are not among {', '.join(TARGETS)}")
    model, cfg = load_stage1(run_dir, device)
    dataset = SyntheticDataset(data_path, split="test", depth_cache=depth_cache or None)
    scenes = range(min(max_scenes, len(dataset)) if max_scenes else len(dataset))
    refiner = Refiner(model, run_dir)
    sums: dict[tuple[str, int, str], float] = {}
    ratios: dict[tuple[str, int, str], list[float]] = {}
    copy_psnr, seconds = [], {t: 0.0 for t in targets}
    for i in tqdm(scenes, desc="eval refine", disable=not progress):
        item = dataset[i]
        image = item["image"][None].to(device)
        target_disparity = item["disparity"][None].to(device) if depth_cache else None
        novel_c2w, novel_images = item["novel_c2w"].to(device), item["novel_images"].to(device)
        copy_psnr.append(float(psnr(image.expand_as(novel_images), novel_images)))
        for target in targets:
            t0 = time.perf_counter()
            _, _, snapshots = refine_scene(refiner, image, max(steps), target, lr, target_disparity, progress=False,
                                           at=tuple(steps))
            seconds[target] += time.perf_counter() - t0
            for n, scene in snapshots.items():
                for name, value in _scores(model, cfg, scene, image, item, novel_c2w, novel_images).items():
                    if name in RATIOS:
                        ratios.setdefault((target, n, name), []).append(value)
                    else:
                        sums[(target, n, name)] = sums.get((target, n, name), 0.0) + value
    count = len(scenes)
    result: dict[str, Any] = {"run": str(run_dir), "data": str(data_path), "scenes": count, "lr": lr,
                              "depth_loss": bool(depth_cache), "copy_baseline_psnr": sum(copy_psnr) / count}
    for target in targets:
        result[target] = {str(n): {**{name: sums[(target, n, name)] / count for name in MEANS},
                                   **{name: float(torch.tensor(ratios[(target, n, name)]).nanmedian())
                                      for name in RATIOS}}
                          for n in sorted(steps)}
        result[target]["seconds_per_scene"] = seconds[target] / count
    return result


MEANS = ("psnr", "novel_view_psnr", "depth_accuracy")
RATIOS = ("object_depth_ratio", "background_depth_ratio")


@torch.no_grad()
def _scores(model, cfg, scene, image, item, novel_c2w, novel_images) -> dict[str, float]:
    device = image.device
    cameras = model.canonical_cameras(1, device)
    canon = model.render(scene, cameras)
    novel = [model.render(scene, Cameras(novel_c2w[k: k + 1], cfg.render.fov_deg)).rgb for k in range(len(novel_c2w))]
    true_depth = item["depth"][None].to(device)
    res = true_depth.shape[-1]
    origins, dirs = cameras.rays(res, res)
    region = object_region(true_depth, origins, dirs, item["object_center"][None].to(device),
                           torch.tensor([float(item["object_radius"])], device=device))
    return {"psnr": float(psnr(canon.rgb, image)),
            "novel_view_psnr": float(psnr(torch.cat(novel), novel_images)),  # the mean of per-view PSNRs
            "depth_accuracy": float(depth_accuracy(canon.depth, true_depth)),
            "object_depth_ratio": float(region_depth_ratio(canon.depth, true_depth, region)[0]),
            "background_depth_ratio": float(region_depth_ratio(canon.depth, true_depth, ~region)[0])}
