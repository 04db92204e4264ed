"""Contraction and triplane lookup: against closed forms and `grid_sample`, plus gradchecks."""

import pytest
import torch
import torch.nn.functional as F

from vq3d.render.contraction import contract
from vq3d.render.triplane import (
    corner_indices,
    corner_rows,
    dense_segment,
    planes_to_table,
    sample_triplanes,
    scatter_corners,
    triplane_lookup,
)


def _grid_sample_reference(planes, coords, reduce):
    """Independent lookup: grid_sample on the XY, YZ, ZX planes (align_corners=False, border)."""
    b, _, c, r, _ = planes.shape
    n = coords.shape[1]
    pairs = torch.stack([coords[..., [0, 1]], coords[..., [1, 2]], coords[..., [2, 0]]], dim=1) / 2.0
    out = F.grid_sample(planes.reshape(b * 3, c, r, r), pairs.reshape(b * 3, 1, n, 2), mode="bilinear",
                        padding_mode="border", align_corners=False).view(b, 3, c, n)
    out = out.mean(1) if reduce == "mean" else out.sum(1)
    return out.permute(0, 2, 1)


# ----------------------------------------------------------------------------- contraction


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_contraction_is_identity_inside_the_unit_ball(norm):
    x = torch.randn(500, 3)
    mag = x.norm(dim=-1, keepdim=True) if norm == "l2" else x.abs().amax(-1, keepdim=True)
    inside = x / mag * torch.rand(500, 1)  # magnitude < 1 in the chosen norm
    assert torch.equal(contract(inside, norm), inside)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_contraction_is_bounded_by_two(norm):
    x = torch.randn(1000, 3) * torch.logspace(0, 8, 1000).unsqueeze(-1)
    y = contract(x, norm)
    mag = y.norm(dim=-1) if norm == "l2" else y.abs().amax(-1)
    assert (mag < 2.0 + 1e-6).all()
    assert mag[-10:].min() > 1.999  # far points approach the boundary


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_contraction_is_continuous_at_the_unit_sphere(norm):
    d = torch.randn(200, 3, dtype=torch.float64)
    d = d / (d.norm(dim=-1, keepdim=True) if norm == "l2" else d.abs().amax(-1, keepdim=True))
    for eps in (1e-3, 1e-6):
        jump = (contract(d * (1 + eps), norm) - contract(d * (1 - eps), norm)).norm(dim=-1)
        assert jump.max() < 4 * eps


def test_contraction_matches_the_formula_outside():
    x = torch.tensor([[3.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    expected = torch.tensor([[5 / 3, 0.0, 0.0], [(2 - 1 / 5) * 3 / 5, (2 - 1 / 5) * 4 / 5, 0.0]])
    assert torch.allclose(contract(x, "l2"), expected)
    y = torch.tensor([[3.0, 1.0, 0.0]])  # L-inf norm 3
    assert torch.allclose(contract(y, "linf"), torch.tensor([[5 / 3, 5 / 9, 0.0]]))


# ----------------------------------------------------------------------------- lookup


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_lookup_matches_grid_sample(reduce):
    torch.manual_seed(0)
    planes = torch.randn(2, 3, 5, 7, 7, dtype=torch.float64)
    coords = torch.rand(2, 300, 3, dtype=torch.float64) * 4.6 - 2.3  # includes the clamped border
    ours = sample_triplanes(planes, coords, reduce)
    assert torch.allclose(ours, _grid_sample_reference(planes, coords, reduce), atol=1e-12)


@pytest.mark.parametrize("plane, axes", [(0, (0, 1)), (1, (1, 2)), (2, (2, 0))])
def test_each_plane_is_read_by_exactly_its_axis_pair(plane, axes):
    torch.manual_seed(1)
    planes = torch.zeros(1, 3, 4, 16, 16)
    planes[:, plane] = torch.randn(1, 4, 16, 16)
    coords = torch.rand(1, 64, 3) * 3 - 1.5
    base = sample_triplanes(planes, coords)
    for axis in range(3):
        moved = coords.clone()
        moved[..., axis] += 0.37
        changed = (sample_triplanes(planes, moved) - base).abs().amax(-1)
        if axis in axes:
            assert (changed > 1e-4).float().mean() > 0.9, f"plane {plane} ignores axis {axis}"
        else:
            assert changed.max() == 0, f"plane {plane} responds to axis {axis}"


def test_planes_are_xy_yz_zx_with_u_the_first_axis_and_texel_centres_exact():
    r = 8
    centres = -2.0 + 4.0 * (torch.arange(r) + 0.5) / r
    planes = torch.zeros(1, 3, 2, r, r)
    planes[:, :, 0] = torch.arange(r, dtype=torch.float32).view(1, 1, r)  # column index u
    planes[:, :, 1] = torch.arange(r, dtype=torch.float32).view(r, 1)  # row index v
    i, j, k = 1, 5, 6
    point = torch.tensor([[[centres[i], centres[j], centres[k]]]])
    feats = sample_triplanes(planes, point)[0, 0]
    # XY reads (u=x, v=y), YZ (u=y, v=z), ZX (u=z, v=x); features are summed
    assert torch.allclose(feats, torch.tensor([i + j + k, j + k + i], dtype=torch.float32))


def test_lookup_gradcheck_in_planes_and_coordinates():
    torch.manual_seed(2)
    planes = torch.randn(2, 3, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    coords = (torch.rand(2, 20, 3, dtype=torch.float64) * 3.6 - 1.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, c: sample_triplanes(p, c, "mean"), (planes, coords))


@pytest.mark.parametrize("r, points", [(6, 400), (64, 20)])  # dense bags per row; bags per texel
def test_segment_scatter_equals_index_add(r, points):
    torch.manual_seed(3)
    c = 5
    coords = torch.rand(2, points, 3) * 5 - 2.5  # some beyond the planes: border texels
    row00, weights = corner_indices(coords, r)
    rows = 2 * 3 * r * r
    assert dense_segment(row00.numel(), rows, c) == (r == 6)  # each case takes its path
    grad = torch.randn(2 * points, c)
    start = torch.randn(rows, c)  # the scatter adds to what `out` holds
    a = scatter_corners(start.clone(), row00, weights, grad, r, 0.5, method="segment")
    b = scatter_corners(start.clone(), row00, weights, grad, r, 0.5, method="index_add")
    # independent: every entry's scaled weight times its gradient added row by row
    rows12 = corner_rows(row00, r)
    ref = start.clone()
    for p in range(rows12.shape[0]):
        for k in range(12):
            ref[rows12[p, k]] += 0.5 * weights.view(-1, 12)[p, k] * grad[p]
    assert torch.allclose(a, ref, atol=1e-5) and torch.allclose(b, ref, atol=1e-5)


def test_lookup_backward_matches_grid_sample_backward():
    torch.manual_seed(4)
    planes = torch.randn(2, 3, 4, 9, 9, requires_grad=True)
    coords = torch.rand(2, 500, 3) * 4 - 2
    g = torch.randn(2, 500, 4)
    (ours,) = torch.autograd.grad(sample_triplanes(planes, coords), planes, g)
    (ref,) = torch.autograd.grad(_grid_sample_reference(planes, coords, "sum"), planes, g)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_channel_last_planes_are_not_copied():
    table = torch.randn(1, 3, 6, 6, 4)
    planes = table.permute(0, 1, 4, 2, 3)  # (B, 3, C, R, R) view of channel-last memory
    assert planes_to_table(planes).data_ptr() == table.data_ptr()
    coords = torch.rand(1, 10, 3) * 4 - 2
    assert torch.allclose(triplane_lookup(table, coords), sample_triplanes(planes.contiguous(), coords))
