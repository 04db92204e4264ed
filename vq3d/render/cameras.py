"""The project's one camera model.

Conventions (see docs/design.md):
- World frame right-handed, +y up. The canonical camera sits at (0, 0, camera_distance) and
  looks at the origin; it is the same for every image.
- Camera-to-world matrices `c2w` (B, 4, 4) use the OpenGL convention: the camera looks along
  its local -z, +x is right and +y is up in the image.
- Pixel (row v, column u) has its centre at (u + 0.5, v + 0.5); row 0 is the top of the image.
- Ray directions are unit length, so a sample's `t` is its Euclidean distance from the camera:
  "depth" everywhere in vq3d means this ray distance and "disparity" means 1 / depth. Monocular
  depth estimators predict inverse depth along the camera's axis, 1 / z = 1 / (t cos), with
  `axis_cosines` giving each pixel's cos; the depth loss converts where its target is theirs.
- Novel cameras move the canonical position uniformly inside a disc of radius
  `sampling_radius` in the plane tangent to the camera sphere, then re-aim at the origin
  (paper Sec. 3.2). Orbits for videos walk the rim of that disc.
- Cameras and rays are fp32 under autocast too (the precision policy, `vq3d.precision`), and
  are built on the device they are asked for (no host-to-device copies inside a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.precision import GEOMETRY_DTYPE, fp32


def focal_length(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a field of view spanning `size` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def intrinsics(fov_deg: float, height: int, width: int) -> Tensor:
    """Pinhole intrinsics K (3, 3) for a square-pixel camera whose vertical FOV is `fov_deg`."""
    f = focal_length(fov_deg, height)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: Tensor, target: Tensor | None = None, up: tuple[float, float, float] = (0, 1, 0)) -> Tensor:
    """Camera-to-world matrices (B, 4, 4) for cameras at `eye` (B, 3) looking at `target` (B, 3).

    `target` defaults to the origin. The camera's -z axis points from eye to target.
    """
    if target is None:
        target = torch.zeros_like(eye)
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    up_vec = torch.stack([torch.full_like(forward[:, 0], float(u)) for u in up], dim=-1)  # on eye's device
    right = torch.cross(forward, up_vec, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    top = torch.stack([right, true_up, -forward, eye], dim=-1)  # (B, 3, 4): columns
    bottom = F.pad(torch.zeros_like(eye[:, None]), (0, 1), value=1.0)  # (B, 1, 4): 0 0 0 1
    return torch.cat([top, bottom], dim=1)  # built from device tensors: no scalar copies


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one field of view.

    c2w: (B, 4, 4) camera-to-world transforms (OpenGL convention).
    fov_deg: field of view in degrees (vertical; images are square in vq3d).
    """

    c2w: Tensor
    fov_deg: float

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> "Cameras":
        c2w = self.c2w[index]
        return Cameras(c2w[None] if c2w.dim() == 2 else c2w, self.fov_deg)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.c2w.to(device=device, dtype=dtype or self.c2w.dtype), self.fov_deg)

    @property
    def positions(self) -> Tensor:
        """Camera centres (B, 3)."""
        return self.c2w[:, :3, 3]

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions, each (B, H, W, 3), through pixel centres."""
        return camera_rays(self.c2w, self.fov_deg, height, width)

    def project(self, points: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Project world points (B, N, 3) to pixel coordinates (B, N, 2) as (u, v) and depth (B, N).

        Depth is the distance from the camera centre (the ray distance, see module docstring).
        """
        return _project(self.c2w, self.fov_deg, points, height, width)


@fp32
def _project(c2w: Tensor, fov_deg: float, points: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """`Cameras.project` in fp32."""
    w2c = torch.linalg.inv(c2w)
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # (B, N, 3)
    f = focal_length(fov_deg, height)
    z = -cam[..., 2]
    u = cam[..., 0] / z * f + width / 2.0
    v = -cam[..., 1] / z * f + height / 2.0
    return torch.stack([u, v], dim=-1), cam.norm(dim=-1)


@fp32
def camera_rays(c2w: Tensor, fov_deg: float, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions (B, H, W, 3), fp32, for cameras `c2w` (B, 4, 4)."""
    f = focal_length(fov_deg, height)
    dtype, device = c2w.dtype, c2w.device
    u = (torch.arange(width, dtype=dtype, device=device) + 0.5 - width / 2.0) / f
    v = (torch.arange(height, dtype=dtype, device=device) + 0.5 - height / 2.0) / f
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    dirs_cam = torch.stack([uu, -vv, -torch.ones_like(uu)], dim=-1)  # (H, W, 3)
    dirs_cam = dirs_cam / dirs_cam.norm(dim=-1, keepdim=True)
    dirs = torch.einsum("bij,hwj->bhwi", c2w[:, :3, :3], dirs_cam)  # (B, H, W, 3)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


@fp32
def axis_cosines(fov_deg: float, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """cos of the angle between each pixel's ray and the camera's optical axis (H, W), fp32; the
    same for every camera of a field of view. A point at ray distance t lies at depth z = t cos
    along the axis, the depth that monocular estimators predict (as 1 / z)."""
    f = focal_length(fov_deg, height)
    u = (torch.arange(width, dtype=GEOMETRY_DTYPE, device=device) + 0.5 - width / 2.0) / f
    v = (torch.arange(height, dtype=GEOMETRY_DTYPE, device=device) + 0.5 - height / 2.0) / f
    return torch.rsqrt(1.0 + v[:, None].square() + u[None, :].square())


def canonical_position(camera_distance: float, dtype: torch.dtype = GEOMETRY_DTYPE,
                       device: torch.device | str = "cpu") -> Tensor:
    """The canonical camera centre (3,): on the +z axis at `camera_distance`."""
    if camera_distance <= 0:
        raise ValueError(f"camera_distance must be positive, got {camera_distance}")
    return F.pad(torch.zeros(2, dtype=dtype, device=device), (0, 1), value=camera_distance)  # on the device


def canonical_cameras(batch: int, camera_distance: float, fov_deg: float,
                      device: torch.device | str = "cpu") -> Cameras:
    """`batch` copies of the canonical camera, looking at the origin, built on `device`."""
    eye = canonical_position(camera_distance, device=device).expand(batch, 3).clone()
    return Cameras(look_at(eye), fov_deg)


def disc_offsets_to_cameras(offsets: Tensor, camera_distance: float, fov_deg: float) -> Cameras:
    """Cameras moved by `offsets` (B, 2) within the tangent plane at the canonical position.

    The tangent plane at (0, 0, d) is spanned by the world x and y axes; each camera is
    re-aimed at the origin after the move.
    """
    eye = canonical_position(camera_distance, offsets.dtype, offsets.device).expand(offsets.shape[0], 3).clone()
    eye[:, :2] = eye[:, :2] + offsets
    return Cameras(look_at(eye), fov_deg)


def sample_disc(batch: int, radius: float, generator: torch.Generator | None = None) -> Tensor:
    """Points (B, 2) uniform in area inside a disc of `radius` (r = R sqrt(u)), drawn on the
    generator's device (the CPU without one)."""
    if radius < 0:
        raise ValueError(f"sampling_radius must be >= 0, got {radius}")
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(batch, generator=generator, device=device)
    theta = 2.0 * math.pi * torch.rand(batch, generator=generator, device=device)
    r = radius * torch.sqrt(u)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)


def sample_novel_cameras(
    batch: int,
    camera_distance: float,
    fov_deg: float,
    sampling_radius: float,
    generator: torch.Generator | None = None,
) -> Cameras:
    """Novel cameras uniform in the tangent disc of `sampling_radius` (paper Sec. 3.2), on the
    generator's device."""
    return disc_offsets_to_cameras(sample_disc(batch, sampling_radius, generator), camera_distance, fov_deg)


def orbit_offsets(n_frames: int, radius: float) -> Tensor:
    """Offsets (n, 2) walking the rim of the disc once, frame k at angle 2 pi k / n.

    The path is closed: the frame after the last would be frame 0 again, so a looped video
    has no jump.
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    theta = 2.0 * math.pi * torch.arange(n_frames, dtype=torch.float32) / n_frames
    return radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


def orbit_cameras(n_frames: int, camera_distance: float, fov_deg: float, radius: float) -> Cameras:
    """Deterministic cameras (n, 4, 4) along the rim of the tangent disc, for videos."""
    return disc_offsets_to_cameras(orbit_offsets(n_frames, radius), camera_distance, fov_deg)
