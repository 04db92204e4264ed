"""`vq3d eval generation`: the paper's generation metrics (Tables 1 and 3) for a Stage-1 run and,
optionally, a Stage-2 run.

Stage 1 (`s1_*`, "FID-S1" of Table 3): up to `n` real images of the `split` are reconstructed
and rendered at the canonical camera and at one novel camera each, drawn uniformly in the disc of
`radius`. Stage 2 (`s2_*`, "FID-S2"): `n` samples (class-conditional models: classes in equal
numbers) rendered at one novel camera each in the disc (as the paper samples views) and at the
canonical camera. Both are scored against the real images' cached reference statistics
(`real_stats.py`).

Metrics (each present only when its weights are; otherwise listed under "skipped" with a reason):
- `*_fid*`, `s2_is`, `s2_kid`: Inception (--inception); `*_fd_domain*`, `s2_class_accuracy`:
  the domain feature net (--features; accuracy = the net's argmax equals the requested class);
  `s1_class_accuracy`: the same net on canonical reconstructions against the images' labels (how
  much class the Stage-1 tokens keep: the ceiling for `s2_class_accuracy`);
- `*_depth_accuracy_depth_model`: the paper's depth accuracy, rendered disparity vs the depth
  model's disparity of the rendered canonical image (--depth-model);
- `s1_disparity_scale_depth_model`: mean s* (Eq. 1) of the canonical render against the depth
  model's disparity of the *input* image (the training target); `s2_disparity_scale_depth_model`:
  against the depth model's disparity of the rendered sample;
- synthetic data only: `s1_depth_accuracy_gt`, `s1_disparity_scale_gt` against ground truth;
- `*_non_flatness`: 3DGP's non-flatness score of canonical renders (no weights needed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.eval.common import (
    Means,
    balanced_labels,
    depth_model_disparity,
    distribution_metrics,
    distribution_names,
    eval_dataset,
    finite_far,
    load_depth_model,
    load_stage2_for,
    sample_scenes,
)
from vq3d.eval.extractors import Extractor, FeatureSet, load_extractors
from vq3d.eval.metrics import depth_accuracy, depth_at_accumulated_weight, non_flatness_score
from vq3d.eval.real_stats import ReferenceStats, default_cache_dir, iter_image_batches, reference_statistics
from vq3d.losses.depth_target import axis_disparity_map, disparity_scale, true_target_disparity
from vq3d.render.cameras import sample_novel_cameras
from vq3d.train.runs import load_stage1


def _skip(skipped: dict[str, str], names: list[str], reason: str) -> None:
    for name in names:
        skipped.setdefault(name, reason)


def _geometry(means: Means, prefix: str, canon: Any, cfg: Any, far: float, estimator: Any,
              depth_target_images: torch.Tensor | None) -> None:
    """Non-flatness, and with a depth model depth accuracy and disparity scale, of a canonical render.

    depth_target_images: the images whose depth-model disparity s* is solved against (the input
    images for reconstructions); None = the rendered images themselves.
    """
    near = cfg.render.near
    median = depth_at_accumulated_weight(canon.weights, canon.sample_disparity, far)  # (B, N)
    res = canon.rgb.shape[-1]
    means.add(f"{prefix}_non_flatness",
              [non_flatness_score(median[i].view(1, res, res), near, far) for i in range(median.shape[0])])
    if estimator is None:
        return
    predicted = depth_model_disparity(estimator, canon.rgb)  # (B, 1, R, R)
    # the estimator's disparity is along the camera's axis: the render's is compared in that convention
    rendered = axis_disparity_map(canon, cfg.loss)
    means.add(f"{prefix}_depth_accuracy_depth_model", depth_accuracy(rendered, predicted, reduction="none"))
    target = predicted if depth_target_images is None else depth_model_disparity(estimator, depth_target_images)
    means.add(f"{prefix}_disparity_scale_depth_model", disparity_scale(canon, target, cfg.loss, cfg.render))


@torch.no_grad()
def _stage1_metrics(model: Any, cfg: Any, dataset: Any, n: int, radius: float, extractors: dict[str, Extractor],
                    estimator: Any, far: float, batch_size: int, seed: int, device: str, workers: int,
                    progress: bool) -> tuple[dict[str, float], dict[str, FeatureSet]]:
    r = cfg.render
    means = Means()
    sets = {(view, name): FeatureSet() for view in ("canonical", "novel") for name in extractors}
    generator = torch.Generator().manual_seed(seed)
    count = 0
    total = min(n, len(dataset)) if hasattr(dataset, "__len__") else n
    batches = iter_image_batches(dataset, batch_size, n, workers)
    domain = extractors.get("domain")
    # labels are comparable only when the feature net was trained on this dataset's classes
    check_classes = domain is not None and bool(domain.class_names) and \
        domain.class_names == list(getattr(dataset, "class_names", None) or [])
    for batch in tqdm(batches, desc="eval stage 1", total=-(-total // batch_size), disable=not progress, leave=False):
        images = batch["image"].to(device)
        scene = model.decode_codes(model.quantize(images).codes)
        b = images.shape[0]
        canon, novel = _render_views(model, scene, b, r, radius, generator, device)
        logits = _add_features(sets, extractors, canon, novel)
        if check_classes:  # the ceiling for s2_class_accuracy: how often a reconstruction keeps its class
            means.add("s1_class_accuracy", (logits.argmax(dim=1) == batch["label"]).float())
        _geometry(means, "s1", canon, cfg, far, estimator, images)
        if "depth" in batch and "novel_c2w" in batch:  # synthetic: ground-truth depth
            gt_depth = batch["depth"].to(device)
            # depth with depth, as `eval stage1` (the ground-truth depth accuracy)
            means.add("s1_depth_accuracy_gt", depth_accuracy(canon.depth, gt_depth, reduction="none"))
            means.add("s1_disparity_scale_gt", disparity_scale(canon, true_target_disparity(gt_depth, canon, cfg.loss),
                                                               cfg.loss, cfg.render))
        count += b
    metrics = means.result()
    metrics["s1_images"] = count
    return metrics, sets


def _render_views(model: Any, scene: Any, b: int, r: Any, radius: float, generator: torch.Generator,
                  device: str) -> tuple[Any, Any]:
    """The canonical renders of `b` scenes and one novel view each, drawn from `generator`."""
    canon = model.render(scene, model.canonical_cameras(b, device))
    novel_cams = sample_novel_cameras(b, r.camera_distance, r.fov_deg, radius, generator).to(device)
    return canon, model.render(scene, novel_cams)


def _add_features(sets: dict, extractors: dict[str, Extractor], canon: Any, novel: Any) -> torch.Tensor | None:
    """Add both views' features to their sets; returns the domain net's logits of the canonical
    views (B, classes), or None without a domain net."""
    domain_logits = None
    for name, extractor in extractors.items():
        feats, logits = extractor(canon.rgb)
        sets["canonical", name].add(feats, logits)
        sets["novel", name].add(*extractor(novel.rgb))
        if name == "domain":
            domain_logits = logits
    return domain_logits


@torch.no_grad()
def _stage2_metrics(model: Any, cfg: Any, gpt: Any, cfg2: Any, meta: dict, n: int, radius: float,
                    extractors: dict[str, Extractor], estimator: Any, far: float, batch_size: int, seed: int,
                    device: str, skipped: dict[str, str], progress: bool) -> tuple[dict[str, float], dict]:
    r = cfg.render
    means = Means()
    sets = {(view, name): FeatureSet() for view in ("canonical", "novel") for name in extractors}
    labels = balanced_labels(n, meta["num_classes"])
    domain = extractors.get("domain")
    check_classes = domain is not None and labels is not None
    if domain is not None and labels is None:
        skipped["s2_class_accuracy"] = "the Stage-2 model is unconditional: no requested class to check"
    class_names = meta.get("class_names") or []
    if check_classes and domain.class_names and class_names and domain.class_names != class_names:
        skipped["s2_class_accuracy"] = (f"the feature net's classes ({', '.join(domain.class_names)}) are not the "
                                        f"Stage-2 model's ({', '.join(class_names)})")
        check_classes = False
    generator = torch.Generator().manual_seed(seed + 1)
    for scene, batch_labels, b in tqdm(sample_scenes(gpt, cfg2, model, n, labels, batch_size, seed, device),
                                       desc="eval stage 2", total=-(-n // batch_size), disable=not progress,
                                       leave=False):
        canon, novel = _render_views(model, scene, b, r, radius, generator, device)
        logits = _add_features(sets, extractors, canon, novel)
        if check_classes:
            means.add("s2_class_accuracy", (logits.argmax(dim=1) == batch_labels.cpu()).float())
        _geometry(means, "s2", canon, cfg, far, estimator, None)
    metrics = means.result()
    metrics["s2_samples"] = n
    return metrics, sets


def _scores(prefix: str, sets: dict, references: dict[str, ReferenceStats], views: dict[str, str],
            is_kid_view: str | None, skipped: dict[str, str]) -> dict[str, float]:
    """Distribution metrics of each (view, extractor) image set; `views` maps view -> name suffix."""
    out: dict[str, float] = {}
    for (view, name), fake in sets.items():
        suffix, with_is_kid = views[view], view == is_kid_view
        if len(fake) < 2:
            _skip(skipped, distribution_names(prefix, suffix, name, with_is_kid), "needs at least 2 images (--n)")
            continue
        out.update(distribution_metrics(prefix, suffix, name, fake, references[name], with_is_kid))
    return out


@torch.no_grad()
def evaluate_generation(stage1_run: str | Path, data_path: str | Path, *, stage2_run: str | Path | None = None,
                        n: int = 1000, inception: str | Path | None = None, features: str | Path | None = None,
                        depth_model: str | None = None, radius: float | None = None, split: str = "test",
                        cache_dir: str | Path | None = None, max_real: int = 0, batch_size: int = 16,
                        device: str = "cpu", seed: int = 0, use_ema: bool = True, nfs_far: float | None = None,
                        workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Generation metrics of a Stage-1 run (and a Stage-2 run) on `data_path` (module docstring).

    n: images reconstructed for Stage 1 and samples drawn for Stage 2; max_real: real images in
    the reference statistics (0 = the whole split); radius: novel-view disc radius (default: the
    run's sampling radius); cache_dir: where reference statistics are cached (default: the
    synthetic dataset's folder, else the Stage-1 run folder); workers: image decoding processes. Returns one flat dict of metrics
    plus "skipped": {metric: one-line reason}.
    """
    if n < 1:
        raise UserError(f"--n {n}: evaluate at least one image")
    started = time.time()
    model, cfg = load_stage1(stage1_run, device, use_ema=use_ema)
    radius = cfg.render.sampling_radius if radius is None else float(radius)
    if radius < 0:
        raise UserError(f"--radius {radius}: the sampling radius must be >= 0")
    gpt = cfg2 = meta = None
    if stage2_run:
        gpt, cfg2, meta = load_stage2_for(stage1_run, stage2_run, model, device)
    dataset = eval_dataset(cfg, data_path, split)
    extractors, missing = load_extractors(inception, features, device)
    estimator, depth_reason = load_depth_model(depth_model, device)
    far = finite_far(cfg, nfs_far)
    skipped: dict[str, str] = {}
    references = {}
    if extractors:
        cache = Path(cache_dir) if cache_dir else default_cache_dir(data_path, stage1_run)
        references = reference_statistics(extractors, dataset, split, cache, max_real, batch_size, progress,
                                          workers)
    result: dict[str, Any] = {"stage1": str(stage1_run), "stage2": str(stage2_run) if stage2_run else None,
                              "data": str(data_path), "split": split, "radius": radius}
    if references:
        result["real_images"] = next(iter(references.values())).n
    for name, reason in missing.items():
        _skip(skipped, distribution_names("s1", "_canonical", name) + distribution_names("s1", "_novel", name), reason)
        if stage2_run:
            _skip(skipped, distribution_names("s2", "", name, True) + distribution_names("s2", "_canonical", name),
                  reason)
            if name == "domain":
                _skip(skipped, ["s2_class_accuracy"], reason)
    if estimator is None:
        stages = ("s1", "s2") if stage2_run else ("s1",)
        _skip(skipped, [f"{p}_{m}" for p in stages for m in ("depth_accuracy_depth_model",
                                                              "disparity_scale_depth_model")], depth_reason)

    s1, sets = _stage1_metrics(model, cfg, dataset, n, radius, extractors, estimator, far, batch_size, seed,
                               device, workers, progress)
    result.update(s1)
    result.update(_scores("s1", sets, references, {"canonical": "_canonical", "novel": "_novel"}, None, skipped))
    if stage2_run:
        s2, sets = _stage2_metrics(model, cfg, gpt, cfg2, meta, n, radius, extractors, estimator, far, batch_size,
                                   seed, device, skipped, progress)
        result.update(s2)
        result.update(_scores("s2", sets, references, {"canonical": "_canonical", "novel": ""}, "novel", skipped))
    result["seconds"] = round(time.time() - started, 2)
    result["skipped"] = dict(sorted(skipped.items()))
    return result
