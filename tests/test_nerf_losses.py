"""Mip-NeRF 360 distortion and interlevel losses against their definitions."""

import torch

from vq3d.losses.nerf import distortion_loss, interlevel_loss, outer_weights


def _random_histograms(rays, k, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    inner = torch.sort(torch.rand(rays, k - 1, generator=gen, dtype=dtype), dim=-1).values
    edges = torch.cat([torch.zeros(rays, 1, dtype=dtype), inner, torch.ones(rays, 1, dtype=dtype)], dim=-1)
    weights = torch.rand(rays, k, generator=gen, dtype=dtype) ** 2
    weights = weights / weights.sum(-1, keepdim=True) * torch.rand(rays, 1, generator=gen, dtype=dtype)
    return edges, weights


def test_linear_time_distortion_equals_the_quadratic_definition():
    edges, weights = _random_histograms(32, 11)
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    width = edges[:, 1:] - edges[:, :-1]
    distance = (mid[:, :, None] - mid[:, None, :]).abs()
    pairwise = (weights[:, :, None] * weights[:, None, :] * distance).sum((1, 2))
    quadratic = (pairwise + (weights**2 * width).sum(-1) / 3).mean()
    assert torch.allclose(distortion_loss(weights, edges), quadratic, rtol=1e-12)


def test_distortion_prefers_concentrated_weights():
    edges = torch.linspace(0, 1, 11).unsqueeze(0)
    spread = torch.full((1, 10), 0.1)
    peaked = torch.zeros(1, 10)
    peaked[0, 4] = 1.0
    assert distortion_loss(peaked, edges) < distortion_loss(spread, edges)


def test_outer_weights_sum_every_overlapping_proposal_interval():
    nerf_edges, _ = _random_histograms(16, 7, seed=1)
    prop_edges, prop_weights = _random_histograms(16, 9, seed=2)
    got = outer_weights(nerf_edges, prop_edges, prop_weights)
    for r in range(16):
        for j in range(6):
            lo, hi = nerf_edges[r, j], nerf_edges[r, j + 1]
            overlap = (prop_edges[r, 1:] > lo) & (prop_edges[r, :-1] < hi)
            assert torch.isclose(got[r, j], prop_weights[r][overlap].sum())


def test_interlevel_loss_is_zero_when_the_proposal_bounds_the_nerf_histogram():
    edges, weights = _random_histograms(8, 6, seed=3)
    # identical histograms (up to the rounding of prefix sums)
    assert interlevel_loss(weights, edges, [weights], [edges]) < 1e-20
    coarse_edges = torch.tensor([[0.0, 1.0]], dtype=edges.dtype).expand(8, 2)
    coarse = weights.sum(-1, keepdim=True)  # one interval holding all the weight
    assert interlevel_loss(weights, edges, [coarse], [coarse_edges]) < 1e-20
    looser = weights * 1.5  # a proposal that over-covers every interval
    assert interlevel_loss(weights, edges, [looser], [edges]) == 0


def test_interlevel_loss_is_positive_when_the_proposal_misses_weight():
    edges = torch.linspace(0, 1, 5).unsqueeze(0)
    nerf = torch.tensor([[0.0, 0.6, 0.3, 0.0]])
    prop = torch.tensor([[0.0, 0.6, 0.0, 0.0]], requires_grad=True)  # nothing where nerf has 0.3
    nerf_leaf = nerf.clone().requires_grad_()
    loss = interlevel_loss(nerf_leaf, edges, [prop], [edges])
    expected = (0.3**2 / (0.3 + 1e-7)) / 4  # one violating interval, mean over 4
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert nerf_leaf.grad is None or nerf_leaf.grad.abs().sum() == 0  # NeRF weights are detached
    assert prop.grad[0, 2] < 0  # raising the proposal weight there lowers the loss


def test_interlevel_loss_sums_over_proposal_levels():
    edges = torch.linspace(0, 1, 3).unsqueeze(0)
    nerf = torch.tensor([[0.5, 0.5]])
    miss = torch.tensor([[1.0, 0.0]])
    one = interlevel_loss(nerf, edges, [miss], [edges])
    assert torch.isclose(interlevel_loss(nerf, edges, [miss, miss], [edges, edges]), 2 * one)
    assert interlevel_loss(nerf, edges, [], []) == 0
