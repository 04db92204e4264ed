"""Feature extractors for the distribution metrics: the FID Inception and the domain feature net.

    extractors, skipped = load_extractors(inception="pt_inception-...pth", features="featdir")
    feats = FeatureSet()
    feats.add(*extractors["inception"](images))      # images (B, 3, H, W) in [-1, 1]
    fid_from_features(feats.features(), real.features)

Both extractors take images in [-1, 1] at any resolution and quantize them to 8 bits first
(as if saved to PNG and read back: real images come from 8-bit files). Each has an `identity`
(a JSON-able dict) that the reference-statistics cache key is built from (`real_stats.py`).
A missing weights file is not an error here: it is reported in `skipped` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vq3d.errors import UserError

FEATURE_INFO_FILE = "feature_net_info.json"  # written by `train_features` beside the weights


def file_fingerprint(path: str | Path, head_bytes: int = 1 << 20) -> dict[str, Any]:
    """File name, size and SHA-256 of its first MiB: cheap and enough to tell weight files apart."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(head_bytes)
    return {"file": path.name, "size": path.stat().st_size, "sha256_head": hashlib.sha256(head).hexdigest()[:16]}


def quantize_8bit(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> the same rounded to the 256 levels of an 8-bit PNG."""
    return torch.round((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


class Extractor:
    """Callable: images (B, 3, H, W) in [-1, 1] -> features (B, D) float32, logits (B, K) float32, on CPU."""

    name: str  # "inception" or "domain": the suffix of the metric names it produces
    feature_name: str  # which activation the features are ("pool3", "penultimate")
    identity: dict[str, Any]  # what the cache key of reference statistics records
    class_names: list[str]  # the classes of the logits (empty when they mean nothing here)

    def __init__(self, name: str, network: nn.Module, identity: dict[str, Any], feature_name: str,
                 device: torch.device | str, batch_size: int = 32, resolution: int = 0,
                 class_names: list[str] | None = None) -> None:
        self.name = name
        self.network = network.to(device).eval()
        self.identity = identity
        self.feature_name = feature_name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resolution = resolution  # resize inputs to this square size first (0 = as given)
        self.class_names = list(class_names or [])

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.network(x)
        if isinstance(out, dict):  # InceptionFeatures: pool3 for FID/KID, unbiased logits for IS
            return out["pool3"], out["logits_unbiased"]
        return out

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = quantize_8bit(images[start: start + self.batch_size]).to(self.device)
            if self.resolution and x.shape[-1] != self.resolution:
                down = x.shape[-1] > self.resolution
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                  align_corners=False, antialias=down)
            f, lg = self._forward(x)
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        return torch.cat(feats), torch.cat(logits)


def inception_extractor(path: str | Path, device: torch.device | str = "cpu", batch_size: int = 32) -> Extractor:
    """The FID Inception (`inception.load_inception`); UserError when the file is missing or wrong."""
    from vq3d.eval.inception import load_inception

    network = load_inception(path, quantize=True)
    identity = {"network": "fid-inception-v3", **file_fingerprint(path), "feature": "pool3", "quantized": True,
                "resize": "bilinear 299, align_corners=False, no antialias"}
    return Extractor("inception", network, identity, "pool3", device, batch_size)


def domain_extractor(directory: str | Path, device: torch.device | str = "cpu", batch_size: int = 64) -> Extractor:
    """The domain feature net saved by `train_features` (or `save_feature_net`) in `directory`."""
    from vq3d.eval.feature_net import WEIGHTS_FILE, load_feature_net

    directory = Path(directory)
    network = load_feature_net(directory)
    info_path = directory / FEATURE_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    digest = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    identity = {"network": "domain-feature-net", "sha256": digest, "feature": "penultimate", "quantized": True,
                "resolution": int(info.get("resolution", 0))}
    return Extractor("domain", network, identity, "penultimate", device, batch_size,
                     resolution=int(info.get("resolution", 0)), class_names=info.get("class_names"))


NO_INCEPTION = ("no Inception weights: pass --inception PATH to pt_inception-2015-12-05-6726825d.pth "
                "(see vq3d/eval/PROTOCOL.md)")
NO_FEATURES = "no domain feature net: train one with `vq3d eval train-features` and pass --features DIR"


def load_extractors(inception: str | Path | None = None, features: str | Path | None = None,
                    device: torch.device | str = "cpu") -> tuple[dict[str, Extractor], dict[str, str]]:
    """The extractors whose weights are present, and {name: one-line reason} for those that are not."""
    extractors: dict[str, Extractor] = {}
    missing: dict[str, str] = {}
    for name, source, build, default_reason in (("inception", inception, inception_extractor, NO_INCEPTION),
                                                 ("domain", features, domain_extractor, NO_FEATURES)):
        if not source:
            missing[name] = default_reason
            continue
        try:
            extractors[name] = build(source, device)
        except UserError as err:
            missing[name] = str(err)
    return extractors, missing


class FeatureSet:
    """Features (and logits) of one image set, gathered batch by batch."""

    def __init__(self) -> None:
        self._features: list[Tensor] = []
        self._logits: list[Tensor] = []

    def add(self, features: Tensor, logits: Tensor) -> None:
        self._features.append(features.float().cpu())
        self._logits.append(logits.float().cpu())

    def __len__(self) -> int:
        return sum(f.shape[0] for f in self._features)

    def features(self) -> np.ndarray:
        """(N, D) float32."""
        return torch.cat(self._features).numpy()

    def logits(self) -> Tensor:
        """(N, K) float32."""
        return torch.cat(self._logits)
