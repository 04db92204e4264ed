"""Samplers in s-space: linear-in-disparity spacing, jitter, inverse-CDF resampling, dilation."""

import math

import pytest
import torch

from vq3d.render.samplers import (
    anneal_power,
    dilation_for_level,
    max_dilate_weights,
    propose_edges,
    resample_edges,
    s_to_disparity,
    s_to_t,
    stratified_u,
    uniform_edges,
)


@pytest.mark.parametrize("far", [4.0, math.inf])
def test_evaluation_edges_are_equally_spaced_in_disparity(far):
    near, num = 0.2, 16
    edges = uniform_edges((3,), num)
    disp = s_to_disparity(edges, near, far)
    steps = disp[..., 1:] - disp[..., :-1]
    assert torch.allclose(steps, steps[..., :1].expand_as(steps), atol=1e-5)
    assert torch.allclose(disp[..., 0], torch.tensor(1 / near))
    assert torch.allclose(disp[..., -1], torch.tensor(0.0 if math.isinf(far) else 1 / far))
    t = s_to_t(edges, near, far)
    assert torch.allclose(t[..., 0], torch.tensor(near))
    assert torch.isinf(t[..., -1]).all() if math.isinf(far) else torch.allclose(t[..., -1], torch.tensor(far))


def test_stratified_jitter_stays_in_its_stratum_and_varies():
    num = 8
    gen = torch.Generator().manual_seed(0)
    u = stratified_u((1000,), num, jitter=True, generator=gen)
    k = torch.arange(1, num)
    assert ((u >= (k - 0.5) / num) & (u <= (k + 0.5) / num)).all()
    assert (u[..., 1:] >= u[..., :-1]).all()
    assert u.std(0).min() > 0.02  # actually jittered
    fixed = stratified_u((2,), num, jitter=False)
    assert torch.allclose(fixed, (k / num).expand(2, -1))


def test_resampling_concentrates_samples_where_the_weight_is():
    edges = uniform_edges((4,), 10)
    weights = torch.zeros(4, 10)
    weights[:, 6] = 1.0  # all weight in [0.6, 0.7]
    new = resample_edges(edges, weights, stratified_u((4,), 20, jitter=False))
    interior = new[..., 1:-1]
    assert ((interior >= 0.6 - 1e-4) & (interior <= 0.7 + 1e-4)).float().mean() > 0.99
    assert new[..., 0].eq(0).all() and new[..., -1].eq(1).all()
    assert (new[..., 1:] >= new[..., :-1]).all()


def test_resampling_a_uniform_histogram_is_uniform():
    edges = uniform_edges((2,), 7)
    new = resample_edges(edges, torch.full((2, 7), 1 / 7), stratified_u((2,), 12, jitter=False))
    assert torch.allclose(new, torch.linspace(0, 1, 13).expand(2, -1), atol=1e-5)


def test_annealing_flattens_the_histogram_early_in_training():
    edges = uniform_edges((1,), 4)
    weights = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    u = stratified_u((1,), 40, jitter=False)
    flat = resample_edges(edges, weights, u, anneal=0.0)  # every interval equally likely
    assert torch.allclose(flat, torch.linspace(0, 1, 41).unsqueeze(0), atol=1e-4)
    sharp = resample_edges(edges, weights, u, anneal=1.0)
    assert (sharp[0, 1:-1] < 0.25).float().mean() > 0.9
    assert anneal_power(0, 100, 10.0) == 0.0 and anneal_power(100, 100, 10.0) == 1.0
    assert anneal_power(None, 100, 10.0) == 1.0 and anneal_power(50, 0, 10.0) == 1.0
    values = [anneal_power(s, 100, 10.0) for s in range(0, 101, 10)]
    assert all(a < b for a, b in zip(values, values[1:]))


def _brute_force_dilated_pdf(edges, weights, dilation, points):
    width = edges[1:] - edges[:-1]
    pdf = torch.where(width > 0, weights / width.clamp_min(1e-12), torch.zeros_like(weights))
    covers = (points[:, None] >= edges[None, :-1] - dilation) & (points[:, None] < edges[None, 1:] + dilation)
    return torch.where(covers, pdf[None, :], torch.zeros(())).amax(-1)


@pytest.mark.parametrize("dilation", [0.0, 0.013, 0.1])
def test_max_dilation_matches_its_definition(dilation):
    torch.manual_seed(0)
    for _ in range(5):
        k = 9
        inner = torch.sort(torch.rand(k - 1, dtype=torch.float64)).values
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), inner, torch.ones(1, dtype=torch.float64)])
        weights = torch.rand(k, dtype=torch.float64) ** 3
        weights /= weights.sum()
        new_edges, mass = max_dilate_weights(edges[None], weights[None], dilation)
        new_edges, mass = new_edges[0], mass[0]
        assert torch.isclose(mass.sum(), torch.tensor(1.0, dtype=torch.float64))
        widths = new_edges[1:] - new_edges[:-1]
        keep = widths > 1e-9
        mids = 0.5 * (new_edges[1:] + new_edges[:-1])
        expected = _brute_force_dilated_pdf(edges, weights, dilation, mids) * widths
        expected = expected / expected.sum()
        assert torch.allclose(mass[keep], expected[keep], atol=1e-9)


def test_dilation_schedule_follows_mip_nerf_360():
    assert dilation_for_level(1, [64, 64, 32], 0.5, 0.0025) == pytest.approx(0.0025 + 0.5 / 64)
    assert dilation_for_level(2, [64, 64, 32], 0.5, 0.0025) == pytest.approx(0.0025 + 0.5 / 4096)


def test_propose_edges_in_chunks_equals_one_pass():
    torch.manual_seed(1)
    edges = uniform_edges((3000,), 12)
    weights = torch.rand(3000, 12)
    u = stratified_u((3000,), 9, jitter=True, generator=torch.Generator().manual_seed(0))
    chunked = propose_edges(edges, weights, u, dilation=0.02, anneal=0.7)
    d_edges, d_weights = max_dilate_weights(edges, weights, 0.02)
    assert torch.allclose(chunked, resample_edges(d_edges, d_weights, u, 0.7))
