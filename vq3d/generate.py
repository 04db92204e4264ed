"""`vq3d generate`: sample Stage-2 tokens and decode them into new 3D scenes (paper Sec. 3.1).

For each sample, OUT/sample_XXX/ holds canonical.png, depth.png (colorized disparity),
disparity.npy, novel_K.png at `radius`, orbit.mp4 and orbit.gif, triplanes.safetensors (to
re-render later) and tokens.npy; OUT/grid.png shows every sample (canonical | depth | novel
views) and OUT/samples.json lists them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vq3d.data.tokens import check_stage2_matches
from vq3d.errors import UserError
from vq3d.export import orbit_frames, save_scene, write_video
from vq3d.models.sampling import sample
from vq3d.render.cameras import disc_offsets_to_cameras
from vq3d.train.runs import load_stage1
from vq3d.train.stage2 import load_stage2
from vq3d.utils.images import colorize, grid, save_png, to_unit
from vq3d.utils.io import atomic_save_npy, atomic_write_json


def resolve_class(value: str | int | None, class_names: list[str], num_classes: int) -> int | None:
    """A class id from an id or a name (None for unconditional sampling or no class given)."""
    if value is None:
        return None
    if num_classes == 0:
        raise UserError("this Stage-2 model is unconditional: drop --class")
    text = str(value)
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < num_classes:
            raise UserError(f"class {k} is out of range: this model has classes 0..{num_classes - 1}")
        return k
    if text in class_names:
        return class_names.index(text)
    shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
    raise UserError(f"unknown class '{text}': choose one of {shown}")


def novel_offsets(n_views: int, radius: float) -> torch.Tensor:
    """Offsets (n, 2) evenly around the disc rim at `radius` (a fixed set for figures)."""
    theta = 2 * math.pi * torch.arange(n_views, dtype=torch.float32) / max(1, n_views)
    return radius * torch.stack([theta.cos(), theta.sin()], dim=-1)


@torch.no_grad()
def render_scene_files(model, scene, out_dir: Path, radius: float, n_views: int = 4, n_frames: int = 48,
                       resolution: int | None = None, fps: int = 20) -> dict[str, torch.Tensor]:
    """Write one scene's canonical image, depth, novel views and orbit video.

    Returns {"tiles": (2 + n_views, 3, H, W) images for grids, "canonical": the canonical RenderOutput}.
    """
    r = model.cfg.render
    res = resolution or model.resolution
    device = next(model.parameters()).device
    canon = model.render(scene, model.canonical_cameras(1, device), res, res)
    rgb, disp = to_unit(canon.rgb[0]), colorize(canon.disparity[:1])[0]
    save_png(out_dir / "canonical.png", rgb)
    save_png(out_dir / "depth.png", disp)
    atomic_save_npy(out_dir / "disparity.npy", canon.disparity[0, 0].cpu().numpy())
    tiles = [rgb, disp]
    cams = disc_offsets_to_cameras(novel_offsets(n_views, radius), r.camera_distance, r.fov_deg).to(device)
    for k in range(n_views):
        view = model.render(scene, cams[k], res, res)
        tile = to_unit(view.rgb[0])
        save_png(out_dir / f"novel_{k}.png", tile)
        tiles.append(tile)
    if n_frames > 0:
        write_video(out_dir / "orbit", orbit_frames(model, scene, n_frames, radius, res), fps=fps)
    return {"tiles": torch.stack([t.cpu() for t in tiles]), "canonical": canon}


@torch.no_grad()
def generate(stage1_run: str | Path, stage2_run: str | Path, out_dir: str | Path, n: int,
             class_label: str | int | None = None, radius: float | None = None, seed: int = 0,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             guidance: float | None = None, n_frames: int = 48, n_views: int = 4,
             resolution: int | None = None, device: str = "cpu", batch_size: int = 16) -> list[dict]:
    """Sample `n` new scenes and write their files (see module docstring); returns their records."""
    if n <= 0:
        raise UserError(f"-n must be positive, got {n}")
    gpt, cfg2, meta = load_stage2(stage2_run, device)
    model, cfg1 = load_stage1(stage1_run, device)
    check_stage2_matches(stage1_run, model, meta, stage2_run)
    s = cfg2.sample
    temperature = s.temperature if temperature is None else temperature
    top_k = s.top_k if top_k is None else top_k
    top_p = s.top_p if top_p is None else top_p
    guidance = s.guidance if guidance is None else guidance
    radius = cfg1.render.sampling_radius if radius is None else radius
    label = resolve_class(class_label, meta.get("class_names", []), meta["num_classes"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    records, rows = [], []
    for start in tqdm(range(0, n, batch_size), desc="generate"):
        b = min(batch_size, n - start)
        labels = None
        if meta["num_classes"]:
            if label is None:  # no class asked for: one random class per sample
                labels = torch.randint(meta["num_classes"], (b,), generator=generator, device=device)
            else:
                labels = torch.full((b,), label, dtype=torch.long, device=device)
        ids = sample(gpt, b, labels, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                     generator=generator)
        for j in range(b):
            i = start + j
            scene = model.decode(ids[j: j + 1])
            folder = out_dir / f"sample_{i:03d}"
            files = render_scene_files(model, scene, folder, radius, n_views, n_frames, resolution)
            save_scene(folder / "triplanes.safetensors", scene)
            atomic_save_npy(folder / "tokens.npy", ids[j].cpu().numpy().astype(np.int32))
            rows.append(files["tiles"])
            cls = None if labels is None else int(labels[j])
            records.append({"index": i, "folder": folder.name, "class": cls,
                            "class_name": meta["class_names"][cls] if cls is not None and meta.get("class_names")
                            else None})
    sheet = torch.cat(rows)  # (n * tiles_per_row, 3, H, W)
    save_png(out_dir / "grid.png", grid(sheet, rows=n))
    atomic_write_json(out_dir / "samples.json", {
        "stage1": str(stage1_run), "stage2": str(stage2_run), "seed": seed, "radius": radius,
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "guidance": guidance, "samples": records})
    return records
