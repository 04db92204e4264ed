"""`vq3d eval stage1`: Stage-1 quality on held-out synthetic scenes against ground truth.

Reported (one JSON object):
- psnr, ssim, lpips: canonical reconstruction vs the input image (PSNR in dB; LPIPS when its
  weights are configured, else listed under "skipped" with the reason);
- depth_accuracy: the paper's metric (rendered depth vs ground-truth depth, each normalized to
  zero mean and unit variance per image, then MSE);
- novel_view_psnr, novel_view_ssim, novel_view_lpips: renders at the dataset's novel cameras vs
  their ground-truth images;
- copy_baseline_psnr: the input image itself scored against the same novel views (what a model
  without 3D would get);
- warp_baseline_psnr: the input image warped to each novel view by the ground-truth depth (what
  exact geometry without inpainting would get; `vq3d.eval.warp`);
- disparity_scale: mean s* of Eq. 1 against the per-image normalized ground-truth disparity;
- object_depth_ratio / background_depth_ratio: the median over scenes of each scene's median
  rendered / true depth over the object's pixels (its true surface point in the object's
  bounding ball) and over the other pixels (room): 1 is the true distance;
- codebook_usage: fraction of codes used over the evaluated scenes.

With `panel`, a picture of the first scenes against their ground truth is written as well
(`vq3d.eval.panel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.eval.metrics import depth_accuracy, object_region, psnr, region_depth_ratio, ssim
from vq3d.eval.warp import warp_to_view
from vq3d.losses.depth_target import disparity_scale, true_target_disparity
from vq3d.render.cameras import Cameras
from vq3d.train.runs import load_stage1


@torch.no_grad()
def evaluate_stage1(run_dir: str | Path, data_path: str | Path, split: str = "test", max_scenes: int = 0,
                    batch_size: int = 16, device: str = "cpu", use_ema: bool = True,
                    lpips_vgg: str | None = None, lpips_lin: str | None = None,
                    panel: str | Path | None = None, panel_rows: int = 6) -> dict[str, Any]:
    """Metrics of the run's Stage-1 model on a synthetic dataset's `split` (test, train or all; see
    the module docstring).

    LPIPS weights: `lpips_vgg` / `lpips_lin`, else the run's loss.lpips_vgg_path / lpips_lin_path.
    `panel`: also write a PNG of the first `panel_rows` scenes (input, reconstruction, depth and
    two novel views against the truth).
    """
    from vq3d.data.loader import is_synthetic_root
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.eval.common import load_lpips
    from vq3d.eval.panel import PanelRows

    if panel is not None and panel_rows < 1:
        raise UserError(f"--panel-rows {panel_rows}: need at least one row")

    if not is_synthetic_root(data_path):
        raise UserError(f"{data_path} is not a synthetic dataset: `eval stage1` needs ground-truth "
                        "depth and novel views (make one with `vq3d synth`)")
    model, cfg = load_stage1(run_dir, device, use_ema=use_ema)
    dataset = SyntheticDataset(data_path, split=None if split == "all" else split)
    if len(dataset) == 0:
        raise UserError(f"the '{split}' split of {data_path} is empty")
    if max_scenes:
        dataset = torch.utils.data.Subset(dataset, range(min(max_scenes, len(dataset))))
    res = model.resolution
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    used = torch.zeros(cfg.model.codebook_size, dtype=torch.bool)
    lpips, lpips_reason = load_lpips(lpips_vgg, lpips_lin, cfg)
    skipped = {} if lpips is not None else {"lpips": lpips_reason, "novel_view_lpips": lpips_reason}
    if res < 11:
        reason = f"SSIM's 11x11 window needs images of at least 11 px (these are {res})"
        skipped.update({"ssim": reason, "novel_view_ssim": reason})
    lpips = lpips.to(device) if lpips is not None else None
    rows = PanelRows(panel_rows) if panel is not None else None

    ratios: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.double().sum())
        counts[name] = counts.get(name, 0) + values.numel()

    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="eval stage1", leave=False):
        images = batch["image"].to(device)
        if images.shape[-1] != res:
            raise UserError(f"the dataset is {images.shape[-1]}px but the model was trained at {res}px")
        quant = model.quantize(images)
        used[quant.ids.flatten().cpu()] = True
        scene = model.decode_codes(quant.codes)
        canon = model.render(scene, model.canonical_cameras(images.shape[0], device))
        add("psnr", psnr(canon.rgb, images, reduction="none"))
        if res >= 11:
            add("ssim", ssim(canon.rgb, images, reduction="none"))
        if lpips is not None:
            add("lpips", lpips(canon.rgb, images))
        gt_depth = batch["depth"].to(device)
        add("depth_accuracy", depth_accuracy(canon.depth, gt_depth, reduction="none"))
        add("disparity_scale", disparity_scale(canon, true_target_disparity(gt_depth, canon, cfg.loss), cfg.loss,
                                               cfg.render))
        origins, dirs = model.canonical_cameras(images.shape[0], device).rays(res, res)
        region = object_region(gt_depth, origins, dirs, batch["object_center"].to(device),
                               batch["object_radius"].to(device))
        for name, pixels in (("object_depth_ratio", region), ("background_depth_ratio", ~region)):
            ratios.setdefault(name, []).append(region_depth_ratio(canon.depth, gt_depth, pixels).cpu())
        novel_images, novel_c2w = batch["novel_images"].to(device), batch["novel_c2w"].to(device)
        shown = [] if rows is not None and not rows.full else None  # novel renders for the panel
        for k in range(novel_images.shape[1]):
            novel = model.render(scene, Cameras(novel_c2w[:, k], cfg.render.fov_deg))
            if shown is not None and k < rows.novel_views:
                shown.append(novel)
            add("novel_view_psnr", psnr(novel.rgb, novel_images[:, k], reduction="none"))
            if res >= 11:
                add("novel_view_ssim", ssim(novel.rgb, novel_images[:, k], reduction="none"))
            if lpips is not None:
                add("novel_view_lpips", lpips(novel.rgb, novel_images[:, k]))
            add("copy_baseline_psnr", psnr(images, novel_images[:, k], reduction="none"))
            warped = warp_to_view(images, batch["c2w"].to(device), novel_c2w[:, k],
                                  batch["novel_depths"][:, k].to(device), cfg.render.fov_deg)
            add("warp_baseline_psnr", psnr(warped, novel_images[:, k], reduction="none"))
            add("novel_depth_accuracy",
                depth_accuracy(novel.depth, batch["novel_depths"][:, k].to(device), reduction="none"))
        if shown is not None:
            rows.add(images, canon.rgb, canon.depth, gt_depth, novel_images,
                     [n.rgb for n in shown], [n.depth for n in shown])
    if rows is not None:
        rows.save(panel)
    metrics = {name: sums[name] / counts[name] for name in sums if counts[name]}
    for name, parts in ratios.items():  # medians over scenes (a few far-off scenes skew a mean)
        metrics[name] = float(torch.cat(parts).nanmedian())
    metrics["codebook_usage"] = float(used.float().mean())
    metrics["scenes"] = len(dataset)
    metrics["skipped"] = skipped
    return metrics
