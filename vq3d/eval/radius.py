"""`vq3d eval radius`: metrics against the novel-view radius (the paper's Figure 7, and more).

For each radius r, every evaluated scene is rendered from cameras at *exactly* distance r from
the canonical position in the tangent disc (angles fixed per scene, so only r changes):

- Stage 1: up to `n` held-out images are reconstructed; on the synthetic dataset the renders are
  compared with the ground truth at the same cameras, re-rendered exactly from the stored scene
  (`synthetic_gt.py`): `gt_psnr`, `gt_ssim`, `gt_lpips` (when LPIPS weights are configured),
  `gt_depth_accuracy` (rendered vs ground-truth depth, as `eval stage1`) and `gt_copy_psnr` (the input image
  itself against the view at r: what a model without 3D scores). FD-domain / FID of the renders
  against the real images' reference statistics: `s1_fd_domain`, `s1_fid`.
- Stage 2 (with a Stage-2 run): `n` samples rendered at r: `s2_fd_domain`, `s2_fid` (Figure 7).

Writes OUT/radius.csv (one row per radius) and one PNG plot per metric family
(OUT/<family>_vs_radius.png), all atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.eval.common import (
    Means,
    balanced_labels,
    distribution_metrics,
    distribution_names,
    eval_dataset,
    load_lpips,
    load_stage2_for,
    sample_scenes,
)
from vq3d.eval.extractors import FeatureSet, load_extractors
from vq3d.eval.metrics import depth_accuracy, psnr, ssim
from vq3d.eval.plot import line_plot
from vq3d.eval.real_stats import default_cache_dir, iter_image_batches, reference_statistics
from vq3d.render.cameras import disc_offsets_to_cameras
from vq3d.train.runs import load_stage1
from vq3d.utils.io import atomic_write_text

# metric families plotted together: file stem -> (title, y label, metric names)
PLOTS = {
    "fid": ("FID (Inception) vs sampling radius", "FID", ["s1_fid", "s2_fid"]),
    "fd_domain": ("FD-domain vs sampling radius", "FD-domain", ["s1_fd_domain", "s2_fd_domain"]),
    "psnr": ("Novel-view PSNR vs ground truth", "PSNR (dB)", ["gt_psnr", "gt_copy_psnr"]),
    "ssim_lpips": ("Novel-view SSIM / LPIPS vs ground truth", "SSIM, LPIPS", ["gt_ssim", "gt_lpips"]),
    "depth": ("Depth accuracy vs ground truth (lower is better)", "depth accuracy", ["gt_depth_accuracy"]),
}
LEGEND = {
    "s1_fid": "Stage 1 (reconstructions)", "s2_fid": "Stage 2 (samples)",
    "s1_fd_domain": "Stage 1 (reconstructions)", "s2_fd_domain": "Stage 2 (samples)",
    "gt_psnr": "reconstruction", "gt_copy_psnr": "input image copied (no 3D)",
    "gt_ssim": "SSIM (higher is better)", "gt_lpips": "LPIPS (lower is better)",
    "gt_depth_accuracy": "reconstruction (rendered vs ground-truth depth)",
}


def parse_radii(text: str | list[float]) -> list[float]:
    """'0,0.1,0.2' -> [0.0, 0.1, 0.2]; UserError unless a non-empty list of distinct numbers >= 0."""
    if isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        try:
            values = [float(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--radii {text!r}: give comma-separated numbers, e.g. --radii 0,0.1,0.2,0.3") from None
    if not values:
        raise UserError("--radii is empty: give comma-separated numbers, e.g. --radii 0,0.1,0.2,0.3")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--radii {text!r}: every radius must be a finite number >= 0")
    if len(set(values)) != len(values):
        raise UserError(f"--radii {text!r}: a radius is repeated")
    return values


def _angles(count: int, views: int, seed: int) -> torch.Tensor:
    """Fixed view angles (count, views) in [0, 2 pi) for scene/sample k, view j."""
    return torch.rand(count, views, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * math.pi


def _cameras_at(angles: torch.Tensor, radius: float, cfg: Any, device: str):
    """Cameras (B*V) at exactly `radius` for angles (B, V), scene-major."""
    theta = angles.flatten()
    offsets = (radius * torch.stack([theta.cos(), theta.sin()], dim=-1)).float()
    return disc_offsets_to_cameras(offsets, cfg.render.camera_distance, cfg.render.fov_deg).to(device)


def _repeat(scene: Any, views: int) -> Any:
    """A decoded scene batch with each scene repeated `views` times (triplanes only)."""
    if views == 1:
        return scene
    if not torch.is_tensor(scene):
        raise UserError("--views > 1 needs a triplane model; use --views 1 for the implicit ablation")
    return scene.repeat_interleave(views, dim=0)


@torch.no_grad()
def evaluate_radius(stage1_run: str | Path, data_path: str | Path, radii: str | list[float], out_dir: str | Path, *,
                    stage2_run: str | Path | None = None, n: int = 64, views: int = 1,
                    inception: str | Path | None = None, features: str | Path | None = None,
                    lpips_vgg: str | None = None, lpips_lin: str | None = None, split: str = "test",
                    cache_dir: str | Path | None = None, max_real: int = 0, batch_size: int = 16,
                    device: str = "cpu", seed: int = 0, use_ema: bool = True,
                    workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Metrics against radius (module docstring); writes the CSV and plots into `out_dir`.

    Returns {"radii", "rows" (one dict per radius), "csv", "plots", "skipped", counts}.
    """
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.eval.synthetic_gt import GroundTruth

    radii = parse_radii(radii)
    if n < 1 or views < 1:
        raise UserError(f"--n {n} and --views {views} must be positive")
    model, cfg = load_stage1(stage1_run, device, use_ema=use_ema)
    gpt = cfg2 = meta = None
    if stage2_run:
        gpt, cfg2, meta = load_stage2_for(stage1_run, stage2_run, model, device)
    dataset = eval_dataset(cfg, data_path, split)
    synthetic = isinstance(dataset, SyntheticDataset)
    extractors, missing = load_extractors(inception, features, device)
    skipped: dict[str, str] = {}
    stages = ("s1", "s2") if stage2_run else ("s1",)
    for name, reason in missing.items():
        for stage in stages:
            skipped.update(dict.fromkeys(distribution_names(stage, "", name), reason))
    lpips, lpips_reason = load_lpips(lpips_vgg, lpips_lin, cfg) if synthetic else (None, None)
    if not synthetic:
        reason = f"{data_path} is not a synthetic dataset: no ground truth at novel cameras"
        skipped.update(dict.fromkeys(["gt_psnr", "gt_ssim", "gt_lpips", "gt_depth_accuracy", "gt_copy_psnr"],
                                     reason))
        if not extractors:
            raise UserError(f"nothing to measure on {data_path}: ground-truth metrics need a synthetic dataset and "
                            "FID needs --inception or --features")
    elif lpips is None:
        skipped["gt_lpips"] = lpips_reason
    else:
        lpips = lpips.to(device)
    if synthetic and model.resolution < 11:
        skipped["gt_ssim"] = f"SSIM's 11x11 window needs images of at least 11 px (these are {model.resolution})"
    references = {}
    if extractors:
        cache = Path(cache_dir) if cache_dir else default_cache_dir(data_path, stage1_run)
        references = reference_statistics(extractors, dataset, split, cache, max_real, batch_size, progress,
                                          workers)

    means = {r: Means() for r in radii}
    sets = {(stage, r, name): FeatureSet() for stage in stages for r in radii for name in extractors}
    truth = GroundTruth(dataset) if synthetic else None
    total = min(n, len(dataset)) if hasattr(dataset, "__len__") else n
    angles = _angles(total, views, seed)
    position, s1_count = 0, 0
    for batch in tqdm(iter_image_batches(dataset, batch_size, n, workers), desc="radius: stage 1",
                      total=-(-total // batch_size), disable=not progress, leave=False):
        images = batch["image"].to(device)
        b = images.shape[0]
        scene = _repeat(model.decode_codes(model.quantize(images).codes), views)
        for r in radii:
            out = model.render(scene, _cameras_at(angles[position: position + b], r, cfg, device))
            for name, extractor in extractors.items():
                sets["s1", r, name].add(*extractor(out.rgb))
            if truth is not None:
                gt = [truth.render(position + i, _cameras_at(angles[position + i: position + i + 1], r, cfg, "cpu").c2w)
                      for i in range(b)]
                gt_images = torch.cat([g[0] for g in gt]).to(device)  # (b*V, 3, R, R)
                gt_depth = torch.cat([g[1] for g in gt]).to(device)
                m = means[r]
                m.add("gt_psnr", psnr(out.rgb, gt_images, reduction="none"))
                m.add("gt_copy_psnr", psnr(images.repeat_interleave(views, dim=0), gt_images, reduction="none"))
                if "gt_ssim" not in skipped:
                    m.add("gt_ssim", ssim(out.rgb, gt_images, reduction="none"))
                if lpips is not None:
                    m.add("gt_lpips", lpips(out.rgb, gt_images))
                m.add("gt_depth_accuracy", depth_accuracy(out.depth, gt_depth, reduction="none"))
        position += b
        s1_count += b

    if stage2_run:
        labels = balanced_labels(n, meta["num_classes"])
        angles2, start = _angles(n, views, seed + 1), 0
        for scene, _, b in tqdm(sample_scenes(gpt, cfg2, model, n, labels, batch_size, seed, device),
                                desc="radius: stage 2", total=-(-n // batch_size), disable=not progress, leave=False):
            scene = _repeat(scene, views)
            for r in radii:
                out = model.render(scene, _cameras_at(angles2[start: start + b], r, cfg, device))
                for name, extractor in extractors.items():
                    sets["s2", r, name].add(*extractor(out.rgb))
            start += b

    rows = []
    for r in radii:
        row: dict[str, Any] = {"radius": r, **means[r].result()}
        for stage in stages:
            for name in extractors:
                fake = sets[stage, r, name]
                if len(fake) >= 2:
                    row.update(distribution_metrics(stage, "", name, fake, references[name]))
                else:
                    skipped.update(dict.fromkeys(distribution_names(stage, "", name), "needs at least 2 images (--n)"))
        rows.append(row)
    out_dir = Path(out_dir)
    csv_path = _write_csv(out_dir / "radius.csv", rows)
    plots = _write_plots(out_dir, radii, rows)
    result: dict[str, Any] = {
        "stage1": str(stage1_run), "stage2": str(stage2_run) if stage2_run else None, "data": str(data_path),
        "split": split, "radii": radii, "views": views, "s1_images": s1_count,
        "gt_source": "synthetic scenes re-rendered exactly at each radius" if synthetic else None,
        "rows": rows, "csv": str(csv_path), "plots": [str(p) for p in plots],
    }
    if stage2_run:
        result["s2_samples"] = n
    if references:
        result["real_images"] = next(iter(references.values())).n
    result["skipped"] = dict(sorted(skipped.items()))
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
    return path


def _write_plots(out_dir: Path, radii: list[float], rows: list[dict[str, Any]]) -> list[Path]:
    written = []
    for stem, (title, ylabel, names) in PLOTS.items():
        series = {LEGEND[name]: [row.get(name) for row in rows] for name in names if any(name in row for row in rows)}
        if not series:
            continue
        path = out_dir / f"{stem}_vs_radius.png"
        line_plot(path, radii, series, title=title, xlabel="sampling radius (camera offset in the tangent disc)",
                  ylabel=ylabel)
        written.append(path)
    return written
