"""The proposal / NeRF MLPs and their memory-lean autograd Functions (gradchecks)."""

import pytest
import torch
import torch.nn.functional as F

from vq3d.render.fields import FieldMLP, softplus_and_sigmoid
from vq3d.render.triplane import planes_to_table, triplane_lookup


def test_softplus_and_sigmoid_match_their_definitions():
    z = torch.linspace(-120, 120, 20001)
    sp, s = softplus_and_sigmoid(z.clone())
    assert (sp.double() - F.softplus(z.double())).abs().max() < 1e-6
    assert (s.double() - torch.sigmoid(z.double())).abs().max() < 1e-7


def test_heads_are_softplus_density_and_sigmoid_colour():
    mlp = FieldMLP(3, 5, 2, with_rgb=True)
    x = torch.randn(10, 3)
    h = F.softplus(F.linear(x, mlp.linears[0].weight, mlp.linears[0].bias))
    raw = F.linear(h, mlp.linears[1].weight, mlp.linears[1].bias)
    density, rgb = mlp(x)
    assert torch.allclose(density, F.softplus(raw[:, 0] - 1.0), atol=1e-6)
    assert torch.allclose(rgb, torch.sigmoid(raw[:, 1:]), atol=1e-6)
    assert FieldMLP(3, 5, 2, with_rgb=False)(x)[1] is None


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("with_rgb", [True, False])
def test_recomputed_mlp_gradcheck(layers, with_rgb):
    torch.manual_seed(0)
    mlp = FieldMLP(4, 6, layers, with_rgb).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        density, rgb = mlp(x)
        return density if rgb is None else torch.cat([density.unsqueeze(-1), rgb], -1)

    assert torch.autograd.gradcheck(f, (x, *mlp.parameters()))


@pytest.mark.parametrize("keep_table", [True, False])
@pytest.mark.parametrize("with_rgb", [True, False])
def test_fused_triplane_field_gradcheck_and_equivalence(keep_table, with_rgb):
    torch.manual_seed(1)
    mlp = FieldMLP(3, 5, 2, with_rgb).double()
    planes = torch.randn(2, 3, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(2, 30, 3, dtype=torch.float64) * 4 - 2

    def fused(planes, *params):
        density, rgb = mlp.from_triplanes(planes_to_table(planes), coords, "mean", keep_table)
        return density if rgb is None else torch.cat([density.unsqueeze(-1), rgb], -1)

    assert torch.autograd.gradcheck(fused, (planes, *mlp.parameters()))
    plain = mlp.raw(triplane_lookup(planes_to_table(planes), coords, "mean"))
    assert torch.allclose(fused(planes).reshape(plain.shape), plain, atol=1e-12)


def test_fused_field_rejects_coordinates_that_need_gradients():
    mlp = FieldMLP(2, 4, 2, with_rgb=True)
    table = torch.randn(1, 3, 4, 4, 2, requires_grad=True)
    with pytest.raises(ValueError):
        mlp.from_triplanes(table, torch.zeros(1, 3, 3, requires_grad=True))
