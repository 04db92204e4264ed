import math

import torch

from vq3d.render.cameras import (
    Cameras, canonical_cameras, focal_length, intrinsics, look_at, orbit_cameras, sample_novel_cameras)

D, FOV, R = 1.5, 45.0, 0.3


def test_canonical_camera_looks_at_origin():
    cams = canonical_cameras(2, D, FOV)
    assert torch.allclose(cams.positions, torch.tensor([[0.0, 0.0, D]] * 2))
    forward = -cams.c2w[:, :3, 2]
    assert torch.allclose(forward, torch.tensor([0.0, 0.0, -1.0]).expand(2, 3), atol=1e-6)
    # the central pixel's ray passes through the origin
    origins, dirs = cams.rays(4, 4)
    centre = dirs[0, 1:3, 1:3].mean(dim=(0, 1))
    assert torch.allclose(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_rotation_is_orthonormal_and_right_handed():
    cams = sample_novel_cameras(64, D, FOV, R, torch.Generator().manual_seed(0))
    rot = cams.c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64), atol=1e-5)


def test_novel_cameras_lie_in_tangent_disc_and_aim_at_origin():
    cams = sample_novel_cameras(2000, D, FOV, R, torch.Generator().manual_seed(0))
    pos = cams.positions
    assert torch.allclose(pos[:, 2], torch.full((2000,), D))  # in the tangent plane z = D
    radial = pos[:, :2].norm(dim=-1)
    assert radial.max() <= R + 1e-6
    # uniform in area: half the samples fall inside radius R / sqrt(2)
    inside = (radial < R / math.sqrt(2)).float().mean()
    assert abs(inside - 0.5) < 0.05
    forward = -cams.c2w[:, :3, 2]
    to_origin = -pos / pos.norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, to_origin, atol=1e-5)


def test_novel_camera_sampling_is_seeded():
    a = sample_novel_cameras(5, D, FOV, R, torch.Generator().manual_seed(3)).c2w
    b = sample_novel_cameras(5, D, FOV, R, torch.Generator().manual_seed(3)).c2w
    c = sample_novel_cameras(5, D, FOV, R, torch.Generator().manual_seed(4)).c2w
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_orbit_is_closed_on_the_rim():
    n = 12
    cams = orbit_cameras(n, D, FOV, R)
    radial = cams.positions[:, :2].norm(dim=-1)
    assert torch.allclose(radial, torch.full((n,), R), atol=1e-6)
    steps = (cams.positions.roll(-1, dims=0) - cams.positions).norm(dim=-1)
    # equal steps all round, including last -> first: a closed loop
    assert torch.allclose(steps, steps[0].expand(n), atol=1e-6)
    assert torch.allclose(steps[0], torch.tensor(2 * R * math.sin(math.pi / n)), atol=1e-6)


def test_rays_unit_length_and_project_back():
    cams = sample_novel_cameras(3, D, FOV, R, torch.Generator().manual_seed(1))
    H, W = 6, 8
    origins, dirs = cams.rays(H, W)
    assert origins.shape == dirs.shape == (3, H, W, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(3, H, W), atol=1e-6)
    t = torch.rand(3, H, W, 1) * 3 + 0.5
    points = (origins + t * dirs).reshape(3, -1, 3)
    uv, depth = cams.project(points, H, W)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    assert torch.allclose(uv[..., 0], u.flatten().expand(3, -1), atol=1e-4)
    assert torch.allclose(uv[..., 1], v.flatten().expand(3, -1), atol=1e-4)
    assert torch.allclose(depth, t.reshape(3, -1), atol=1e-5)


def test_intrinsics_match_field_of_view():
    f = focal_length(90.0, 64)
    assert math.isclose(f, 32.0, rel_tol=1e-6)
    K = intrinsics(FOV, 32, 32)
    assert K[0, 2] == 16 and K[1, 2] == 16 and math.isclose(K[0, 0].item(), focal_length(FOV, 32), rel_tol=1e-6)
    # the top-left corner ray makes half the FOV with the axis (vertically)
    cams = canonical_cameras(1, D, 90.0)
    _, dirs = cams.rays(2, 2)
    d = dirs[0, 0, 0]
    assert d[1] > 0 and d[0] < 0  # row 0 is the top, column 0 the left


def test_look_at_with_explicit_target():
    eye = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[0.5, 0.0, -1.0]])
    c2w = look_at(eye, target)
    forward = -c2w[0, :3, 2]
    expected = (target - eye)[0] / (target - eye).norm()
    assert torch.allclose(forward, expected, atol=1e-6)
    cams = Cameras(c2w, 30.0)
    assert len(cams) == 1 and len(cams[0]) == 1
