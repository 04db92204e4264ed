"""Volume compositing against closed forms (Beer-Lambert), plus gradcheck."""

import math

import pytest
import torch

from vq3d.render.compositing import MAX_DELTA, alpha_weights, composite, interval_lengths


def test_constant_density_slab_transmits_exp_of_minus_sigma_length():
    sigma, slab = 2.5, (1.0, 1.6)
    # empty space, the slab split into uneven intervals, empty space behind
    t_edges = torch.tensor([0.2, 1.0, 1.1, 1.35, 1.6, 3.0])
    density = torch.tensor([0.0, sigma, sigma, sigma, 0.0])
    weights = alpha_weights(density, interval_lengths(t_edges))
    transmitted = 1.0 - weights.sum()
    assert transmitted.item() == pytest.approx(math.exp(-sigma * (slab[1] - slab[0])), rel=1e-5)
    # light reaching depth t inside the slab is exp(-sigma (t - 1))
    reached = 1.0 - torch.cumsum(weights, 0)
    assert reached[1].item() == pytest.approx(math.exp(-sigma * 0.1), rel=1e-5)
    assert reached[2].item() == pytest.approx(math.exp(-sigma * 0.35), rel=1e-5)


def test_weights_are_nonnegative_and_sum_to_the_opacity_at_most_one():
    torch.manual_seed(0)
    density = torch.rand(50, 20) * 5
    t_edges = torch.sort(torch.rand(50, 21) * 10, dim=-1).values
    weights = alpha_weights(density, interval_lengths(t_edges))
    assert (weights >= 0).all()
    assert (weights.sum(-1) <= 1 + 1e-6).all()
    optical_depth = (density * interval_lengths(t_edges)).sum(-1)
    assert torch.allclose(weights.sum(-1), 1 - torch.exp(-optical_depth), atol=1e-5)


def test_opaque_last_interval_saturates_every_ray():
    density = torch.rand(10, 6) * 0.01
    weights = alpha_weights(density, torch.full((10, 6), 0.1), opaque_last=True)
    assert torch.allclose(weights.sum(-1), torch.ones(10))


def test_infinite_last_interval_is_finite():
    t_edges = torch.tensor([[0.5, 1.0, 2.0, math.inf]])
    deltas = interval_lengths(t_edges)
    assert deltas[0, -1] == MAX_DELTA
    weights = alpha_weights(torch.tensor([[0.0, 0.0, 1e-3]]), deltas)
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("opaque_last", [False, True])
def test_compositing_gradcheck(opaque_last):
    torch.manual_seed(1)
    density = (torch.rand(4, 7, dtype=torch.float64) * 3).requires_grad_()
    deltas = torch.rand(4, 7, dtype=torch.float64) * 0.5
    assert torch.autograd.gradcheck(lambda d: alpha_weights(d, deltas, opaque_last), (density,))
    rgb = torch.rand(4, 7, 3, dtype=torch.float64, requires_grad=True)
    def render(d, c):
        return composite(alpha_weights(d, deltas, opaque_last), c)

    assert torch.autograd.gradcheck(render, (density, rgb))


def test_composite_is_the_weighted_sum():
    weights = torch.tensor([[0.2, 0.5, 0.3]])
    values = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert torch.allclose(composite(weights, values), torch.tensor([[0.5, 0.8]]))
