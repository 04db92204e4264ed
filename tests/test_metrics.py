"""Metrics against hand-computed cases: Frechet/FID, KID, IS, PSNR, SSIM, depth accuracy, non-flatness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vq3d.eval.metrics import (
    depth_accuracy,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid_from_features,
    non_flatness_score,
    psnr,
    ssim,
)

METHODS = ("scipy", "eig")


# ----------------------------------------------------------------------------- Frechet / FID


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_of_diagonal_gaussians_has_closed_form(method) -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)  # 7.25 + 5
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_trace_term_for_non_commuting_2x2(method) -> None:
    """For 2x2 A with positive eigenvalues, tr sqrt(A) = sqrt(tr A + 2 sqrt(det A))."""
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    a = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(a) + 2 * math.sqrt(np.linalg.det(a)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    got = frechet_distance(np.zeros(2), s1, np.zeros(2), s2, method=method)
    assert got == pytest.approx(expected, abs=1e-9)


def test_scipy_and_eig_routes_agree_on_realistic_covariances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 40)), rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40)) * 0.3
    s = [feature_stats(a), feature_stats(b)]
    d_scipy = frechet_distance(*s[0], *s[1], method="scipy")
    assert d_scipy == pytest.approx(frechet_distance(*s[0], *s[1], method="eig"), rel=1e-7)


def test_feature_stats_use_unbiased_covariance() -> None:
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = feature_stats(f)
    assert mu == pytest.approx([2.0, 4.0])
    assert sigma == pytest.approx(np.array([[4.0, 7.0], [7.0, 13.0]]))  # divided by N - 1 = 2


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(500, 16))
    assert abs(fid_from_features(f, f)) < 1e-6
    assert fid_from_features(f, f + 1.0) == pytest.approx(16.0, rel=1e-6)  # ||shift||^2, same covariance


# ----------------------------------------------------------------------------- KID, IS


def test_kid_near_zero_for_same_distribution_and_larger_when_shifted() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kid_from_features(a, b, subsets=20, subset_size=200)
    shifted, std = kid_from_features(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 and shifted > 0.3 and std >= 0


def test_kid_single_subset_matches_hand_computed_mmd() -> None:
    x, y = np.array([[1.0], [0.0]]), np.array([[2.0], [-1.0]])
    k = lambda p, q: (p * q + 1.0) ** 3  # noqa: E731 - D = 1
    expected = k(1, 0) * 2 / 2 + k(2, -1) * 2 / 2 - 2 * (k(1, 2) + k(1, -1) + k(0, 2) + k(0, -1)) / 4
    mean, std = kid_from_features(x, y, subsets=3, subset_size=2)
    assert mean == pytest.approx(expected) and std == pytest.approx(0.0)


def test_inception_score_bounds() -> None:
    assert inception_score(torch.zeros(40, 10), splits=4)[0] == pytest.approx(1.0)  # uniform p(y|x)
    confident = torch.eye(5).repeat(8, 1) * 50.0  # each split holds every class equally often
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    probs = torch.eye(4).repeat(3, 1)
    assert inception_score(probs, splits=1, are_probs=True)[0] == pytest.approx(4.0)


# ----------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_of_constant_offset() -> None:
    a = torch.rand(2, 3, 8, 8) * 1.5 - 1
    b = a + 0.1  # MSE 0.01, range 2 -> 10 log10(4 / 0.01)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(400.0), rel=1e-5)
    assert psnr(a, b, data_range=1.0, reduction="none").shape == (2,)


def test_ssim_identity_and_noise_monotone() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert torch.allclose(ssim(x, x, reduction="none"), torch.ones(2))
    values = [ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).item() for s in (0.05, 0.2, 0.6)]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_of_constant_images_is_luminance_term() -> None:
    """Constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b = 0.2, -0.4
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert got.item() == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- depth


def test_depth_accuracy_zero_for_scaled_shifted_copy_positive_otherwise() -> None:
    torch.manual_seed(0)
    target = torch.rand(3, 1, 12, 12)
    assert depth_accuracy(3.0 * target + 2.0, target).item() == pytest.approx(0.0, abs=1e-6)
    assert depth_accuracy(-target, target).item() == pytest.approx(4.0, abs=1e-5)
    other = torch.rand(3, 1, 12, 12)
    assert depth_accuracy(other, target).item() > 0.5


def test_depth_accuracy_equals_two_minus_two_pearson() -> None:
    rng = np.random.default_rng(3)
    p, t = rng.normal(size=(2, 10, 10)), rng.normal(size=(2, 10, 10))
    t[0] += 0.8 * p[0]
    per_image = depth_accuracy(torch.tensor(p), torch.tensor(t), reduction="none")
    expected = [2 * (1 - np.corrcoef(p[i].ravel(), t[i].ravel())[0, 1]) for i in range(2)]
    assert per_image.numpy() == pytest.approx(expected, rel=1e-5)
    mean = depth_accuracy(torch.tensor(p), torch.tensor(t)).item()
    assert mean == pytest.approx(np.mean(expected), rel=1e-5)


def test_depth_accuracy_ignores_masked_pixels() -> None:
    torch.manual_seed(1)
    target = torch.rand(1, 8, 8)
    pred = 2 * target + 1
    pred[0, :2] = 100.0  # garbage outside the mask
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[0, :2] = False
    assert depth_accuracy(pred, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert depth_accuracy(pred, target).item() > 0.1


def test_non_flatness_score_flat_uniform_and_two_planes() -> None:
    flat = torch.full((2, 1, 8, 8), 3.0)
    assert non_flatness_score(flat, 1.0, 5.0) == pytest.approx(1.0)
    # 64 pixels, one per bin centre of 64 bins over [0, 64]: entropy log 64 -> score 64.
    uniform = (torch.arange(64.0) + 0.5).view(1, 8, 8)
    assert non_flatness_score(uniform, 0.0, 64.0, num_bins=64) == pytest.approx(64.0, rel=1e-6)
    two_planes = torch.cat([torch.full((1, 4, 8), 1.5), torch.full((1, 4, 8), 4.5)], dim=1)
    assert non_flatness_score(two_planes, 1.0, 5.0) == pytest.approx(2.0, rel=1e-6)
    # out-of-range depths are clamped into the end bins
    assert non_flatness_score(torch.full((1, 4, 4), 99.0), 1.0, 5.0) == pytest.approx(1.0)


def test_ssim_matches_scikit_image_gaussian_ssim() -> None:
    from skimage.metrics import structural_similarity

    torch.manual_seed(2)
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    expected = [
        structural_similarity(x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), data_range=2.0,
                              channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for i in range(2)
    ]
    assert ssim(x, y, reduction="none").numpy() == pytest.approx(expected, abs=1e-5)


def test_object_region_is_the_pixels_whose_surface_lies_in_the_ball_and_the_ratio_is_a_median():
    from vq3d.eval.metrics import object_region, region_depth_ratio
    from vq3d.render.cameras import canonical_cameras

    origins, dirs = canonical_cameras(1, 1.5, 45.0).rays(24, 24)
    # a ball of radius 0.4 at the origin in front of a wall 3.0 away: ray-sphere hits by hand
    b = (origins * dirs).sum(-1)
    disc = b**2 - ((origins * origins).sum(-1) - 0.4**2)
    hit = disc > 0
    t_ball = -b - torch.sqrt(disc.clamp_min(0))
    true = torch.where(hit, t_ball, torch.full_like(t_ball, 3.0))[:, None]  # (1, 1, H, W)
    region = object_region(true, origins, dirs, torch.zeros(1, 3), torch.tensor([0.4]))
    assert torch.equal(region[:, 0], hit)
    rendered = torch.where(region, 2.0 * true, true)  # the ball twice as far, the wall right
    assert region_depth_ratio(rendered, true, region).item() == pytest.approx(2.0)
    assert region_depth_ratio(rendered, true, ~region).item() == pytest.approx(1.0)
    assert torch.isnan(region_depth_ratio(rendered, true, torch.zeros_like(region))).all()
