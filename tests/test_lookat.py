"""The look-at prior (vq3d.losses.lookat): its value against a hand computation on a rendered
sphere, its central square, that it is off, with the ray subset untouched, when its switch is;
the per-image subject target against ray-traced balls and a ring; and the demo preset's Eq. 3
threshold from the camera model (one pixel of parallax)."""

import math

import pytest
import torch

from vq3d.config import ConfigError, RenderConfig, load_config
from vq3d.losses.lookat import central_pixels, exact_lookat_depth, lookat_loss, subject_lookat_target
from vq3d.losses.stage1 import lookat_target
from vq3d.render.cameras import canonical_cameras
from vq3d.render.renderer import Renderer
from vq3d.train.stage1 import Stage1Trainer, read_scalars


def test_central_pixels_are_the_middle_square():
    assert central_pixels(5, 5, 0.2).tolist() == [12]  # one pixel: the centre of 5x5
    assert central_pixels(4, 6, 0.5).tolist() == [7, 8, 9, 13, 14, 15]  # 2x3 around the middle
    assert central_pixels(32, 32, 0.1).numel() == 9


def test_the_prior_on_a_rendered_sphere_equals_the_log_ratio_of_its_depth():
    # a dense sphere of radius 0.4 at the origin, seen from 1.5: the central rays hit at ~1.1
    cfg = RenderConfig(proposal_samples=(64,), nerf_samples=64, near=0.2, far=6.0, mlp_layers=1)
    renderer = Renderer(cfg, feature_dim=1)
    r = 64
    centres = -2.0 + 4.0 * (torch.arange(r) + 0.5) / r
    planes = torch.zeros(1, 3, 1, r, r)
    planes[:, :, 0] = (centres**2).view(1, 1, r)  # summed: |x|^2
    with torch.no_grad():
        for mlp in (renderer.proposal_mlp, renderer.nerf_mlp):
            mlp.linears[0].weight.zero_()
            mlp.linears[0].bias.zero_()
            mlp.linears[0].weight[0, 0] = -20000.0
            mlp.linears[0].bias[0] = 20000.0 * 0.4**2 + 1.0
        out = renderer.render_cameras(planes, canonical_cameras(1, 1.5, 45.0), 31, 31)
    central = torch.zeros(1, 31 * 31, dtype=torch.bool)
    central[0, central_pixels(31, 31, 0.1)] = True
    # by hand: the central 3x3 rays' distance to the sphere, their mean, the squared log ratio
    origins, dirs = canonical_cameras(1, 1.5, 45.0).rays(31, 31)
    o, d = origins.reshape(-1, 3)[central[0]], dirs.reshape(-1, 3)[central[0]]
    b = (o * d).sum(-1)
    hit = -b - torch.sqrt(b**2 - ((o * o).sum(-1) - 0.4**2))
    expected = abs(math.log(float(hit.mean()) / 1.5))
    # the render finds the surface within its samples' spacing: 1.5% of the depth here
    assert math.sqrt(float(lookat_loss(out.depth.flatten(1), central, 1.5, "depth"))) == pytest.approx(
        expected, abs=0.015)
    assert float(lookat_loss(torch.full((2, 4), 3.0), torch.ones(2, 4, dtype=torch.bool), 1.5, "depth")) == \
        pytest.approx(math.log(2.0) ** 2)
    # the disparity statistic: the central rays' mean camera-axis disparity 1 / (t cos) at 1 / 1.5
    cos = (-d[:, 2])  # the canonical camera looks down -z: cos of each ray's angle to the axis
    by_hand = abs(math.log(float((1.0 / (hit * cos)).mean()) * 1.5))
    axis_disparity = (out.disparity.flatten(1) / out.axis_cos)
    assert math.sqrt(float(lookat_loss(axis_disparity, central, 1.5, "disparity"))) == pytest.approx(
        by_hand, abs=0.015)
    assert float(lookat_loss(torch.full((2, 4), 1 / 3.0), torch.ones(2, 4, dtype=torch.bool), 1.5, "disparity")) \
        == pytest.approx(math.log(2.0) ** 2)


def _one_step(tmp_path, lookat: float, lookat_depth: float = 1.0, disparity: torch.Tensor | None = None,
              placement: str = "fixed"):
    cfg = load_config("tiny", [], ["train.device=cpu", "render.train_rays=16", "loss.gan_start_steps=100",
                                   f"loss.lookat={lookat}", "loss.lookat_fraction=0.25",
                                   f"loss.lookat_depth={lookat_depth}", f"loss.lookat_placement={placement}"])
    trainer = Stage1Trainer(cfg, tmp_path)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, "disparity": torch.rand(2, 1, 16, 16, generator=g)}
    if disparity is not None:
        batch["disparity"] = disparity
    subset = trainer._ray_subset(batch["image"], False, torch.Generator().manual_seed(5))
    return read_scalars(trainer.train_step(batch)), subset


def test_the_prior_is_off_in_the_paper_preset_and_on_only_with_its_switch(tmp_path):
    assert load_config("paper").loss.lookat == 0.0 and load_config("tiny").loss.lookat == 0.0  # paper-exact
    off, subset_off = _one_step(tmp_path / "off", 0.0)
    on, subset_on = _one_step(tmp_path / "on", 0.5)
    assert "lookat" not in off and on["lookat"] > 0
    # off: the ray subset is the plain uniform draw; on: it always holds the central square
    plain = torch.rand(2, 256, generator=torch.Generator().manual_seed(5)).topk(16, dim=1).indices
    assert torch.equal(subset_off, plain)
    central = central_pixels(16, 16, 0.25)
    assert all(set(central.tolist()) <= set(row.tolist()) for row in subset_on)


def test_exact_lookat_depth_is_the_minimizer_of_the_prior_over_true_depth():
    g = torch.Generator().manual_seed(3)
    true_depth = 1.0 + torch.rand(6, 10, 10, generator=g)  # (B, H, W) ray distances
    central = torch.zeros(6, 100, dtype=torch.bool)
    central[:, central_pixels(10, 10, 0.3)] = True
    x = exact_lookat_depth(true_depth, 0.3, 1.5)
    # independent: scan the prior's value over candidate targets and take the least
    grid = torch.linspace(0.5, 1.5, 2001)
    values = torch.stack([lookat_loss(true_depth.flatten(1), central, float(v) * 1.5, "depth") for v in grid])
    assert x == pytest.approx(float(grid[values.argmin()]), abs=1e-3)
    assert 1.0 / 1.5 < x < 2.0 / 1.5


def test_lookat_depth_moves_the_prior_target(tmp_path):
    # L(x) = mean_b (log(m_b / c) - log x)^2 for the same first render m_b, so whatever m_b is,
    # L(1/2) + L(2) - 2 L(1) = 2 (log 2)^2: the target is x times the camera distance
    values = {x: _one_step(tmp_path / str(x), 1.0, x)[0]["lookat"] for x in (0.5, 1.0, 2.0)}
    assert values[0.5] + values[2.0] - 2 * values[1.0] == pytest.approx(2 * math.log(2.0) ** 2, rel=1e-4)
    with pytest.raises(ConfigError, match="lookat_depth"):
        load_config("tiny", [], ["train.device=cpu", "loss.lookat=1", "loss.lookat_depth=0"])
    assert load_config("tiny").loss.lookat_depth == 1.0  # the orbit's centre unless set


def test_flat_scale_is_one_pixel_of_parallax_across_the_novel_view_disc():
    """Eq. 3's threshold of the demo preset, checked by projecting with vq3d's own cameras: a point
    at the orbit's centre and one farther along the axis, their look-at disparity span 1 / s, move
    apart by one pixel between the canonical camera and a camera on the disc's rim."""
    from vq3d.config import load_config
    from vq3d.config.presets import flat_scale
    from vq3d.render.cameras import canonical_cameras, disc_offsets_to_cameras

    cfg = load_config("demo")
    r, res = cfg.render, cfg.data.resolution
    s = flat_scale(r, res)
    assert cfg.loss.max_scale == pytest.approx(s) and 7 < s < 8.5
    assert cfg.loss.depth_scale_floor <= cfg.loss.max_scale
    d = r.camera_distance
    far = 1.0 / (1.0 / d - 1.0 / (s * d))  # look-at span d (1/d - 1/far) = 1 / s
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, d - far]]], dtype=torch.float64)
    rim = disc_offsets_to_cameras(torch.tensor([[r.sampling_radius, 0.0]], dtype=torch.float64),
                                  d, r.fov_deg)
    canon = canonical_cameras(1, d, r.fov_deg)
    uv_rim, _ = rim.project(points, res, res)
    uv_canon, _ = canon.to("cpu", torch.float64).project(points, res, res)
    shift = (uv_rim[0, 1] - uv_rim[0, 0]) - (uv_canon[0, 1] - uv_canon[0, 0])
    # small-angle formula against the exact projection: within 5% of one pixel
    assert float(shift.norm()) == pytest.approx(1.0, rel=0.05)


def _traced_disparity(size: int, camera_distance: float, ball: float = 0.0, ring: tuple[float, float] = (0.0, 0.0),
                      wall: float = 1.0, width: int | None = None) -> torch.Tensor:
    """Camera-axis disparity 1 / z (1, 1, size, width or size) traced through vq3d's canonical camera
    (45 degrees): a ball of radius `ball` at the origin, or a flat ring facing the camera at z = 0
    (inner, outer radius), before a wall `wall` behind the origin."""
    width = width or size
    origins, dirs = canonical_cameras(1, camera_distance, 45.0).rays(size, width)
    o, d = origins.reshape(-1, 3).double(), dirs.reshape(-1, 3).double()
    cos = -d[:, 2]  # the camera looks down -z
    z = torch.full_like(cos, camera_distance + wall)  # the wall, along the axis
    if ball:
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - ball**2)
        t = -b - disc.clamp_min(0).sqrt()
        z = torch.where(disc > 0, t * cos, z)
    if ring[1]:
        t = camera_distance / cos  # the plane z = 0
        radius = (o + t[:, None] * d)[:, :2].norm(dim=-1)
        z = torch.where((radius >= ring[0]) & (radius <= ring[1]), torch.full_like(z, camera_distance), z)
    return (1.0 / z).float().view(1, 1, size, width)


def test_subject_target_is_the_front_of_a_traced_ball_whatever_the_affine():
    # the central ray meets a ball of radius r at the origin at D - r: the target is 1 - r / D
    d = 1.5
    balls = (0.25, 0.4, 0.5)  # all inside the view (radius < D sin 22.5 deg)
    for size, tolerance in ((64, 0.015), (256, 0.004)):  # the width is read to a pixel
        disparity = torch.cat([_traced_disparity(size, d, ball=r) for r in balls])
        front, through_hole = subject_lookat_target(disparity, 0.1, 45.0)
        assert not through_hole.any()
        assert front.tolist() == pytest.approx([1.0 - r / d for r in balls], abs=tolerance)
    # an estimator's unknown scale and shift per image change nothing
    scale, shift = torch.tensor([3.0, 0.2, 40.0]).view(3, 1, 1, 1), torch.tensor([0.7, -5.0, 0.0]).view(3, 1, 1, 1)
    again, hole_again = subject_lookat_target(disparity * scale + shift, 0.1, 45.0)
    assert torch.equal(again, front) and torch.equal(hole_again, through_hole)


def test_subject_width_is_the_run_through_the_middle_in_units_of_the_vertical_view():
    one = _traced_disparity(128, 1.5, ball=0.3)
    # a second blob on the central rows, as near as the subject but apart from it: not in its run
    two = one.clone()
    two[..., 56:72, 4:14] = one.max()
    # one nearer than the subject: the centre reads as seen past it (the rule's stated limit)
    nearer = one.clone()
    nearer[..., 56:72, 4:14] = 2.0 * one.max()
    fronts, holes = subject_lookat_target(torch.cat([one, two, nearer]), 0.1, 45.0)
    assert holes.tolist() == [False, False, True]
    assert float(fronts[1]) == float(fronts[0]) == pytest.approx(0.8, abs=0.008)
    # a wide image: the field of view spans the rows (vq3d.render.cameras), so the ball's width is
    # measured in rows' units; traced through the same camera model at 128 x 192
    wide, hole = subject_lookat_target(_traced_disparity(128, 1.5, ball=0.3, width=192), 0.1, 45.0)
    assert not hole.any() and float(wide[0]) == pytest.approx(0.8, abs=0.008)
    # a flat target says nothing: the orbit's centre, both ways
    flat, flat_hole = subject_lookat_target(torch.full((1, 1, 32, 32), 0.3), 0.1, 45.0)
    assert float(flat[0]) == 1.0 and not flat_hole.any()


def test_subject_target_sees_through_a_ring_and_only_bounds_it_from_the_near_side():
    ring = _traced_disparity(64, 1.5, ring=(0.2, 0.5))
    disc = _traced_disparity(64, 1.5, ring=(0.0, 0.5))
    # a slit at the middle columns: the central square reads as the subject, its middle does not
    slit = disc.clone()
    slit[..., 31:33] = disc.min()
    target, through_hole = subject_lookat_target(torch.cat([ring, disc, slit]), 0.1, 45.0)
    assert through_hole.tolist() == [True, False, True]
    assert float(target[0]) == 1.0 and float(target[2]) == 1.0  # past the subject: no nearer than its centre
    assert float(target[1]) == pytest.approx(1.0 - 0.5 / math.hypot(1.5, 0.5), abs=0.015)  # a flat disc: the ball's
    # the one-sided prior: a farther mean costs nothing, a nearer one as much as the two-sided
    central = torch.ones(2, 4, dtype=torch.bool)
    farther_ok = torch.tensor([True, True])
    assert float(lookat_loss(torch.full((2, 4), 3.0), central, 1.5, "depth", farther_ok)) == 0.0
    assert float(lookat_loss(torch.full((2, 4), 1.0), central, 1.5, "depth", farther_ok)) == \
        pytest.approx(math.log(1.5) ** 2)
    assert float(lookat_loss(torch.full((2, 4), 1 / 3.0), central, 1.5, "disparity", farther_ok)) == 0.0


def test_subject_placement_in_a_training_step_is_the_fixed_prior_at_the_image_s_own_target(tmp_path):
    # two views of one ball: the subject target x is one number, so the first step's prior (the
    # same render: same seed, same ray subset) must equal the fixed prior's at lookat_depth = x
    disparity = torch.cat([_traced_disparity(16, 1.5, ball=0.45)] * 2)
    x = float(subject_lookat_target(disparity, 0.25, 45.0)[0][0])
    assert 0.6 < x < 0.8
    subject, subset = _one_step(tmp_path / "subject", 1.0, disparity=disparity, placement="subject")
    fixed, subset_fixed = _one_step(tmp_path / "fixed", 1.0, x, disparity=disparity)
    assert torch.equal(subset, subset_fixed)
    assert subject["lookat"] == pytest.approx(fixed["lookat"], rel=1e-5)
    centre = _one_step(tmp_path / "centre", 1.0, disparity=disparity)[0]
    assert abs(subject["lookat"] - centre["lookat"]) > 1e-3  # and not the orbit's centre's


def test_subject_placement_refuses_a_fixed_depth_and_falls_back_without_a_target():
    cfg = load_config("tiny", [], ["train.device=cpu", "loss.lookat=1", "loss.lookat_placement=subject"])
    disparity = torch.cat([_traced_disparity(32, cfg.render.camera_distance, ball=0.4)] * 2)
    target, farther_ok = lookat_target(disparity, cfg.loss, cfg.render)
    assert target.shape == (2,) and not farther_ok.any()
    assert float(target[0]) == pytest.approx(cfg.render.camera_distance - 0.4, abs=0.05)
    # refining a photo without an estimator: nothing to read, the orbit's centre
    assert lookat_target(None, cfg.loss, cfg.render) == (pytest.approx(cfg.render.camera_distance), None)
    fixed = load_config("tiny", [], ["train.device=cpu", "loss.lookat=1", "loss.lookat_depth=0.8"])
    assert lookat_target(None, fixed.loss, fixed.render) == (pytest.approx(0.8 * fixed.render.camera_distance), None)
    with pytest.raises(ConfigError, match="lookat_depth"):
        load_config("tiny", [], ["train.device=cpu", "loss.lookat=1", "loss.lookat_placement=subject",
                                 "loss.lookat_depth=0.9"])
