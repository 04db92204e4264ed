"""Evaluation metrics computed from features, images and depth maps (no networks here).

Distribution metrics (FID, KID, IS) take features/logits from `vq3d.eval.inception` (or the domain
feature net of `vq3d.eval.feature_net`) and are computed in float64. Image metrics (PSNR, SSIM) and
depth metrics (depth accuracy, non-flatness) take batches of tensors. The protocol that ties them to
data (sample counts, reference statistics, resizing) is `PROTOCOL.md` beside this file.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = np.ndarray | Tensor
Reduction = Literal["mean", "none"]


def _as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    return values.mean() if reduction == "mean" else values


# ----------------------------------------------------------------------------- Frechet / FID


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,D) features -> mean (D,) and covariance (D,D) in float64 (unbiased, N-1, as pytorch-fid)."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N>=2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _trace_sqrt_product_eig(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2): the latter is symmetric PSD, so eigh is stable."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = half @ sigma2 @ half
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _trace_sqrt_product_scipy(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's route: scipy sqrtm of S1 S2, with a 1e-6 ridge if singular, real part."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        ridge = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    return float(np.trace(np.real(covmean)))


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
    method: Literal["auto", "scipy", "eig"] = "auto",
) -> float:
    """Frechet distance of N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017, Eq. 6):

        ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

    `method`: "scipy" uses scipy.linalg.sqrtm as pytorch-fid does; "eig" an eigendecomposition of
    the symmetric S1^1/2 S2 S1^1/2 (exact, no scipy); "auto" = scipy when importable, else eig.
    """
    mu1, mu2, s1, s2 = (_as_f64(a) for a in (mu1, mu2, sigma1, sigma2))
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401

            method = "scipy"
        except ImportError:
            method = "eig"
    tr_sqrt = _trace_sqrt_product_scipy(s1, s2) if method == "scipy" else _trace_sqrt_product_eig(s1, s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def frechet_distance_low_rank(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """The Frechet distance of two feature sets' Gaussians, exact, without a D x D square root.

    With centred features A (N_a,D), B (N_b,D), S_a = A^T A / (N_a - 1) and S_b likewise, the
    nonzero eigenvalues of S_a S_b are those of M M^T / c with M = A B^T (N_a,N_b), c = (N_a-1)(N_b-1)
    (XY and YX share nonzero eigenvalues), so tr sqrt(S_a S_b) = (sum of singular values of M) / sqrt(c).
    Cost O(N_a N_b D) instead of O(D^3): the route for sets smaller than the feature dimension.
    """
    a, b = _as_f64(features_a), _as_f64(features_b)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least 2 samples in each set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt(na * nb)
    diff = mu_a - mu_b
    return float(diff @ diff + (ca * ca).sum() / na + (cb * cb).sum() / nb - 2.0 * tr_sqrt)


def fid_from_features(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FID between two feature sets (N_a,D) and (N_b,D), e.g. Inception pool3 features.

    Small sets (N_a N_b <= D^2) take the exact low-rank route (`frechet_distance_low_rank`), others
    the covariance route of pytorch-fid (`frechet_distance`); both give the same number.
    """
    a, b = _as_f64(features_a), _as_f64(features_b)
    if a.shape[0] * b.shape[0] <= a.shape[1] ** 2:
        return frechet_distance_low_rank(a, b)
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# ----------------------------------------------------------------------------- KID, IS


def kid_from_features(
    features_a: ArrayLike, features_b: ArrayLike, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the polynomial kernel
    k(x, y) = (x.y / D + 1)^3, averaged over `subsets` random subsets of `subset_size` rows drawn
    without replacement from each set (as StyleGAN's and torch-fidelity's KID). Returns (mean, std).
    """
    a, b = _as_f64(features_a), _as_f64(features_b)
    d = a.shape[1]
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off_diag = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
        values.append(off_diag / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits: ArrayLike, splits: int = 10, are_probs: bool = False) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split; (mean, std).

    `logits` (N,K): with the FID Inception pass `logits_unbiased` (softmax over all 1008, as the
    original TF code and torch-fidelity do). `are_probs=True` takes rows that are already p(y|x).
    """
    x = torch.as_tensor(_as_f64(logits))
    probs = x if are_probs else torch.softmax(x, dim=1)
    scores = []
    for part in torch.tensor_split(probs, splits, dim=0):
        p_y = part.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- PSNR, SSIM


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0, reduction: Reduction = "mean") -> Tensor:
    """PSNR in dB per image, 10 log10(range^2 / MSE); a, b (B,C,H,W); range 2 for [-1,1] images."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return _reduce(10.0 * torch.log10(data_range**2 / mse), reduction).float()


def _gaussian_window(size: int, sigma: float) -> Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: Tensor, b: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03, reduction: Reduction = "mean",
) -> Tensor:
    """SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, over the
    valid region (no padding), averaged over channels and pixels per image. a, b (B,C,H,W), H,W >= window.
    """
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window}, got {tuple(a.shape[-2:])}")
    x, y = a.double(), b.double()
    c = x.shape[1]
    g = _gaussian_window(window, sigma).to(x.device)
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:  # separable depthwise Gaussian, valid region
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return _reduce(ssim_map.flatten(1).mean(dim=1), reduction).float()


# ----------------------------------------------------------------------------- depth


def _flat_maps(x: Tensor) -> Tensor:
    """(B,1,H,W) or (B,H,W) -> (B,H*W) float64."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"depth maps must have one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    return x.double().flatten(1)


def depth_accuracy(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """Depth accuracy of the paper (VQ3D Tables 1-3): per image, normalize each map to zero mean and
    unit variance (population std, over the valid pixels), take the MSE; average over images.

    pred, target: (B,1,H,W) or (B,H,W) of the same quantity (both disparity, or both depth);
    mask: optional bool of the same shape, True = valid. Equal to 2 (1 - Pearson r) per image, so
    0 for any positively scaled and shifted copy, 2 for uncorrelated maps, 4 for a negated copy.
    A constant map normalizes to zeros (then the error is 1).
    """
    p, t = _flat_maps(pred), _flat_maps(target)
    w = torch.ones_like(p) if mask is None else _flat_maps(mask.to(torch.float64))
    n = w.sum(dim=1, keepdim=True).clamp_min(1.0)

    def normalize(x: Tensor) -> Tensor:
        mean = (w * x).sum(dim=1, keepdim=True) / n
        std = ((w * (x - mean) ** 2).sum(dim=1, keepdim=True) / n).sqrt()
        return (x - mean) / std.clamp_min(1e-12)

    err = (w * (normalize(p) - normalize(t)) ** 2).sum(dim=1) / n[:, 0]
    return _reduce(err, reduction).float()


def non_flatness_score(depth: Tensor, min_depth: float, max_depth: float, num_bins: int = 64) -> float:
    """Non-Flatness Score of 3DGP (Skorokhodov et al. 2023, snap-research/3dgp
    `src/metrics/non_flatness_score.py`): per image, clamp depth to [min_depth, max_depth] (the ray
    range), histogram it into `num_bins` equal bins over that range, take the exponential of the
    histogram's entropy (nats), and average over images. 1 for a flat map; at most `num_bins`.

    depth: (B,1,H,W) or (B,H,W). 3DGP's NFS256 uses 256 samples from the canonical (frontal) camera
    and the depth where a ray's accumulated weight reaches 0.5; producing those maps is the caller's job.
    """
    d = _flat_maps(depth).clamp(min_depth, max_depth)
    scores = []
    for row in d:
        hist = torch.histc(row, bins=num_bins, min=min_depth, max=max_depth)
        p = hist / hist.sum()
        scores.append(math.exp(float(-torch.special.xlogy(p, p).sum())))
    return float(np.mean(scores))


def depth_at_accumulated_weight(weights: Tensor, sample_disparity: Tensor, far: float,
                                level: float = 0.5) -> Tensor:
    """Per ray, the distance of the first sample at which the accumulated weight reaches `level`
    (0.5: the depth map that 3DGP's non-flatness score histograms); `far` where it never does.

    weights, sample_disparity: (B, N, S) of the NeRF level (RenderOutput); -> (B, N) distances.
    """
    cumulative = weights.double().cumsum(dim=-1)  # (B, N, S)
    reached = cumulative >= level
    first = reached.to(torch.int8).argmax(dim=-1, keepdim=True)  # index of the first True (0 if none)
    disparity = sample_disparity.double().gather(-1, first)[..., 0]  # (B, N)
    depth = 1.0 / disparity.clamp_min(1e-12)
    return torch.where(reached.any(dim=-1), depth, torch.full_like(depth, far)).float()


def region_depth_ratio(depth: Tensor, true_depth: Tensor, region: Tensor) -> Tensor:
    """Per image, the median of rendered / true depth over the pixels of `region`.

    depth, true_depth: (B, 1, H, W) ray distances; region: (B, 1, H, W) bool. Returns (B,),
    nan for an image with no region pixels. 1 means the region sits at its true distance (the
    relative depth loss leaves it free: Eq. 1's shift t*); 2 means twice as far."""
    ratio = (depth / true_depth.clamp_min(1e-6)).flatten(1)
    masked = torch.where(region.flatten(1), ratio, torch.full_like(ratio, float("nan")))
    return masked.nanmedian(dim=1).values


def object_region(true_depth: Tensor, origins: Tensor, dirs: Tensor, centers: Tensor, radii: Tensor) -> Tensor:
    """Pixels (B, 1, H, W) whose true surface point lies in the object's bounding ball.

    true_depth (B, 1, H, W) ray distance; origins, dirs (B, H, W, 3) the camera's rays (unit
    directions); centers (B, 3) and radii (B,) of each scene's object."""
    points = origins + dirs * true_depth.permute(0, 2, 3, 1)  # (B, H, W, 3)
    distance = (points - centers[:, None, None, :]).norm(dim=-1)
    return (distance <= radii[:, None, None] * 1.02)[:, None]
