"""Reference (real-image) statistics for FID/KID, computed once per extractor and cached.

    stats = reference_statistics(extractors, dataset, "test", cache_dir)   # {"inception": ..., ...}
    fid = frechet_distance(stats["inception"].mu, stats["inception"].sigma, *feature_stats(fake))

The cache holds `<cache_dir>/fid_ref/<key>.npz` (mu, sigma, n, and up to `KID_ROWS` raw feature
rows for KID) and `<key>.json` (what the key was made from), both written atomically. The key is
the first 16 hex digits of the SHA-256 of a JSON object of: the dataset identity (kind, path,
split, a hash of its file list and, for the synthetic set, its generator settings), the number of
images asked for, the resolution, and the extractor's identity (weights fingerprint, feature
name, quantization, resize rule). Any change gives a new key, so a stale cache is never reused.
See PROTOCOL.md beside this file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.eval.extractors import Extractor, FeatureSet
from vq3d.eval.metrics import feature_stats
from vq3d.utils.io import atomic_write, atomic_write_json

log = logging.getLogger("vq3d.eval")

KID_ROWS = 10_000  # raw feature rows kept for KID (a fixed random subset, seed 0, of larger sets)
CACHE_VERSION = 1


@dataclass
class ReferenceStats:
    """Statistics of one extractor's features over the real images."""

    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64, unbiased (N - 1)
    n: int  # images the statistics were computed from
    features: np.ndarray  # (min(n, KID_ROWS), D) float32 raw rows for KID
    key: str
    cached: bool  # True when read from the cache rather than computed now


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def dataset_identity(dataset: Dataset, split: str) -> dict[str, Any]:
    """A JSON-able description of the images `dataset` yields (see module docstring)."""
    from vq3d.data.images import ImageDataset
    from vq3d.data.synthetic_dataset import SyntheticDataset

    resolution = int(getattr(dataset, "resolution", 0))
    if isinstance(dataset, SyntheticDataset):
        from vq3d.data.synthetic_writer import SETTING_KEYS

        return {"kind": "synthetic", "path": str(dataset.root.resolve()), "split": split, "resolution": resolution,
                "settings": {k: dataset.card.get(k) for k in SETTING_KEYS},
                "files": _digest([r["image"] for r in dataset.records])}
    if isinstance(dataset, ImageDataset):
        files = [(r.key, r.size, r.mtime) for r in dataset.records]
        return {"kind": "images", "path": str(Path(dataset.source).resolve()) if dataset.source else "",
                "split": split, "resolution": resolution, "resize": "shorter side + centre crop, bicubic antialias",
                "files": _digest(sorted(files))}
    shards = getattr(dataset, "shards", None)
    if shards is not None:
        return {"kind": "webdataset", "split": split, "resolution": resolution,
                "resize": "shorter side + centre crop, bicubic antialias", "files": _digest(sorted(map(str, shards)))}
    return {"kind": type(dataset).__name__, "split": split, "resolution": resolution}


def iter_image_batches(dataset: Dataset, batch_size: int, max_images: int = 0,
                       workers: int = 0) -> Iterator[dict[str, Any]]:
    """Batches of the dataset's items in order (images float (B, 3, R, R) in [-1, 1]); at most
    `max_images` images in all (0 = one pass over everything); `workers` decoding processes."""
    from vq3d.data.loader import collate_items, loader_view

    if isinstance(dataset, IterableDataset) and hasattr(dataset, "repeat") and dataset.repeat:
        raise UserError("evaluation needs a finite dataset: streaming shards built for training repeat forever")
    if not isinstance(dataset, IterableDataset) and max_images and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))  # workers decode only what is used
    loader = DataLoader(loader_view(dataset, uint8=False), batch_size=batch_size, collate_fn=collate_items,
                        num_workers=workers, shuffle=False)
    seen = 0
    for batch in loader:
        batch.pop("_skipped", None)
        if max_images and seen + batch["image"].shape[0] > max_images:
            keep = max_images - seen
            batch = {k: v[:keep] for k, v in batch.items()}
        seen += batch["image"].shape[0]
        yield batch
        if max_images and seen >= max_images:
            return


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / "fid_ref"
    return folder / f"{key}.npz", folder / f"{key}.json"


def _load(cache_dir: Path, key: str) -> ReferenceStats | None:
    npz_path, json_path = _paths(cache_dir, key)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        with np.load(npz_path) as data:
            return ReferenceStats(data["mu"], data["sigma"], int(data["n"]), data["features"], key, cached=True)
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable reference statistics %s (%s); recomputing", npz_path, err)
        return None


def _save(cache_dir: Path, stats: ReferenceStats, description: dict[str, Any]) -> None:
    npz_path, json_path = _paths(cache_dir, stats.key)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "n": np.array(stats.n), "features": stats.features}
    atomic_write(npz_path, lambda p: np.savez(p, **arrays))
    atomic_write_json(json_path, {**description, "n": stats.n, "kid_rows": int(stats.features.shape[0])})


def reference_key(extractor: Extractor, identity: dict[str, Any], max_images: int) -> tuple[str, dict[str, Any]]:
    """(cache key, the JSON object it hashes)."""
    description = {"version": CACHE_VERSION, "dataset": identity, "max_images": int(max_images),
                   "extractor": extractor.identity}
    return _digest(description), description


def _from_features(features: np.ndarray, key: str) -> ReferenceStats:
    mu, sigma = feature_stats(features)
    rows = features
    if features.shape[0] > KID_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(features.shape[0], KID_ROWS, replace=False))
        rows = features[keep]
    return ReferenceStats(mu, sigma, int(features.shape[0]), rows.astype(np.float32), key, cached=False)


def reference_statistics(extractors: dict[str, Extractor], dataset: Dataset, split: str, cache_dir: str | Path,
                         max_images: int = 0, batch_size: int = 32, progress: bool = True,
                         workers: int = 0) -> dict[str, ReferenceStats]:
    """Statistics of each extractor's features over the real images of `dataset` (at most
    `max_images`, 0 = all), read from `cache_dir` when present, else computed in one pass over
    the images for every extractor that needs them and cached."""
    cache_dir = Path(cache_dir)
    identity = dataset_identity(dataset, split)
    out: dict[str, ReferenceStats] = {}
    todo: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, extractor in extractors.items():
        key, description = reference_key(extractor, identity, max_images)
        cached = _load(cache_dir, key)
        if cached is not None:
            out[name] = cached
        else:
            todo[name] = (key, description)
    if not todo:
        return out
    sets = {name: FeatureSet() for name in todo}
    total = min(len(dataset), max_images or len(dataset)) if hasattr(dataset, "__len__") else None
    bar = tqdm(total=total, desc="real statistics", unit="img", disable=not progress, leave=False)
    for batch in iter_image_batches(dataset, batch_size, max_images, workers):
        for name in todo:
            sets[name].add(*extractors[name](batch["image"]))
        bar.update(batch["image"].shape[0])
    bar.close()
    for name, (key, description) in todo.items():
        if len(sets[name]) < 2:
            raise UserError(f"reference statistics need at least 2 real images; {len(sets[name])} found "
                            f"in the '{split}' split")
        stats = _from_features(sets[name].features(), key)
        _save(cache_dir, stats, description)
        out[name] = stats
    return out


def default_cache_dir(data_path: str | Path, stage1_run: str | Path) -> Path:
    """Where reference statistics go without --cache: inside a synthetic dataset's folder (it
    ignores extra folders), else inside the Stage-1 run folder (an image folder would read a
    `fid_ref` folder as a class)."""
    from vq3d.data.loader import is_synthetic_root

    return Path(data_path) if is_synthetic_root(data_path) else Path(stage1_run)

