"""Estimator-like depth targets for the synthetic benchmark: what a monocular depth model would
give, made from the true depth, written to a depth cache like any photo's.

A monocular estimator (DPT, the paper's) returns relative inverse depth along the camera's axis,
1 / z (not 1 / t along each ray: at the corners of a 45-degree view 1 / t is 14% smaller): right
in order, affine in scale and shift, distorted by a monotone curve that varies from image to
image, smoother than the truth and noisy. `estimator_like` makes such a map from a scene's true
camera-axis disparity:

    d = normalize(1 / z)                      per-image min-max to [0, 1]
    d = a d + b,  log a ~ U(-log scale, log scale), b ~ U(0, shift)   the affine ambiguity
    d = d ** g,   log g ~ U(-log gamma, log gamma)   a random monotone distortion per image
    d = blur(d, sigma = blur * R)            Gaussian, separable, edges replicated
    d = d + N(0, noise^2)                    per pixel
    d = normalize(d)                          the cache's convention

seeded by (seed, scene index), so a map never depends on which process or order made it. The
cache stores maps min-max normalized, so an affine map applied last would vanish; applied before
the distortion, its shift b / a moves where the curve's origin sits (where an estimator puts
"infinity"), which the loss must not depend on. `write_estimator_cache` stores the maps in a
`DepthCache` keyed by the scene images, and a run with `data.depth_cache` set reads them through
the same code path as photos' pseudo-GT: the cache lookup, the per-image normalized target and the
paper's relative loss (Eq. 1-3). The corruption is recorded as the cache's model name (cache.json)
and in each run's `dataset_info.json`.
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
    scale: float = 2.0  # the affine ambiguity's scale, drawn log-uniformly in [1/scale, scale] (1 = none)
    shift: float = 0.5  # its shift, drawn uniformly in [0, shift] of the normalized map (0 = none)
    axis: str = "camera"  # "camera": from 1 / z, as estimators give; "ray": from 1 / t (vq3d before)

    def __post_init__(self) -> None:
        if not (self.gamma >= 1.0 and self.blur >= 0.0 and self.noise >= 0.0 and self.scale >= 1.0
                and self.shift >= 0.0 and self.axis in ("camera", "ray")):
            raise UserError(f"estimator-like depth needs gamma >= 1, blur >= 0, noise >= 0, scale >= 1, shift >= 0 "
                            f"and axis camera or ray, got gamma={self.gamma}, blur={self.blur}, noise={self.noise}, "
                            f"scale={self.scale}, shift={self.shift}, axis={self.axis}")

    @property
    def name(self) -> str:
        """The cache's model name: every parameter, so two corruptions never share a cache."""
        return (f"vq3d-estimator-like(gamma={self.gamma:g}, blur={self.blur:g}, noise={self.noise:g}, "
                f"seed={self.seed}, scale={self.scale:g}, shift={self.shift:g}, axis={self.axis})")


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
    """A relative disparity map (R, R) float32 in [0, 1] from a scene's true disparity (R, R), in
    the convention the map should have (1 / z for an estimator; `write_estimator_cache` converts)."""
    rng = np.random.default_rng([corruption.seed, index])
    d = _normalize(np.asarray(true_disparity, dtype=np.float64))
    a = math.exp(rng.uniform(-math.log(corruption.scale), math.log(corruption.scale)))
    b = rng.uniform(0.0, corruption.shift)
    d = a * d + b
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

    from vq3d.render.cameras import axis_cosines

    dataset = SyntheticDataset(data, novel_views=False)
    cache = DepthCache(out, dataset.resolution)
    res = dataset.resolution
    # every scene's canonical camera has the dataset's field of view: 1 / z = (1 / t) / cos
    cosines = axis_cosines(dataset.fov_deg, res, res).numpy() if corruption.axis == "camera" else 1.0
    cache.claim(corruption.name, "disparity")
    have = cache.existing_digests()
    written = kept = 0
    for i in tqdm(range(len(dataset)), desc="estimator-like depth", disable=not progress):
        source = dataset.source_id(i)
        if source.digest() in have:
            kept += 1
            continue
        disparity = dataset[i]["disparity"][0].numpy() / cosines  # the truth: 1 / t, then 1 / z
        cache.save(source, estimator_like(disparity, corruption, dataset.records[i]["index"]))
        written += 1
    return written, kept

