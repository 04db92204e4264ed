"""`vq3d reconstruct`: one forward pass from a photo to a NeRF (paper Fig. 5-6).

For each image, OUT/<name>/ holds input.png (the centre crop the model saw), canonical.png,
depth.png (colorized) and disparity.npy, novel_K.png at `radius`, orbit.mp4 / orbit.gif,
points.ply (coloured point cloud from the rendered depth), mesh.ply, mesh.obj and mesh.glb
(marching cubes on the density field, vertex colours from the NeRF) and triplanes.safetensors. OUT/reconstruct.json lists what was
written and which files were skipped and why.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vq3d.data.decode import BadImageError, is_image_name, load_crop
from vq3d.errors import UserError
from vq3d.export import MESH_FORMATS, depth_to_points, save_scene, scene_mesh, write_mesh, write_ply
from vq3d.generate import render_scene_files
from vq3d.refine import Refiner, refine_scene
from vq3d.train.runs import load_stage1
from vq3d.utils.images import save_png
from vq3d.utils.io import atomic_write_json


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in the folders given."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist")
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, paths))}")
    return files


def _folder_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "image"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


@torch.no_grad()
def _pseudo_disparity(estimator, path: Path, resolution: int, device: str) -> torch.Tensor:
    """The depth model's relative disparity (1, 1, R, R) of the photo's centre crop."""
    height, width = estimator.input_size
    crop = torch.from_numpy(load_crop(str(path), max(height, width)))[None]  # (1, S, S, 3) uint8
    if crop.shape[1:3] != (height, width):
        crop = torch.nn.functional.interpolate(crop.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                                               antialias=True).round().clamp(0, 255).byte().permute(0, 2, 3, 1)
    return estimator.predict_disparity(crop, resolution)[:, None].to(device)


def reconstruct(stage1_run: str | Path, inputs: list[str | Path], out_dir: str | Path, radius: float | None = None,
                n_frames: int = 48, n_views: int = 4, mesh_resolution: int = 64, batch_size: int = 8,
                device: str = "cpu", mesh_level: float | None = None, refine_steps: int = 0,
                refine_target: str = "planes", refine_lr: float = 0.01, depth_model: str | None = None) -> dict:
    """Reconstruct every input image (see module docstring); returns the summary record.
    mesh_level: the marching-cubes density threshold (None: from the field's own statistics).
    refine_steps > 0: refine each one-pass scene to its photo (`vq3d.refine`), with the depth
    loss when `depth_model` (a local folder or cached hub id of a depth model) is given."""
    model, cfg = load_stage1(stage1_run, device)
    refiner = Refiner(model, stage1_run) if refine_steps > 0 else None
    estimator = None
    if refiner is not None and depth_model:
        from vq3d.data.depth_model import DepthEstimator

        estimator = DepthEstimator(depth_model, device=device)
    radius = cfg.render.sampling_radius if radius is None else radius
    files = list_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, skipped, taken = [], {}, set()
    res = model.resolution
    for start in tqdm(range(0, len(files), batch_size), desc="reconstruct"):
        chunk, crops = [], []
        for f in files[start: start + batch_size]:
            try:
                crops.append(load_crop(str(f), res))
                chunk.append(f)
            except BadImageError as err:
                skipped[str(f)] = str(err)
        if not chunk:
            continue
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        quant = model.quantize(images)
        scenes = model.decode_codes(quant.codes)
        for j, f in enumerate(chunk):
            scene = scenes[j: j + 1] if isinstance(scenes, torch.Tensor) else type(scenes)(
                scenes.field, scenes.latents[j: j + 1])
            folder = out_dir / _folder_name(f, taken)
            save_png(folder / "input.png", crops[j])
            if refiner is not None:
                disparity = _pseudo_disparity(estimator, f, res, device) if estimator is not None else None
                scene, terms, _ = refine_scene(refiner, images[j: j + 1], refine_steps, refine_target, refine_lr,
                                               disparity, progress=len(files) == 1)
                done_terms = {k: round(v, 5) for k, v in terms.items()}
            canon = render_scene_files(model, scene, folder, radius, n_views, n_frames)["canonical"]
            points, colors = depth_to_points(model.canonical_cameras(1, device), canon.depth, canon.rgb,
                                             canon.opacity)
            write_ply(folder / "points.ply", points, colors)
            verts, faces, vertex_colours = scene_mesh(model, scene, mesh_resolution, mesh_level)
            for fmt in MESH_FORMATS:
                write_mesh(folder / f"mesh.{fmt}", verts, faces, vertex_colours)
            save_scene(folder / "triplanes.safetensors", scene)
            done.append({"input": str(f), "folder": folder.name, "mesh_faces": int(len(faces)),
                         "points": int(len(points)),
                         **({"refine": {"steps": refine_steps, "target": refine_target, "last_losses": done_terms}}
                            if refiner is not None else {})})
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}")
    summary = {"stage1": str(stage1_run), "radius": radius, "images": done, "skipped": skipped,
               "refine_steps": refine_steps, "depth_model": depth_model if refiner is not None else None}
    atomic_write_json(out_dir / "reconstruct.json", summary)
    if not done:
        raise UserError(f"none of the {len(files)} input files could be read (see {out_dir}/reconstruct.json)")
    return summary
