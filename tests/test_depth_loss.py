import math

import pytest
import torch

from vq3d.losses.depth import depth_loss, normalize_disparity, scale_loss, solve_scale_shift


def test_closed_form_matches_generic_weighted_least_squares():
    g = torch.Generator().manual_seed(0)
    W = torch.rand(3, 20, 6, generator=g, dtype=torch.float64)
    D = torch.rand(3, 20, 6, generator=g, dtype=torch.float64)
    d = torch.rand(3, 20, generator=g, dtype=torch.float64)
    s, t = solve_scale_shift(W, D, d)
    for b in range(3):
        A = torch.stack([D[b].flatten(), torch.ones(120, dtype=torch.float64)], dim=1)
        sw = W[b].flatten().sqrt()
        y = d[b][:, None].expand(20, 6).flatten()
        sol = torch.linalg.lstsq(A * sw[:, None], (y * sw)[:, None]).solution.flatten()
        assert torch.allclose(torch.stack([s[b], t[b]]), sol, atol=1e-9)


def one_surface(B=2, N=30, L=8, seed=0):
    """Each ray puts all weight on one sample whose disparity is known."""
    g = torch.Generator().manual_seed(seed)
    D = torch.rand(B, N, L, generator=g, dtype=torch.float64)
    hit = torch.randint(L, (B, N), generator=g)
    W = torch.nn.functional.one_hot(hit, L).to(torch.float64)
    surface = torch.gather(D, 2, hit[..., None])[..., 0]
    return W, D, surface


def test_zero_for_perfect_one_surface_prediction_up_to_scale_and_shift():
    W, D, surface = one_surface()
    target = 2.5 * surface - 0.3
    loss, s, t = depth_loss(W, D, target)
    assert loss.abs() < 1e-12
    assert torch.allclose(s, torch.full_like(s, 2.5)) and torch.allclose(t, torch.full_like(t, -0.3))


def test_invariant_to_scale_and_shift_of_the_target():
    g = torch.Generator().manual_seed(1)
    W = torch.rand(2, 25, 5, generator=g, dtype=torch.float64)
    D = torch.rand(2, 25, 5, generator=g, dtype=torch.float64)
    d = torch.rand(2, 25, generator=g, dtype=torch.float64)
    base, _, _ = depth_loss(W, D, d)
    scaled, _, _ = depth_loss(W, D, 3.0 * d + 7.0)
    # Eq. 2's residual scales with the target: invariant after dividing by the scale squared
    assert torch.allclose(scaled / 9.0, base)
    shifted, _, _ = depth_loss(W, D, d + 4.0)
    assert torch.allclose(shifted, base)


def test_spread_weights_are_penalised_more_than_concentrated_ones():
    W, D, surface = one_surface(seed=2)
    spread = torch.full_like(W, 1.0 / W.shape[-1])
    concentrated, _, _ = depth_loss(W, D, surface)
    diffuse, _, _ = depth_loss(spread, D, surface)
    assert diffuse > concentrated + 1e-3


def test_gradient_through_st_is_configurable():
    W, D, surface = one_surface(seed=3)
    W = (0.5 * W + 0.5 / W.shape[-1]).requires_grad_(True)
    loss_with, s_with, _ = depth_loss(W, D, 2.0 * surface, grad_through_st=True)
    loss_without, s_without, _ = depth_loss(W, D, 2.0 * surface, grad_through_st=False)
    # s*, t* minimise Eq. 1, so the depth loss's own gradient through them vanishes
    # (envelope theorem) ...
    g_with = torch.autograd.grad(loss_with, W, retain_graph=True)[0]
    g_without = torch.autograd.grad(loss_without, W, retain_graph=True)[0]
    assert torch.allclose(g_with, g_without, atol=1e-10)
    # ... but the scale loss (Eq. 3) reaches the weights only through s*.
    assert s_with.requires_grad and not s_without.requires_grad
    g_scale = torch.autograd.grad(scale_loss(s_with, 1.0), W)[0]
    assert g_scale.abs().sum() > 0


def test_scale_loss_terms():
    s = torch.tensor([-0.5, 0.5, 2.0])
    # relu(-s) + lambda * relu(s - 1): [0.5, 0, lambda * 1]
    assert torch.allclose(scale_loss(s, small_scale=0.1), torch.tensor((0.5 + 0.0 + 0.1) / 3))


def test_normalize_disparity_per_image():
    x = torch.tensor([[[1.0, 3.0]], [[2.0, 2.5]]])
    n = normalize_disparity(x)
    assert torch.allclose(n, torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]]))


def test_scale_loss_threshold_is_configurable():
    s = torch.tensor([1.5, 2.5])
    # relu(s - 2): [0, 0.5] -> mean 0.25 with lambda 1
    assert torch.allclose(scale_loss(s, small_scale=1.0, max_scale=2.0), torch.tensor(0.25))


def test_scale_floor_leaves_eq2_alone_above_it_and_fits_t_for_the_floor_below_it():
    g = torch.Generator().manual_seed(4)
    W = torch.rand(2, 25, 5, generator=g, dtype=torch.float64)
    D = torch.rand(2, 25, 5, generator=g, dtype=torch.float64)
    W0, D0, surface = one_surface(seed=4)
    target = 0.7 * surface + 0.1  # s* = 0.7
    exact, s, t = depth_loss(W0, D0, target)
    floored_low, s_low, t_low = depth_loss(W0, D0, target, min_scale=0.5)  # below s*: no change
    assert torch.allclose(floored_low, exact) and torch.allclose(s_low, s) and torch.allclose(t_low, t)

    d = torch.rand(2, 25, generator=g, dtype=torch.float64)
    loss, s_f, t_f = depth_loss(W, D, d, min_scale=3.0)  # far above the free s*
    assert torch.allclose(s_f, torch.full_like(s_f, 3.0))
    for b in range(2):  # t is the weighted least-squares shift for s fixed at the floor
        residual = d[b][:, None] - 3.0 * D[b]
        t_ref = (W[b] * residual).sum() / W[b].sum()
        assert torch.allclose(t_f[b], t_ref)
    per_image = [(W[b] * (3.0 * D[b] + t_f[b] - d[b][:, None]).square()).sum() / 25 for b in range(2)]
    assert torch.allclose(loss, torch.stack(per_image).mean())
    free, _, _ = depth_loss(W, D, d)
    assert loss > free  # a forced scale can only fit worse than the optimum


def test_scale_floor_gives_a_gradient_along_rays_that_the_saddle_lacks():
    # weights spread evenly along rays whose samples all share one disparity profile: s* = 0
    L = 6
    D = torch.linspace(0.0, 2.0, L, dtype=torch.float64).expand(1, 40, L).contiguous()
    d = torch.rand(1, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    W = torch.full((1, 40, L), 1.0 / L, dtype=torch.float64, requires_grad=True)
    loss, s, _ = depth_loss(W, D, d)
    assert s.abs().max() < 1e-9
    g = torch.autograd.grad(loss, W)[0]
    assert (g - g[..., :1]).abs().max() < 1e-12  # no preference along any ray
    loss, _, _ = depth_loss(W, D, d, min_scale=1.0)
    g = torch.autograd.grad(loss, W)[0]
    # now near targets (d high) prefer near samples (high D), far targets far ones
    near, far = d[0].argmax(), d[0].argmin()
    assert g[0, near, -1] < g[0, near, 0] and g[0, far, 0] < g[0, far, -1]


def test_metric_loss_is_zero_only_at_the_true_disparity_and_reports_its_scale():
    from vq3d.losses.depth import metric_depth_loss

    W, D, surface = one_surface(seed=4)
    loss, s = metric_depth_loss(W, D, surface)
    assert loss.abs() < 1e-12 and torch.allclose(s, torch.ones_like(s))
    # unlike Eq. 1-2, a scene placed at another distance (shifted disparity) is penalised
    shifted, _ = metric_depth_loss(W, D, surface + 0.2)
    assert torch.isclose(shifted, torch.tensor(0.04, dtype=shifted.dtype))
    relative, _, _ = depth_loss(W, D, surface + 0.2)
    assert relative.abs() < 1e-12
    # its gradient moves the weights towards the samples at the target disparity
    Wg = torch.full_like(W, 1.0 / W.shape[-1]).requires_grad_(True)
    metric_depth_loss(Wg, D, surface)[0].backward()
    on_surface = Wg.grad[W.bool()]
    assert on_surface.mean() < Wg.grad[~W.bool()].mean()


def test_an_estimators_target_fits_two_fronto_parallel_planes_exactly_in_camera_axis_disparity_only():
    """Walls at z = 1.5 (left half) and z = 3 (right half) seen by the canonical camera; an
    estimator's target is affine in 1 / z. Along the camera axis Eq. 2 reaches 0 at the right
    s*, t*; with 1 / t (the ray distance) no s*, t* fits: 1 / t = cos / z curves across each wall."""
    from dataclasses import replace

    from vq3d.config import LossConfig, RenderConfig
    from vq3d.losses.depth_target import loss_disparity, relative_target
    from vq3d.render.cameras import axis_cosines, canonical_cameras
    from vq3d.render.renderer import RenderOutput

    res, render_cfg = 32, RenderConfig(camera_distance=1.5, fov_deg=45.0)
    _, dirs = canonical_cameras(1, 1.5, 45.0).rays(res, res)
    cos = -dirs[..., 2]  # (1, H, W): the camera looks down -z, so cos = -d_z (independent of axis_cosines)
    assert torch.allclose(axis_cosines(45.0, res, res)[None], cos, atol=1e-6)
    corner = math.tan(math.radians(22.5)) * (res - 1) / res  # the corner pixel centre's offset / focal
    assert float(1 / cos.min()) == pytest.approx(math.sqrt(1 + 2 * corner**2), rel=1e-5)  # 15% off there
    z = torch.where(torch.arange(res) < res // 2, 1.5, 3.0).expand(1, res, res)
    t = z / cos  # ray distances to the walls
    n = res * res
    render = RenderOutput(rgb=torch.zeros(1, 3, res, res), depth=t[:, None], disparity=1 / t[:, None],
                          opacity=torch.ones(1, 1, res, res), weights=torch.ones(1, n, 1),
                          sample_disparity=(1 / t).reshape(1, n, 1), spacing_edges=torch.zeros(1, n, 2),
                          axis_cos=axis_cosines(45.0, res, res).reshape(1, n))
    target = (3.0 / z + 0.2)[:, None]  # what an estimator gives: affine in 1 / z
    axis = LossConfig(depth_convention="camera_axis", target_normalization="robust", scale_unit="lookat")
    for cfg in (axis, replace(axis, scale_unit="world"), replace(axis, target_normalization="minmax")):
        loss, s, _ = depth_loss(render.weights, loss_disparity(render, cfg, render_cfg),
                                relative_target(target, cfg).flatten(1))
        assert float(loss) < 1e-10 and float(s) > 0
    ray = replace(axis, depth_convention="ray")
    loss, _, _ = depth_loss(render.weights, loss_disparity(render, ray, render_cfg),
                            relative_target(target, ray).flatten(1))
    assert float(loss) > 1e-4
    # the units: in look-at units the walls' disparities are c / z = 1 and 0.5, so s* is the target's
    # normalized span over 0.5; in world units 1.5 times that
    s_lookat = depth_loss(render.weights, loss_disparity(render, axis, render_cfg), relative_target(target, axis).flatten(1))[1]
    world = replace(axis, scale_unit="world")
    s_world = depth_loss(render.weights, loss_disparity(render, world, render_cfg), relative_target(target, world).flatten(1))[1]
    assert float(s_lookat) == pytest.approx(2.0, rel=1e-4) and float(s_world) == pytest.approx(3.0, rel=1e-4)


def test_the_robust_normalization_ignores_a_few_extreme_pixels_and_min_max_does_not():
    from vq3d.losses.depth import normalize_disparity, robust_normalize_disparity

    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 1, 20, 20, generator=g)  # 400 pixels
    spiked = d.clone()
    spiked[:, 0, 0, :3] = 50.0  # three stray pixels (under 2% of 400)
    robust, plain = robust_normalize_disparity(d), robust_normalize_disparity(spiked)
    mask = torch.ones_like(d, dtype=torch.bool)
    mask[:, 0, 0, :3] = False
    assert torch.allclose(robust[mask], plain[mask], atol=0.03)  # the bulk keeps its units
    assert float(normalize_disparity(spiked)[mask].max()) < 0.05  # min-max squashes the bulk to 2% of its range
    # by hand: nearest-rank 2nd and 98th percentiles map to 0 and 1
    flat = d.flatten(1).sort(dim=1).values
    lo, hi = flat[:, round(0.02 * 399)], flat[:, round(0.98 * 399)]
    assert torch.allclose(robust.flatten(1), (d.flatten(1) - lo[:, None]) / (hi - lo)[:, None])
