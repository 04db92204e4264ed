"""Exports of a decoded scene: images, depth maps, orbit videos, point clouds, meshes, triplanes.

Used by `vq3d reconstruct`, `vq3d generate`, the demo and the viewer. Every file is written
atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from vq3d.render.cameras import Cameras, orbit_cameras
from vq3d.utils.images import colorize, to_uint8, to_unit
from vq3d.utils.io import atomic_write
from vq3d.utils.optional import require


@torch.no_grad()
def orbit_frames(model, scene, n_frames: int, radius: float, resolution: int, with_depth: bool = True) -> list[np.ndarray]:
    """Render a closed orbit along the rim of the tangent disc: frames (H, W or 2W, 3) uint8,
    RGB with its colorized disparity beside it when `with_depth`."""
    r = model.cfg.render
    cams = orbit_cameras(n_frames, r.camera_distance, r.fov_deg, radius)
    frames = []
    for i in range(n_frames):
        out = model.render(scene, cams[i].to(_device(model)), resolution, resolution)
        tile = to_unit(out.rgb[0])
        if with_depth:
            tile = torch.cat([tile, colorize(out.disparity[:1])[0]], dim=-1)
        frames.append(to_uint8(tile))
    return frames


def _device(model) -> torch.device:
    return next(model.parameters()).device


def write_video(path_stem: str | Path, frames: list[np.ndarray], fps: int = 20) -> list[Path]:
    """Write `frames` as `path_stem.mp4` (H.264 via imageio-ffmpeg) and `path_stem.gif` (looping)."""
    imageio = require("imageio.v2", "imageio", "writing orbit videos")
    require("imageio_ffmpeg", "imageio-ffmpeg", "writing orbit videos (MP4)")

    stem = Path(path_stem)
    paths = [stem.with_suffix(".mp4"), stem.with_suffix(".gif")]
    # H.264 needs even sizes; pad by one pixel where needed.
    h, w = frames[0].shape[:2]
    padded = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
    atomic_write(paths[0], lambda p: imageio.mimwrite(p, padded, format="FFMPEG", fps=fps, macro_block_size=1,
                                                      codec="libx264", pixelformat="yuv420p"))
    atomic_write(paths[1], lambda p: imageio.mimwrite(p, frames, format="GIF", duration=1000.0 / fps, loop=0))
    return paths


def depth_to_points(cameras: Cameras, depth: Tensor, rgb: Tensor, opacity: Tensor | None = None,
                    min_opacity: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a rendered depth map to coloured 3D points.

    cameras: one camera; depth (1, 1, H, W) ray distance; rgb (1, 3, H, W) in [-1, 1].
    Returns points (N, 3) float32 and colours (N, 3) uint8; pixels with opacity below
    `min_opacity` are dropped.
    """
    H, W = depth.shape[-2:]
    origins, dirs = cameras.rays(H, W)
    points = (origins[0] + dirs[0] * depth[0, 0, ..., None]).reshape(-1, 3)
    colors = (to_unit(rgb[0]).permute(1, 2, 0).reshape(-1, 3) * 255 + 0.5).to(torch.uint8)
    keep = torch.isfinite(points).all(dim=1)
    if opacity is not None:
        keep &= opacity.reshape(-1) >= min_opacity
    return points[keep].cpu().numpy().astype(np.float32), colors[keep].cpu().numpy()


def write_ply(path: str | Path, vertices: np.ndarray, colors: np.ndarray | None = None,
              faces: np.ndarray | None = None) -> None:
    """Binary little-endian PLY with optional per-vertex uint8 colours and triangle faces."""
    vertices = np.asarray(vertices, dtype=np.float32)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}",
              "property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("r", "u1"), ("g", "u1"), ("b", "u1")]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    data = np.empty(len(vertices), dtype=fields)
    data["x"], data["y"], data["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        data["r"], data["g"], data["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
    blob = ("\n".join(header) + "\n").encode() + data.tobytes()
    if faces is not None:
        face_rows = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face_rows["n"], face_rows["i"] = 3, np.asarray(faces, dtype=np.int32)
        blob += face_rows.tobytes()
    from vq3d.utils.io import atomic_write_bytes

    atomic_write_bytes(path, blob)


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Wavefront OBJ (vertex colours as the common `v x y z r g b` extension)."""
    lines = []
    for i, v in enumerate(vertices):
        if colors is not None:
            c = colors[i] / 255.0
            lines.append(f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f} {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}")
        else:
            lines.append(f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f}")
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    from vq3d.utils.io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")


@torch.no_grad()
def extract_mesh(density: Callable[[Tensor], Tensor], bound: float = 1.0, resolution: int = 64,
                 level: float | None = None, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image) on the density field over [-bound, bound]^3.

    density: points (N, 3) -> density (N,). `level` defaults to the mean of the field's 99th
    percentile and its median, which adapts to the scale of a learned field.
    Returns vertices (V, 3) float32 in world units and faces (F, 3) int.
    """
    marching_cubes = require("skimage.measure", "scikit-image", "mesh extraction (marching cubes)").marching_cubes

    axis = torch.linspace(-bound, bound, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = torch.cat([density(grid[i: i + chunk]).float().cpu() for i in range(0, len(grid), chunk)])
    field = values.reshape(resolution, resolution, resolution).numpy()
    if level is None:
        level = float(0.5 * (np.percentile(field, 99) + np.median(field)))
    if not field.min() < level < field.max():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    verts, faces, _, _ = marching_cubes(field, level=level, spacing=(2 * bound / (resolution - 1),) * 3)
    return (verts - bound).astype(np.float32), faces.astype(np.int64)


def scene_mesh(model, scene, resolution: int = 64, level: float | None = None,
               chunk: int = 32768) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on a decoded scene's density over [-1, 1]^3 (`extract_mesh`) and each
    vertex's NeRF colour: vertices (V, 3) float32, faces (F, 3) int, colours (V, 3) uint8."""
    device = _device(model)
    with torch.inference_mode():
        verts, faces = extract_mesh(lambda x: model.density(scene, x.to(device)), bound=1.0,
                                    resolution=resolution, level=level, chunk=chunk)
        points = torch.from_numpy(verts)
        colours = [model.colour(scene, points[i: i + chunk].to(device)).float().cpu() for i in range(0, len(points), chunk)]
    rgb = torch.cat(colours) if colours else torch.zeros(0, 3)
    return verts, faces, (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Binary glTF (trimesh) with optional per-vertex uint8 colours; opens in any glTF viewer
    (the world's +y is glTF's up, the canonical camera looks down -z as glTF's does)."""
    trimesh = require("trimesh", "trimesh", "the GLB export")

    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, np.float32), faces=np.asarray(faces, np.int64),
                           vertex_colors=None if colors is None else np.asarray(colors, np.uint8), process=False)
    data = mesh.export(file_type="glb")
    atomic_write(path, lambda p: Path(p).write_bytes(data))


MESH_FORMATS = ("ply", "obj", "glb")


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """A mesh in the format its suffix names: .ply (binary), .obj (colours as `v x y z r g b`), .glb."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix == "ply":
        write_ply(path, vertices, colors, faces=faces)
    elif suffix == "obj":
        write_obj(path, vertices, faces, colors)
    elif suffix == "glb":
        write_glb(path, vertices, faces, colors)
    else:
        raise ValueError(f"mesh format .{suffix} is not one of {', '.join(MESH_FORMATS)}")


def save_scene(path: str | Path, scene, metadata: dict[str, str] | None = None) -> None:
    """Save a decoded scene (triplanes (1, 3, C, R, R) or an implicit field's latents) as safetensors."""
    tensor = scene if isinstance(scene, Tensor) else scene.latents
    key = "triplanes" if isinstance(scene, Tensor) else "latents"
    atomic_write(path, lambda p: save_file({key: tensor.detach().float().cpu().contiguous()}, str(p),
                                           metadata=metadata or {}))
