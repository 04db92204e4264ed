"""Pieces the evaluation runners share: running means, the evaluation dataset, the depth model
on rendered images, Stage-2 sampling in batches, and metric groups that need optional weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.config import Config
from vq3d.errors import UserError
from vq3d.eval.extractors import FeatureSet
from vq3d.eval.metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid_from_features,
)

NO_DEPTH_MODEL = ("no depth model: pass --depth-model PATH_OR_ID (a local folder or cached hub id "
                  "that transformers' AutoModelForDepthEstimation loads, e.g. Intel/dpt-large)")


class Means:
    """Running means of per-image values, one per metric name."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, values: Tensor | list[float]) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.counts[name] = self.counts.get(name, 0) + values.numel()

    def result(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name]}


def eval_dataset(cfg: Config, data_path: str | Path, split: str):
    """The images of `data_path` (its `split`) as the Stage-1 run saw them: its resolution and
    crop, no flips, no depth cache (evaluation never needs the training pseudo-GT). Split "all":
    every scene of a synthetic dataset."""
    from vq3d.data.loader import build_dataset

    data = replace(cfg.data, path=str(data_path), kind="auto", hflip=False, depth_cache="", depth_in_shards=False)
    dataset = build_dataset(data, None if split == "all" else split, train=False)
    if getattr(dataset, "resolution", cfg.data.resolution) != cfg.data.resolution:
        raise UserError(f"{data_path} is {dataset.resolution}px but the Stage-1 model was trained at "
                        f"{cfg.data.resolution}px: make the dataset at that resolution")
    return dataset


def load_depth_model(spec: str | None, device: str) -> tuple[Any, str | None]:
    """(DepthEstimator, None), or (None, one-line reason) when no model is given or it cannot load
    offline (nothing is downloaded)."""
    if not spec:
        return None, NO_DEPTH_MODEL
    from vq3d.data.depth_model import DepthEstimator

    try:
        return DepthEstimator(spec, device=device, allow_download=False), None
    except UserError as err:
        return None, " ".join(str(err).split())


@torch.no_grad()
def depth_model_disparity(estimator: Any, images: Tensor) -> Tensor:
    """The depth model's disparity of images (B, 3, R, R) in [-1, 1] -> (B, 1, R, R) in [0, 1].

    Same input path as the pseudo-GT cache (`vq3d depth`): 8-bit pixels resized to the model's
    input size with antialiased bicubic, prediction resized back to R and min-max normalized.
    """
    size = images.shape[-1]
    pixels = torch.round((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)
    height, width = estimator.input_size
    if (height, width) != tuple(pixels.shape[-2:]):
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    disparity = estimator.predict_disparity(pixels.permute(0, 2, 3, 1).contiguous(), size)  # (B, R, R)
    return disparity[:, None].to(images.device)


def frechet_from(fake: FeatureSet, reference: Any) -> float:
    """Frechet distance between generated features and cached reference statistics (from the
    reference's raw rows when it kept all of them: exact, and fast for small sets)."""
    if reference.features.shape[0] == reference.n:
        return fid_from_features(fake.features(), reference.features)
    mu, sigma = feature_stats(fake.features())
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def distribution_metrics(prefix: str, suffix: str, extractor_name: str, fake: FeatureSet, reference: Any,
                         with_is_kid: bool = False) -> dict[str, float]:
    """FID (Inception) or FD-domain (domain net) of one image set, plus IS and KID for Inception.

    Names: `{prefix}_fid{suffix}`, `{prefix}_is`, `{prefix}_kid` (Inception) or
    `{prefix}_fd_domain{suffix}` (domain net).
    """
    metric = "fid" if extractor_name == "inception" else "fd_domain"
    out = {f"{prefix}_{metric}{suffix}": frechet_from(fake, reference)}
    if with_is_kid and extractor_name == "inception":
        n = len(fake)
        out[f"{prefix}_is"], out[f"{prefix}_is_std"] = inception_score(fake.logits(), splits=min(10, n))
        out[f"{prefix}_kid"], out[f"{prefix}_kid_std"] = kid_from_features(fake.features(), reference.features)
    return out


def distribution_names(prefix: str, suffix: str, extractor_name: str, with_is_kid: bool = False) -> list[str]:
    """The metric names `distribution_metrics` would give (for the `skipped` list)."""
    if extractor_name == "domain":
        return [f"{prefix}_fd_domain{suffix}"]
    return [f"{prefix}_fid{suffix}"] + ([f"{prefix}_is", f"{prefix}_kid"] if with_is_kid else [])


def finite_far(cfg: Config, far: float | None = None) -> float:
    """The far bound of the non-flatness histogram: `far`, else render.far when finite, else
    4 x camera distance (behind any background of the synthetic scenes)."""
    if far is not None:
        return float(far)
    return float(cfg.render.far) if math.isfinite(cfg.render.far) else 4.0 * cfg.render.camera_distance


def load_stage2_for(stage1_run: str | Path, stage2_run: str | Path, model: Any, device: str):
    """The Stage-2 GPT of `stage2_run`, checked against the Stage-1 `model`: (gpt, cfg2, meta)."""
    from vq3d.data.tokens import check_stage2_matches
    from vq3d.train.stage2 import load_stage2

    gpt, cfg2, meta = load_stage2(stage2_run, device)
    check_stage2_matches(stage1_run, model, meta, stage2_run)
    return gpt, cfg2, meta


def balanced_labels(n: int, num_classes: int) -> Tensor | None:
    """Class labels (n,) cycling through the classes (equal counts, as "50 per class"), or None."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def sample_scenes(gpt: Any, cfg2: Config, model: Any, n: int, labels: Tensor | None, batch_size: int,
                  seed: int, device: str) -> Iterator[tuple[Any, Tensor | None, int]]:
    """Sample `n` token sequences in batches with the run's sampling settings and decode them:
    yields (scene, labels of the batch or None, batch size)."""
    from vq3d.models.sampling import sample

    s = cfg2.sample
    generator = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        batch_labels = None if labels is None else labels[start: start + b].to(device)
        ids = sample(gpt, b, batch_labels, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                     guidance=s.guidance, generator=generator, use_cache=s.use_kv_cache)
        yield model.decode(ids), batch_labels, b


def load_lpips(lpips_vgg: str | None, lpips_lin: str | None, cfg: Config) -> tuple[Any, str | None]:
    """(LPIPS, None) from the given files, else the run's loss.lpips_* paths; (None, reason) when
    none are configured or they do not load."""
    from types import SimpleNamespace

    from vq3d.losses.perceptual import build_perceptual

    paths = SimpleNamespace(lpips_vgg_path=lpips_vgg or cfg.loss.lpips_vgg_path,
                            lpips_lin_path=lpips_lin or cfg.loss.lpips_lin_path)
    if not paths.lpips_vgg_path and not paths.lpips_lin_path:
        return None, ("no LPIPS weights: pass --lpips-vgg VGG16.pth --lpips-lin vgg.pth "
                      "(or set loss.lpips_vgg_path / loss.lpips_lin_path in the run)")
    try:
        return build_perceptual(paths), None
    except UserError as err:
        return None, str(err)
