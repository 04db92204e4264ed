"""Estimator-like depth targets for the synthetic benchmark: what a monocular depth model would
give, made from the true depth, written to a depth cache like any photo's.

A monocular estimator (DPT, the paper's) returns relative inverse depth: right in order, wrong in
scale and shift, distorted by a monotone curve that varies from image to image, smoother than the
truth and noisy. `estimator_like` makes such a map from a scene's true disparity:

    d = normalize(1 / depth)                  per-image min-max to [0, 1]
    d = d ** g,   log g ~ U(-log gamma, log gamma)   a random monotone distortion per image
    d = blur(d, sigma = blur * R)            Gaussian, separable, edges replicated
    d = d + N(0, noise^2)                    per pixel
    d = normalize(d)                          the cache's convention

seeded by (seed, scene index), so a map never depends on which process or order made it.
`write_estimator_cache` stores the maps in a `DepthCache` keyed by the scene images, and a run
with `data.depth_cache` set reads them through the same code path as photos' pseudo-GT: the
cache lookup, the per-image normalized target and the paper's relative loss (Eq. 1-3). The
corruption is recorded as the cache's model name (cache.json) and in each run's
`dataset_info.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vq3d.data.depth_cache import DepthCache
from vq3d.errors import UserError


@dataclass(frozen=True)
class Corruption:
    """How far an estimator-like map is from the truth (all off: the normalized truth)."""

    gamma: float = 1.5  # per-image exponent drawn log-uniformly in [1/gamma, gamma] (1 = none)
    blur: float = 0.02  # Gaussian blur sigma as a fraction of the image side (0 = none)
    noise: float = 0.02  # std of additive Gaussian noise on the [0, 1] map (0 = none)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.gamma >= 1.0 and self.blur >= 0.0 and self.noise >= 0.0):
            raise UserError(f"estimator-like depth needs gamma >= 1, blur >= 0 and noise >= 0, got "
                            f"gamma={self.gamma}, blur={self.blur}, noise={self.noise}")

    @property
    def name(self) -> str:
        """The cache's model name: every parameter, so two corruptions never share a cache."""
        return (f"vq3d-estimator-like(gamma={self.gamma:g}, blur={self.blur:g}, noise={self.noise:g}, "
                f"seed={self.seed})")


def _normalize(d: np.ndarray) -> np.ndarray:
    lo, hi = float(d.min()), float(d.max())
    return (d - lo) / max(hi - lo, 1e-8)


def _gaussian_blur(d: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) map, edges replicated."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(d, radius, mode="edge")
    rows = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])  # (H + 2r, W)
    return np.stack([np.convolve(col, kernel, mode="valid") for col in rows.T]).T  # (H, W)


def estimator_like(true_disparity: np.ndarray, corruption: Corruption, index: int) -> np.ndarray:
    """A relative disparity map (R, R) float32 in [0, 1] from a scene's true disparity (R, R)."""
    rng = np.random.default_rng([corruption.seed, index])
    d = _normalize(np.asarray(true_disparity, dtype=np.float64))
    if corruption.gamma > 1.0:
        d = d ** math.exp(rng.uniform(-math.log(corruption.gamma), math.log(corruption.gamma)))
    if corruption.blur > 0.0:
        d = _gaussian_blur(d, corruption.blur * d.shape[-1])
    if corruption.noise > 0.0:
        d = d + rng.normal(0.0, corruption.noise, size=d.shape)
    return _normalize(d).astype(np.float32)


def write_estimator_cache(data: str | Path, out: str | Path, corruption: Corruption,
                          progress: bool = True) -> tuple[int, int]:
    """Fill the cache at `out` with estimator-like maps of every scene of the synthetic dataset
    `data` (resumable: existing entries are kept). Returns (written, already there)."""
    from tqdm import tqdm

    from vq3d.data.synthetic_dataset import SyntheticDataset

    dataset = SyntheticDataset(data, novel_views=False)
    cache = DepthCache(out, dataset.resolution)
    cache.claim(corruption.name, "disparity")
    have = cache.existing_digests()
    written = kept = 0
    for i in tqdm(range(len(dataset)), desc="estimator-like depth", disable=not progress):
        source = dataset.source_id(i)
        if source.digest() in have:
            kept += 1
            continue
        disparity = dataset[i]["disparity"][0].numpy()  # the truth (synthetic: 1 / depth)
        cache.save(source, estimator_like(disparity, corruption, dataset.records[i]["index"]))
        written += 1
    return written, kept

