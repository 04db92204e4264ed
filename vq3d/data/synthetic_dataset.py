"""Read the synthetic dataset back (`SyntheticDataset`) and draw its contact sheet.

    ds = SyntheticDataset("runs/demo/data", split="train")
    item = ds[0]   # image (3,H,W) in [-1,1], depth/disparity (1,H,W), label, novel views, cameras

Splits are fixed by scene index (`synthetic_writer.split_of`: every 10th scene is "test"), so
a dataset that grows keeps its held-out scenes held out.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from vq3d.data.depth_cache import DepthCache, SourceId, missing_depth_error
from vq3d.data.raycast import bounding_radius
from vq3d.data.synthetic_writer import read_card, read_manifest, write_bytes
from vq3d.errors import UserError
from vq3d.utils.images import colorize

SPLITS = ("train", "test")


class SyntheticDataset(torch.utils.data.Dataset):
    """Scenes of a folder written by `vq3d synth`, optionally one split ("train" or "test").

    Each item is a dict:
      image (3, H, W) float in [-1, 1]; depth (1, H, W) ray distance; disparity (1, H, W) = 1/depth
      label int (index into `class_names`); index int (scene index)
      novel_images (K, 3, H, W); novel_depths (K, 1, H, W); novel_c2w (K, 4, 4)
      c2w (4, 4) the canonical camera; fov_deg float
      object_center (3,) and object_radius (a float): the object's bounding ball in the world
    With `novel_views=False` (training, which never looks at them) the novel-view entries are
    left out and their files are not read.

    `cache_mb` > 0 keeps each decoded item in memory after its first read when the split's items
    fit in that many MB (each DataLoader worker keeps its own): at 32x32 decoding was ~8% of a
    demo training step, and a run reads every scene ~18 times.

    `hflip`: each item read is mirrored left-right with probability 1/2 (training's `data.hflip`):
    a mirrored scene seen by the mirrored camera, so images, depths and disparities flip, and the
    cameras (c2w -> M c2w M with M = diag(-1, 1, 1, 1)) and the object's centre mirror in x.

    `depth_cache`: a pseudo-GT disparity cache (e.g. estimator-like maps, `vq3d.data.pseudo_depth`)
    whose entries replace "disparity" (relative, in [0, 1]), read as photos' are; "depth" stays the
    truth (for evaluation). Scenes without an entry are an error, or left out with
    `skip_missing_depth`.
    """

    def __init__(self, root: str | Path, split: str | None = None, novel_views: bool = True,
                 cache_mb: float = 0.0, depth_cache: str | Path | None = None,
                 skip_missing_depth: bool = False, hflip: bool = False) -> None:
        self.novel_views, self.hflip = novel_views, hflip
        if split not in (None, *SPLITS):
            raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)} (or None for every scene)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset folder {self.root} does not exist; "
                            f"create it with `vq3d synth --out {self.root} ...`")
        self.card: dict[str, Any] = read_card(self.root)
        self.class_names: list[str] = list(self.card["classes"])
        self.resolution: int = int(self.card["resolution"])
        self.views: int = int(self.card["views"])
        self.fov_deg: float = float(self.card["fov_deg"])
        records = read_manifest(self.root, self.views, check_files=False)
        self.records = [r for r in records if split is None or r["split"] == split]
        if not self.records:
            which = f"{split} scenes" if split else "scenes"
            raise UserError(f"{self.root} has no {which} yet ({len(records)} scenes in all; every "
                            f"{self.card['test_every']}th is a test scene); "
                            "generate more with `vq3d synth --n`")
        self.depth_cache = DepthCache(depth_cache, self.resolution) if depth_cache else None
        if self.depth_cache is not None:
            self.depth_cache.check_readable()
            missing = set(self.depth_cache.missing([self.source_id(i) for i in range(len(self.records))]))
            if missing and not skip_missing_depth:
                keys = [r["image"] for i, r in enumerate(self.records) if self.source_id(i) in missing]
                raise missing_depth_error(keys, len(self.records), depth_cache, self.root, "scenes")
            self.records = [r for i, r in enumerate(self.records) if self.source_id(i) not in missing]
        self._cache: dict[int, dict[str, Any]] | None = None
        if cache_mb > 0 and len(self.records) * self.item_bytes() <= cache_mb * 2**20:
            self._cache = {}

    def item_bytes(self) -> int:
        """Bytes of one decoded item's tensors (image, depth, disparity and any novel views)."""
        per_map = self.resolution ** 2 * 4  # float32
        views = self.views if self.novel_views else 0
        return per_map * (3 + 2 + 4 * views)  # image, depth, disparity; novel images and depths

    def __len__(self) -> int:
        return len(self.records)

    def source_id(self, i: int) -> SourceId:
        """The depth-cache key of scene i: its canonical image, by its path under the root."""
        rel = self.records[i]["image"]
        return SourceId.of_file(self.root / rel, rel)

    @property
    def depth_source(self) -> str:
        """Where "disparity" comes from: the truth or the depth cache's model."""
        if self.depth_cache is None:
            return "true disparity (1 / depth)"
        meta = self.depth_cache.read_meta() or {}
        return f"depth cache {self.depth_cache.root} ({meta.get('model', 'unknown model')})"

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        if not path.is_file():
            raise UserError(f"{path} is missing; regenerate the dataset with `vq3d synth`")
        return path

    def _image(self, rel: str) -> Tensor:
        with Image.open(self._path(rel)) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is None:
            item = self._read(i)
        else:
            if i not in self._cache:
                self._cache[i] = self._read(i)
            item = dict(self._cache[i])  # a new dict: callers may add or pop keys
        if self.hflip and bool(torch.rand(()) < 0.5):  # as ImageDataset's flips
            item = mirrored(item)
        return item

    def _read(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        depth = torch.from_numpy(np.load(self._path(record["depth"])))  # (1 + K, H, W) float32
        image = self._image(record["image"])
        disparity = 1.0 / depth[:1]
        if self.depth_cache is not None:
            disparity = torch.from_numpy(self.depth_cache.load(self.source_id(i)))[None]  # (1, R, R)
        item = {
            "image": image,
            "depth": depth[:1],
            "disparity": disparity,
            "label": int(record["label"]),
            "index": int(record["index"]),
            "c2w": torch.tensor(record["c2w"], dtype=torch.float32),
            "fov_deg": float(record["fov_deg"]),
            "object_center": torch.tensor(record["object"]["center"], dtype=torch.float32),
            "object_radius": bounding_radius(record["object"]["shape"], record["object"]["params"]),
        }
        if self.novel_views:
            novel = [self._image(rel) for rel in record["novel_images"]]
            item["novel_images"] = torch.stack(novel) if novel else torch.zeros(0, *image.shape)
            item["novel_depths"] = depth[1:, None]
            item["novel_c2w"] = torch.tensor(record["novel_c2w"], dtype=torch.float32).reshape(-1, 4, 4)
        return item


MIRROR_X = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def mirrored(item: dict[str, Any]) -> dict[str, Any]:
    """A scene item mirrored left-right (a new dict; the input is not changed): the world's x and
    the cameras' x both negate, so every view's image, depth and disparity flip along their
    columns, each camera becomes M c2w M (M = diag(-1, 1, 1, 1)) and the object's centre mirrors."""
    out = dict(item)
    for key in ("image", "depth", "disparity", "novel_images", "novel_depths"):
        if key in out:
            out[key] = out[key].flip(-1)
    for key in ("c2w", "novel_c2w"):
        if key in out:
            out[key] = MIRROR_X @ out[key] @ MIRROR_X
    out["object_center"] = out["object_center"] * MIRROR_X.diagonal()[:3]
    return out


# ----------------------------------------------------------------------------- contact sheet

def colorize_disparity(disparity: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Disparity (..., H, W) -> uint8 RGB (..., H, W, 3) with the project's colour map
    (`vq3d.utils.images.colorize`): near (high disparity) red, far blue."""
    d = np.asarray(disparity, dtype=np.float32)
    rgb = colorize(torch.from_numpy(d).reshape(-1, 1, *d.shape[-2:]), lo, hi)  # (N, 3, H, W)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8).reshape(*d.shape, 3)


def contact_sheet(dataset: SyntheticDataset, rows: int = 8, tile: int = 96) -> Image.Image:
    """One row per scene: canonical image | its depth | novel views | their depths.

    Depths are shown as disparity with one colour scale per row (the canonical view's range),
    so colours compare across the row's views. Tiles are upscaled (nearest) to >= `tile` px.
    """
    rows = min(rows, len(dataset))
    res, views = dataset.resolution, dataset.views
    scale = max(1, math.ceil(tile / res))
    size, gap = res * scale, 2
    cols = 2 + 2 * views
    width, height = cols * size + (cols + 1) * gap + 2 * gap, rows * size + (rows + 1) * gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for row in range(rows):
        item = dataset[row]
        images = torch.cat([item["image"][None], item["novel_images"]])
        rgb = ((images.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        disparity = 1.0 / torch.cat([item["depth"], item["novel_depths"][:, 0]]).numpy()
        depth_rgb = colorize_disparity(disparity, float(disparity[0].min()), float(disparity[0].max()))
        tiles = [rgb[0], depth_rgb[0], *rgb[1:], *depth_rgb[1:]]
        y = gap + row * (size + gap)
        for col, tile_image in enumerate(tiles):
            x = gap + col * (size + gap) + (2 * gap if col >= 2 else 0)  # wider gap after the canonical pair
            sheet.paste(Image.fromarray(tile_image).resize((size, size), Image.NEAREST), (x, y))
        label = f"{item['index']}: {dataset.class_names[item['label']]}"
        draw.rectangle([gap, y, gap + 6 * len(label) + 3, y + 11], fill="black")
        draw.text((gap + 2, y), label, fill="white")
    return sheet


def write_contact_sheet(root: str | Path, path: str | Path, rows: int = 8) -> Path:
    """Write the contact sheet of the first `rows` scenes of `root` as a PNG (atomically)."""
    if rows < 1:
        raise UserError(f"--contact-sheet-rows {rows}: need at least one row")
    buffer = io.BytesIO()
    contact_sheet(SyntheticDataset(root), rows).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
    return Path(path)
