"""Procedural scenes of the built-in synthetic 3D dataset and their exact rendering.

In the spirit of the paper's MVS-1 (exactly one salient object per image, Sec. 4.3): each scene holds
one object of a shape class (`SHAPES`: sphere, box, cylinder, cone, torus) with a random size,
rotation, colour and procedural texture (stripes, checker, rings or plain, in object coordinates),
near the origin, inside an axis-aligned room (textured floor, back wall, side walls, ceiling)
so every ray ends at finite depth. A directional light gives Lambert + ambient shading, a
little Blinn-Phong highlight on the object, and the object's hard shadow.

Scenes are rendered with vq3d's own cameras (`vq3d.render.cameras`): the canonical camera and
K novel cameras drawn in the tangent disc (`sample_novel_cameras`). Depth is the ray distance t
of the first hit, computed in closed form by `vq3d.data.raycast` (no sampling, no aliasing
filter: pixel (v, u) shows exactly what its central ray hits).

Scene i depends only on (seed, i): its random numbers come from `np.random.default_rng([seed, i])`.
The object is sized relative to the view (`camera_distance * tan(fov / 2)`) so it fills about
half the frame whatever the camera settings, and stays inside the unit ball.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from vq3d.config import RenderConfig
from vq3d.data import raycast
from vq3d.data.raycast import SHAPES
from vq3d.errors import UserError
from vq3d.render.cameras import camera_rays, canonical_cameras, sample_novel_cameras

PATTERNS: tuple[str, ...] = ("plain", "stripes", "checker", "rings")
_SHADOW_OFFSET = 1e-6  # shadow rays start this far off the surface, along its normal
# inward normals of the room's walls -x, +x, floor, ceiling, back, front
_WALL_NORMALS = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


@dataclass(frozen=True)
class CameraSettings:
    """Where the dataset's cameras sit (defaults: `RenderConfig`)."""

    camera_distance: float = RenderConfig.camera_distance
    fov_deg: float = RenderConfig.fov_deg
    sampling_radius: float = RenderConfig.sampling_radius
    supersample: int = 2  # each pixel averages supersample^2 rays (a real pixel's box filter)

    def validate(self) -> None:
        """Raise `UserError` for settings that cannot frame a scene inside the unit ball."""
        if not self.camera_distance > 1.0:
            raise UserError(f"camera distance {self.camera_distance} must be > 1 (objects fill the unit "
                            "ball around the origin); pass e.g. --camera-distance 1.5")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise UserError(f"field of view {self.fov_deg} deg must be between 1 and 170; "
                            "pass e.g. --fov-deg 45")
        if not 1 <= self.supersample <= 8:
            raise UserError(f"supersample {self.supersample} must be between 1 (one ray per pixel) and 8; "
                            "pass e.g. --supersample 2")
        if not 0.0 <= self.sampling_radius < self.camera_distance - 0.5:
            raise UserError(f"sampling radius {self.sampling_radius} must be >= 0 and below camera "
                            f"distance - 0.5 ({self.camera_distance - 0.5:g}); "
                            "pass e.g. --sampling-radius 0.3")


@dataclass
class Scene:
    """Everything needed to render one scene; arrays are float64 numpy unless noted."""

    index: int
    label: int  # index into SHAPES
    params: np.ndarray  # shape parameters in the object's local frame (see raycast)
    rotation: np.ndarray  # (3, 3) local -> world
    center: np.ndarray  # (3,) object centre in the world
    pattern: int  # index into PATTERNS
    colors: np.ndarray  # (2, 3) the pattern's two albedos in [0, 1]
    pattern_axis: np.ndarray  # (3,) stripe direction (local frame, unit)
    pattern_freq: float  # pattern cycles per unit length (local frame)
    specular: float  # Blinn-Phong highlight strength on the object
    room_lo: np.ndarray  # (3,) room corners: walls at x = lo/hi, floor y = lo, back z = lo, ...
    room_hi: np.ndarray
    wall_colors: np.ndarray  # (6, 3) albedo per wall (-x, +x, floor, ceiling, back, front)
    floor_dark: np.ndarray  # (3,) second colour of the floor checker
    floor_tile: float  # floor checker tile size
    back_stripes: float  # period of the back wall's vertical stripes (0 = plain)
    light: np.ndarray  # (3,) unit direction towards the light
    ambient: float
    c2w: torch.Tensor  # (1 + K, 4, 4) float32: canonical camera first, then the novel ones
    fov_deg: float

    @property
    def shape(self) -> str:
        return SHAPES[self.label]


# ----------------------------------------------------------------------------- sampling


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform rotation (3, 3) from a normalized Gaussian quaternion (Shoemake 1992)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _shape_params(shape: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Parameters of a shape whose visual radius is about `size`."""
    if shape == "sphere":
        return np.array([size * rng.uniform(0.8, 1.0)])
    if shape == "box":
        return size * rng.uniform(0.45, 0.8, size=3)
    if shape == "cylinder":
        return size * np.array([rng.uniform(0.45, 0.8), rng.uniform(0.5, 0.9)])
    if shape == "cone":
        return size * np.array([rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95)])
    major = size * rng.uniform(0.62, 0.78)
    return np.array([major, major * rng.uniform(0.28, 0.45)])


@functools.lru_cache(maxsize=8)
def _canonical_c2w(camera_distance: float, fov_deg: float) -> torch.Tensor:
    return canonical_cameras(1, camera_distance, fov_deg).c2w


def sample_scene(seed: int, index: int, views: int, camera: CameraSettings | None = None) -> Scene:
    """Scene `index` of the dataset with `seed`: a function of (seed, index) only.

    `camera` defaults to `CameraSettings()` (the `RenderConfig` defaults).
    """
    camera = camera or CameraSettings()
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(SHAPES)))
    half_view = camera.camera_distance * math.tan(math.radians(camera.fov_deg) / 2)
    params = _shape_params(SHAPES[label], rng.uniform(0.5, 0.7) * half_view, rng)
    bound = raycast.bounding_radius(SHAPES[label], params)
    if bound > 0.9:  # keep the object inside the unit ball
        params, bound = params * (0.9 / bound), 0.9
    center = rng.uniform(-0.06, 0.06, size=3)
    rotation = _random_rotation(rng)

    hue = rng.uniform()
    colors = np.stack([_hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.7, 0.95)),
                       _hsv(hue + rng.choice([0.0, 0.5]), rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.5))])
    pattern = int(rng.choice(len(PATTERNS), p=[0.1, 0.3, 0.3, 0.3]))
    axis = rng.normal(size=3)
    pattern_freq = rng.uniform(2.0, 4.0) / bound

    radius = camera.sampling_radius
    floor = min(center[1] - bound - rng.uniform(0.02, 0.35), -(radius + 0.15))
    back = max(rng.uniform(0.9, 1.7), -center[2] + bound + 0.15)
    side, ceiling = rng.uniform(1.3, 2.2), rng.uniform(1.2, 2.2)
    room_lo = np.array([-max(side, radius + 0.2), floor, -back])
    room_hi = np.array([max(side, radius + 0.2), max(ceiling, radius + 0.2), camera.camera_distance + 1.0])
    room_hue = rng.uniform()
    wall_colors = np.stack([_hsv(room_hue + rng.uniform(-0.05, 0.05), rng.uniform(0.05, 0.3),
                                 rng.uniform(0.5, 0.8)) for _ in range(6)])
    floor_dark = wall_colors[2] * rng.uniform(0.45, 0.7)
    floor_tile = rng.uniform(0.2, 0.45)
    back_stripes = float(rng.choice([0.0, rng.uniform(0.15, 0.4)]))

    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)])
    ambient = rng.uniform(0.25, 0.4)
    specular = rng.uniform(0.0, 0.35)

    cam_gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    canonical = _canonical_c2w(camera.camera_distance, camera.fov_deg)
    novel = sample_novel_cameras(views, camera.camera_distance, camera.fov_deg, radius, cam_gen)
    return Scene(
        index=index, label=label, params=params, rotation=rotation, center=center, pattern=pattern,
        colors=colors, pattern_axis=axis / np.linalg.norm(axis), pattern_freq=pattern_freq,
        specular=specular, room_lo=room_lo, room_hi=room_hi, wall_colors=wall_colors,
        floor_dark=floor_dark, floor_tile=floor_tile, back_stripes=back_stripes,
        light=light / np.linalg.norm(light), ambient=ambient,
        c2w=torch.cat([canonical, novel.c2w]), fov_deg=camera.fov_deg,
    )


# ----------------------------------------------------------------------------- rendering


def _odd(x: np.ndarray) -> np.ndarray:
    """Whether floor(x) is odd, (N,) bool (np.mod on floats is several times slower)."""
    return (np.floor(x).astype(np.int64) & 1).astype(bool)


def _object_albedo(scene: Scene, x: np.ndarray) -> np.ndarray:
    """Albedo (3, N) of the object's texture at local points x (3, N).

    Stripes: bands across `pattern_axis`; checker: 3D cells; rings: spherical shells. Each
    period of 1 / pattern_freq holds one band of each colour.
    """
    f = 2.0 * scene.pattern_freq  # two bands per period
    name = PATTERNS[scene.pattern]
    if name == "stripes":
        second = _odd(f * (scene.pattern_axis @ x))
    elif name == "checker":  # cubes of side 1 / pattern_freq
        second = _odd(np.floor(scene.pattern_freq * x).sum(axis=0))
    elif name == "rings":
        second = _odd(f * np.sqrt((x * x).sum(axis=0)))
    else:
        second = np.zeros(x.shape[1], dtype=bool)
    return np.take(scene.colors.T, second.astype(np.int64), axis=1)


def _room_albedo(scene: Scene, o: np.ndarray, d: np.ndarray, t: np.ndarray, wall: np.ndarray) -> np.ndarray:
    """Albedo (3, N) of the walls hit by rays o, d (3, N) at distance t (N,) on walls `wall` (N,).

    The floor is a checker in (x, z); the back wall may have vertical stripes. Colours are
    looked up in a palette: the six walls, the dark floor tiles (6), the back wall's stripes (7).
    """
    palette = np.concatenate([scene.wall_colors, scene.floor_dark[None], 0.8 * scene.wall_colors[4:5]])
    x = o[0] + t * d[0]
    z = o[2] + t * d[2]
    cells = np.floor(x / scene.floor_tile) + np.floor(z / scene.floor_tile)
    index = np.where((wall == 2) & _odd(cells), 6, wall)
    if scene.back_stripes > 0:
        index = np.where((wall == 4) & _odd(2.0 * x / scene.back_stripes), 7, index)
    return np.take(palette.T, index, axis=1)


@dataclass
class SceneRender:
    """Exact rendering of one scene's V = 1 + K views (canonical first)."""

    rgb: np.ndarray  # (V, H, W, 3) float64 in [0, 1]
    depth: np.ndarray  # (V, H, W) float64 ray distance t
    on_object: np.ndarray  # (V, H, W) bool: the ray hits the object (else a wall)

    def to_uint8(self) -> np.ndarray:
        """Images (V, H, W, 3) uint8."""
        return np.round(np.clip(self.rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _camera_frame_dirs(fov_deg: float, resolution: int) -> np.ndarray:
    """Unit ray directions (3, H*W) in the camera frame, from vq3d's camera model."""
    _, dirs = camera_rays(torch.eye(4, dtype=torch.float64)[None], fov_deg, resolution, resolution)
    return np.ascontiguousarray(dirs[0].reshape(-1, 3).numpy().T)


def scene_rays(c2w: np.ndarray, fov_deg: float, resolution: int,
               rotation: np.ndarray | None = None,
               center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and unit directions (3, V*H*W) of cameras c2w (V, 4, 4), float64.

    The rays of `Cameras(c2w, fov).rays(H, W)` (view-major, then rows, then columns), computed
    as camera-frame directions rotated by each camera, renormalized to unit length so that t
    is exactly the Euclidean distance from the camera centre. With `rotation` (3, 3) and `center` (3,)
    they are expressed in that object's frame: x_local = rotation^T (x - center).
    """
    rot, eye = c2w[:, :3, :3], c2w[:, :3, 3]
    if rotation is not None:
        rot, eye = rotation.T @ rot, (eye - center) @ rotation
    pixels = resolution * resolution
    dirs = (rot @ _camera_frame_dirs(fov_deg, resolution)).transpose(1, 0, 2).reshape(3, -1)
    dirs /= np.sqrt(dirs[0] ** 2 + dirs[1] ** 2 + dirs[2] ** 2)  # float32 rotations: orthonormal to ~1e-7
    return np.repeat(eye.T, pixels, axis=1), dirs


def render_scene(scene: Scene, resolution: int, supersample: int = 1) -> SceneRender:
    """Ray cast every view of `scene` at `resolution` x `resolution` (float64, all rays at once).

    With `supersample` = k each pixel is the box-filtered mean of a k x k grid of rays inside it
    (the rays of the k-times larger image): point-sampled stripes and checkers alias into noise
    at small resolutions, which no model could (or should) reproduce. Depth is averaged as
    disparity (so an edge pixel gets an in-between depth, like a NeRF's expected depth) and a
    pixel is "on the object" when most of its rays hit it.
    """
    if supersample > 1:
        fine = render_scene(scene, resolution * supersample)
        k, views = supersample, fine.rgb.shape[0]

        def box(x: np.ndarray) -> np.ndarray:  # (V, kH, kW, ...) -> (V, H, W, ...)
            return x.reshape(views, resolution, k, resolution, k, *x.shape[3:]).mean(axis=(2, 4))

        return SceneRender(rgb=box(fine.rgb), depth=1.0 / box(1.0 / fine.depth),
                           on_object=box(fine.on_object.astype(np.float64)) > 0.5)
    c2w = scene.c2w.double().numpy()
    o, d = scene_rays(c2w, scene.fov_deg, resolution)
    o_local, d_local = scene_rays(c2w, scene.fov_deg, resolution, scene.rotation, scene.center)
    t_obj, face = raycast.intersect(scene.shape, scene.params, o_local, d_local)
    t_room, wall = raycast.exit_room(scene.room_lo, scene.room_hi, o, d)
    on_object = t_obj < t_room
    depth = np.where(on_object, t_obj, t_room)

    # the walls (computed for every ray, then overwritten where the object is in front):
    # Lambert + ambient, darkened where the object blocks the light
    lambert = np.take(np.maximum(_WALL_NORMALS @ scene.light, 0.0), wall)
    wall_local = o_local + t_room * d_local  # the wall points in the object's frame
    lambert[_shadowed(scene, wall_local, (lambert > 0) & ~on_object)] = 0.0
    shade = scene.ambient + (1.0 - scene.ambient) * lambert
    rgb = _room_albedo(scene, o, d, t_room, wall) * shade  # (3, N)

    # the object: texture and normals in its own frame, Lambert + ambient + Blinn-Phong
    obj = np.nonzero(on_object)[0]
    x_local = np.take(o_local, obj, axis=1) + t_obj[obj] * np.take(d_local, obj, axis=1)
    n_world = scene.rotation @ raycast.normal(scene.shape, scene.params, x_local, face[obj])
    lambert = np.maximum(scene.light @ n_world, 0.0)
    if scene.shape == "torus":  # the only shape that can shadow itself where n.l > 0
        start = x_local + _SHADOW_OFFSET * (scene.rotation.T @ n_world)
        lambert[_shadowed(scene, start, lambert > 0)] = 0.0
    half = scene.light[:, None] - np.take(d, obj, axis=1)  # halfway vector between light and viewer
    n_dot_h = np.maximum((n_world * half).sum(axis=0), 0.0) / np.sqrt((half * half).sum(axis=0))
    for _ in range(5):  # (n.h)^32
        n_dot_h *= n_dot_h
    highlight = scene.specular * n_dot_h * (lambert > 0)
    shade = scene.ambient + (1.0 - scene.ambient) * lambert
    rgb_obj = _object_albedo(scene, x_local) * shade + highlight
    for channel in range(3):
        rgb[channel, obj] = rgb_obj[channel]

    shape = (scene.c2w.shape[0], resolution, resolution)
    return SceneRender(rgb=rgb.T.reshape(*shape, 3), depth=depth.reshape(shape),
                       on_object=on_object.reshape(shape))


def _shadowed(scene: Scene, x_local: np.ndarray, consider: np.ndarray) -> np.ndarray:
    """Indices (M,) of the points x (3, N) (object frame), among those where `consider` (N,),
    from which the object blocks the light.

    Shadow rays that pass outside the object's bounding ball are culled before the exact test.
    """
    light = scene.rotation.T @ scene.light
    along = light @ x_local
    near_axis = (x_local * x_local).sum(axis=0) - along * along  # squared distance to the ray line
    bound = raycast.bounding_radius(scene.shape, scene.params)
    candidates = np.nonzero(consider & (near_axis < bound * bound) & (along < bound))[0]
    if not len(candidates):
        return candidates
    dirs = np.repeat(light[:, None], len(candidates), axis=1)
    t, _ = raycast.intersect(scene.shape, scene.params, np.take(x_local, candidates, axis=1), dirs)
    return candidates[np.isfinite(t)]
