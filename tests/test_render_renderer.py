"""The renderer end to end: known scenes (a dense sphere on analytic triplanes, a thin shell from
a feature function) rendered from several cameras against ray-sphere geometry; output contract;
chunking, checkpointing and recomputation give the same results; gradient routing."""

import math
from dataclasses import replace

import pytest
import torch

from vq3d.config import RenderConfig, tiny
from vq3d.losses.nerf import distortion_loss, interlevel_loss
from vq3d.render.cameras import canonical_cameras, disc_offsets_to_cameras
from vq3d.render.renderer import Renderer
from vq3d.render.samplers import s_to_disparity

RADIUS = 0.5
COLOUR = torch.tensor([0.8, 0.3, 0.1])


def _cfg(**overrides) -> RenderConfig:
    base = RenderConfig(proposal_samples=(64, 64), nerf_samples=32, mlp_layers=1, far=6.0, background="white",
                        camera_distance=1.5, fov_deg=45.0)
    return replace(base, **overrides)


def _set_density_mlps(renderer: Renderer, sharpness: float, offset: float) -> None:
    """One-layer MLPs reading feature 0 = f: density = softplus(offset - sharpness * f), colour COLOUR."""
    with torch.no_grad():
        for mlp in (renderer.proposal_mlp, renderer.nerf_mlp):
            linear = mlp.linears[0]
            linear.weight.zero_()
            linear.bias.zero_()
            linear.weight[0, 0] = -sharpness
            linear.bias[0] = offset + 1.0  # the density head is softplus(raw - 1)
        renderer.nerf_mlp.linears[0].bias[1:] = torch.logit(COLOUR)


def _sphere_planes(resolution: int = 64) -> torch.Tensor:
    """Planes whose summed channel 0 is |x|^2: each plane stores u^2 of its own u axis (x, y, z)."""
    centres = -2.0 + 4.0 * (torch.arange(resolution) + 0.5) / resolution
    planes = torch.zeros(1, 3, 1, resolution, resolution)
    planes[:, :, 0] = (centres**2).view(1, 1, resolution)  # depends on the column (u) only
    return planes


def _ray_sphere(origins, dirs, radius):
    """Distance to the first hit (nan on a miss) and the distance of closest approach."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    closest = torch.sqrt((origins * origins).sum(-1) - b**2)
    return -b - torch.sqrt(b**2 - c), closest


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.25, -0.2)])
def test_triplane_sphere_renders_at_the_analytic_depth_from_two_cameras(offset):
    cfg = _cfg()
    renderer = Renderer(cfg, feature_dim=1)
    _set_density_mlps(renderer, sharpness=20000.0, offset=20000.0 * RADIUS**2)
    cams = disc_offsets_to_cameras(torch.tensor([offset]), cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        out = renderer.render_cameras(_sphere_planes(), cams, 12, 12)
    origins, dirs = cams.rays(12, 12)
    t_hit, closest = _ray_sphere(origins[0], dirs[0], RADIUS)
    hit, miss = closest < RADIUS - 0.05, closest > RADIUS + 0.05
    assert hit.sum() > 20 and miss.sum() > 20
    depth, opacity, rgb = out.depth[0, 0], out.opacity[0, 0], (out.rgb[0].permute(1, 2, 0) + 1) / 2
    assert (depth[hit] - t_hit[hit]).abs().max() < 0.03
    assert (out.disparity[0, 0][hit] - 1 / t_hit[hit]).abs().max() < 0.03
    assert opacity[hit].min() > 0.99 and opacity[miss].max() < 0.01
    assert (rgb[hit] - COLOUR).abs().max() < 0.01
    assert (rgb[miss] - 1.0).abs().max() < 0.01  # white background


def test_scene_scale_shrinks_the_world_that_the_planes_cover():
    # the planes hold |c|^2 of contracted points c, so with c = 2 x the sphere |c| = RADIUS is
    # the world sphere of radius RADIUS / 2 -- in the render and in `density` alike
    scale = 2.0
    cfg = _cfg(scene_scale=scale)
    renderer = Renderer(cfg, feature_dim=1)
    _set_density_mlps(renderer, sharpness=20000.0, offset=20000.0 * RADIUS**2)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        out = renderer.render_cameras(_sphere_planes(), cams, 12, 12)
        inside = renderer.density(_sphere_planes(), torch.tensor([[[0.0, 0.0, 0.8 * RADIUS / scale]]]))
        outside = renderer.density(_sphere_planes(), torch.tensor([[[0.0, 0.0, 1.2 * RADIUS / scale]]]))
    origins, dirs = cams.rays(12, 12)
    t_hit, closest = _ray_sphere(origins[0], dirs[0], RADIUS / scale)
    hit, miss = closest < RADIUS / scale - 0.03, closest > RADIUS / scale + 0.03
    assert hit.sum() > 4 and miss.sum() > 20
    assert (out.depth[0, 0][hit] - t_hit[hit]).abs().max() < 0.03
    assert out.opacity[0, 0][hit].min() > 0.99 and out.opacity[0, 0][miss].max() < 0.01
    assert inside.item() > 100 and outside.item() < 1e-3
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="scene_scale"):
            Renderer(replace(cfg, scene_scale=bad), feature_dim=1)


def test_thin_dense_shell_puts_the_expected_depth_on_the_shell():
    shell, half_width = 0.6, 0.04

    def features(points):  # contracted points (B, M, 3) -> (B, M, 1): 1 on the shell, else 0
        radius = points.norm(dim=-1, keepdim=True)
        return ((radius - shell).abs() < half_width).float()

    cfg = _cfg(background="none", far=math.inf)
    renderer = Renderer(cfg, feature_dim=1)
    _set_density_mlps(renderer, sharpness=-1000.0, offset=-30.0)  # density ~1000 on the shell, ~0 off it
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        out = renderer.render_cameras(features, cams, 6, 6)
    origins, dirs = cams.rays(6, 6)
    t_front, closest = _ray_sphere(origins[0], dirs[0], shell + half_width)
    hit = closest < shell  # rays that cross the shell's full thickness
    assert hit.sum() >= 16
    assert (out.depth[0, 0][hit] - t_front[hit]).abs().max() < 0.03
    assert (out.depth[0, 0][~hit] > 10).all()  # missing rays end in the last interval, at "infinity"
    assert torch.allclose(out.opacity, torch.ones_like(out.opacity))  # background "none" saturates


def test_output_contract_and_per_sample_tensors():
    cfg = replace(tiny().render, proposal_samples=(8, 6), nerf_samples=5)
    renderer = Renderer(cfg, feature_dim=4)
    planes = torch.randn(2, 3, 4, 8, 8)
    cams = canonical_cameras(2, cfg.camera_distance, cfg.fov_deg)
    gen = torch.Generator().manual_seed(0)
    out = renderer.render_cameras(planes, cams, 5, 7, train=True, step=3, generator=gen)
    assert out.rgb.shape == (2, 3, 5, 7) and out.rgb.min() >= -1 and out.rgb.max() <= 1
    for name in ("depth", "disparity", "opacity"):
        assert getattr(out, name).shape == (2, 1, 5, 7)
    assert out.weights.shape == (2, 35, 5) and out.sample_disparity.shape == (2, 35, 5)
    assert out.spacing_edges.shape == (2, 35, 6)
    assert [w.shape for w in out.proposal_weights] == [(2, 35, 8), (2, 35, 6)]
    assert [e.shape for e in out.proposal_spacing_edges] == [(2, 35, 9), (2, 35, 7)]
    assert torch.allclose(out.weights.sum(-1), out.opacity.flatten(1), atol=1e-6)
    assert (out.opacity <= 1 + 1e-6).all()
    mid = 0.5 * (out.spacing_edges[..., 1:] + out.spacing_edges[..., :-1])
    assert torch.allclose(out.sample_disparity, s_to_disparity(mid, cfg.near, cfg.far))
    assert (out.spacing_edges[..., 1:] >= out.spacing_edges[..., :-1]).all()


def test_a_ray_subset_renders_exactly_those_pixels_of_the_full_image():
    cfg = replace(tiny().render, proposal_samples=(8,), nerf_samples=5)
    renderer = Renderer(cfg, feature_dim=4)
    planes = torch.randn(2, 3, 4, 8, 8)
    cams = disc_offsets_to_cameras(torch.tensor([[0.0, 0.0], [0.2, -0.1]]), cfg.camera_distance, cfg.fov_deg)
    pixels = torch.tensor([[0, 7, 13, 34], [34, 2, 20, 9]])  # raster indices into 5 x 7 images
    with torch.no_grad():
        full = renderer.render_cameras(planes, cams, 5, 7)
        part = renderer.render_cameras(planes, cams, 5, 7, pixels=pixels)
    assert part.rgb.shape == (2, 3, 1, 4) and part.disparity.shape == (2, 1, 1, 4)
    for name in ("rgb", "depth", "disparity", "opacity"):
        expected = getattr(full, name).flatten(2).gather(2, pixels[:, None].expand(-1, getattr(full, name).shape[1], -1))
        assert torch.allclose(getattr(part, name).flatten(2), expected, atol=1e-6), name
    assert torch.allclose(part.weights, full.weights.gather(1, pixels[..., None].expand(-1, -1, 5)), atol=1e-6)
    with pytest.raises(ValueError, match="pixels"):
        renderer.render_cameras(planes, cams, 5, 7, pixels=pixels[:1])


def test_first_level_samples_are_linear_in_disparity_with_far_at_infinity():
    cfg = replace(tiny().render, far=math.inf, proposal_samples=(8,), nerf_samples=4)
    renderer = Renderer(cfg, feature_dim=2)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        out = renderer.render_cameras(torch.randn(1, 3, 2, 4, 4), cams, 2, 2)
    disp = s_to_disparity(out.proposal_spacing_edges[0], cfg.near, cfg.far)
    step = torch.full((1, 4, 8), -1 / (8 * cfg.near))
    assert torch.allclose(disp[..., 1:] - disp[..., :-1], step, atol=1e-5)
    assert (disp[..., -1] == 0).all()


def test_chunked_inference_equals_one_pass():
    cfg = replace(tiny().render, chunk_rays=7)
    renderer = Renderer(cfg, feature_dim=3)
    planes = torch.randn(2, 3, 3, 8, 8)
    cams = canonical_cameras(2, cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        chunked = renderer.render_cameras(planes, cams, 6, 6)
        renderer.cfg = replace(cfg, chunk_rays=10_000)
        whole = renderer.render_cameras(planes, cams, 6, 6)
    assert torch.allclose(chunked.rgb, whole.rgb, atol=1e-6)
    assert torch.allclose(chunked.weights, whole.weights, atol=1e-6)


def _train_grads(cfg, planes, cams, state):
    torch.manual_seed(0)
    renderer = Renderer(cfg, feature_dim=planes.shape[2])
    renderer.load_state_dict(state)
    leaf = planes.clone().requires_grad_()
    gen = torch.Generator().manual_seed(1)
    out = renderer.render_cameras(leaf, cams, 6, 6, train=True, step=4, generator=gen)
    loss = (out.rgb.square().mean() + out.depth.mean() + distortion_loss(out.weights, out.spacing_edges)
            + interlevel_loss(out.weights, out.spacing_edges, out.proposal_weights, out.proposal_spacing_edges))
    grads = torch.autograd.grad(loss, [leaf, *renderer.parameters()])
    return out.rgb.detach(), grads


@pytest.mark.parametrize("variant", [
    dict(recompute=True, feature_cache_mb=0.0),  # keep the table, recompute features
    dict(recompute=True, feature_cache_mb=1e3),  # save the features
    dict(recompute=False),
    dict(checkpoint_chunks=True, chunk_rays=20),
])
def test_memory_saving_paths_give_the_same_image_and_gradients(variant):
    base = replace(tiny().render, proposal_samples=(8, 6), nerf_samples=5, plane_reduce="mean")
    planes = torch.randn(2, 3, 3, 8, 8)
    cams = canonical_cameras(2, base.camera_distance, base.fov_deg)
    state = Renderer(base, feature_dim=3).state_dict()
    ref_rgb, ref_grads = _train_grads(replace(base, recompute=False), planes, cams, state)
    rgb, grads = _train_grads(replace(base, **variant), planes, cams, state)
    assert torch.allclose(rgb, ref_rgb, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("proposal_feature_grad", [False, True])
def test_interlevel_loss_reaches_the_planes_only_when_asked(proposal_feature_grad):
    # seeded (tests/conftest.py): with random planes, 4x4 rays and the tiny preset's 8 + 8
    # samples, about 1 draw in 15 gave an interlevel loss of exactly 0 (every NeRF weight under
    # its proposal bound)
    cfg = replace(tiny().render, proposal_feature_grad=proposal_feature_grad)
    renderer = Renderer(cfg, feature_dim=3)
    planes = torch.randn(1, 3, 3, 8, 8, requires_grad=True)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    out = renderer.render_cameras(planes, cams, 8, 8, train=True, generator=torch.Generator().manual_seed(0))
    loss = interlevel_loss(out.weights, out.spacing_edges, out.proposal_weights, out.proposal_spacing_edges) * 1e3
    assert loss > 0
    loss = loss + 0 * out.rgb.sum()  # keep the NeRF branch in the graph
    g_planes, *g_prop = torch.autograd.grad(loss, [planes, *renderer.proposal_mlp.parameters()])
    assert sum(g.abs().sum() for g in g_prop) > 0
    assert (g_planes.abs().sum() > 0) == proposal_feature_grad


def test_feature_callable_gets_gradients_from_the_nerf_level():
    latent = torch.randn(1, 1, 4, requires_grad=True)
    weight = torch.randn(3, 4)

    def features(points):  # an "implicit" source: contracted points -> features
        return torch.tanh(points @ weight + latent)

    cfg = tiny().render
    renderer = Renderer(cfg, feature_dim=4)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    out = renderer.render_cameras(features, cams, 4, 4, train=True)
    (grad,) = torch.autograd.grad(out.rgb.mean(), latent)
    assert grad.abs().sum() > 0


def test_jitter_is_reproducible_with_a_generator_and_absent_in_evaluation():
    cfg = tiny().render
    renderer = Renderer(cfg, feature_dim=3)
    planes = torch.randn(1, 3, 3, 8, 8)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    with torch.no_grad():
        a, b = (renderer.render_cameras(planes, cams, 4, 4, train=True,
                                        generator=torch.Generator().manual_seed(5)) for _ in range(2))
        c = renderer.render_cameras(planes, cams, 4, 4, train=False)
        d = renderer.render_cameras(planes, cams, 4, 4, train=False)
    assert torch.equal(a.spacing_edges, b.spacing_edges) and torch.equal(c.spacing_edges, d.spacing_edges)
    assert not torch.equal(a.proposal_spacing_edges[0], c.proposal_spacing_edges[0])


def test_bad_inputs_are_rejected():
    cfg = tiny().render
    renderer = Renderer(cfg, feature_dim=3)
    cams = canonical_cameras(2, cfg.camera_distance, cfg.fov_deg)
    with pytest.raises(ValueError):
        renderer.render_cameras(torch.randn(1, 3, 3, 8, 8), cams, 2, 2)  # batch mismatch
    with pytest.raises(ValueError):
        Renderer(replace(cfg, near=0.0), feature_dim=3)
    with pytest.raises(ValueError):
        Renderer(replace(cfg, background="grey"), feature_dim=3)
