"""One entry point for every dataset kind, and the batch loader the trainers use.

    dataset = build_dataset(cfg.data, "train", seed=cfg.train.seed, rank=rank, world_size=world)
    loader = build_loader(dataset, cfg.train.batch_size, num_workers=cfg.data.num_workers,
                          seed=cfg.train.seed, rank=rank, world_size=world, device=device)
    for batch in loader:   # one epoch (an endless stream for training shards); call again for more
        batch["image"]      # float32 (B, 3, R, R) in [-1, 1] on `device`
        batch["label"]      # int64 (B,)
        batch["key"]        # list of B stable ids
        batch["disparity"]  # float32 (B, 1, R, R) in [0, 1] when the data has depth
    write_dataset_info(loader, run_dir)   # class_index.json and bad_files.json

Kinds (`data.kind`, or detected by `detect_kind` when "auto"): `synthetic` (the built-in
dataset, dataset.json in its root; its ground-truth disparity is the depth target), `folder`
(class sub-folders), `flat` (unconditional), `filelist` (CSV/JSONL), `webdataset` (tar shards).

For a GPU, workers return uint8 images and the batch is converted to float after the move to
the device (4x fewer bytes between processes and to the GPU); on CPU the workers convert
(measured as fast or faster there). A custom loop can do the same:
DataLoader(loader_view(dataset, uint8=...), collate_fn=collate_items, ...), then per batch pop
"_skipped" (list of (key, reason)) and apply `images_to_float` to batch["image"].
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from vq3d.config import DataConfig
from vq3d.data.decode import is_image_name
from vq3d.data.images import ImageDataset, list_class_folders, list_flat, read_file_list
from vq3d.data.shards import ShardDataset, expand_shard_spec
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json

log = logging.getLogger("vq3d.data")

FILE_LIST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".txt")


def is_synthetic_root(path: str | Path) -> bool:
    """A folder written by `vq3d synth`: dataset.json naming the synthetic generator (a value
    of kind/format/type/generator/dataset/name containing "synthetic"), or dataset.json next to
    the synthetic manifest.jsonl."""
    card = Path(path) / "dataset.json"
    if not card.is_file():
        return False
    if (Path(path) / "manifest.jsonl").is_file():
        return True
    try:
        info = json.loads(card.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    markers = [info.get(k) for k in ("kind", "format", "type", "generator", "dataset", "name")]
    return any(isinstance(m, str) and "synthetic" in m.lower() for m in markers)


def detect_kind(path: str | Path) -> str:
    """The dataset kind at `path` (see the module docstring); UserError when none fits."""
    text = str(path)
    if not text:
        raise UserError("data.path is empty: set it to an image folder, a file list or shards")
    if any(c in text for c in "{*?") or "::" in text or text.endswith(".tar"):
        return "webdataset"
    p = Path(text)
    if p.is_file():
        if p.suffix.lower() in FILE_LIST_SUFFIXES:
            return "filelist"
        raise UserError(f"{p} is a file but not a file list (.csv, .jsonl) or a .tar shard")
    if not p.is_dir():
        raise UserError(f"dataset path {p} does not exist")
    if is_synthetic_root(p):
        return "synthetic"
    entries = [e for e in os.scandir(p) if not e.name.startswith(".")]
    if any(not e.is_dir() and is_image_name(e.name) for e in entries):
        return "flat"
    if any(e.name.endswith(".tar") and e.is_file() for e in entries):
        return "webdataset"
    if any(e.is_dir() for e in entries):
        return "folder"
    raise UserError(f"no images, class folders or shards found in {p}")


def _split_path(path: str, split: str) -> str:
    """`path/split` when that folder exists (e.g. imagenet/train, imagenet/val), else `path`:
    real datasets use the same images for every split unless they have split folders."""
    candidate = Path(path) / split
    return str(candidate) if split and candidate.is_dir() else path


def build_dataset(data: DataConfig, split: str = "train", *, train: bool | None = None,
                  seed: int = 0, rank: int = 0, world_size: int = 1,
                  require_depth: bool = False, novel_views: bool = True) -> Dataset:
    """The dataset `data` describes. `train` (default: split == "train") enables flips and,
    for shards, shuffling and an endless stream. `require_depth`: raise UserError when the
    items would carry no disparity (real images without `data.depth_cache`). `novel_views`:
    synthetic items carry their novel views (training does not need them)."""
    train = split == "train" if train is None else train
    kind = data.kind if data.kind != "auto" else detect_kind(data.path)
    if data.kind == "auto" and kind == "folder" and _split_path(data.path, split) != data.path:
        kind = detect_kind(_split_path(data.path, split))  # e.g. root/train holds flat images
    if kind == "synthetic":
        from vq3d.data.synthetic_dataset import SyntheticDataset

        if not Path(data.path).is_dir():
            raise UserError(f"synthetic dataset {data.path} does not exist: run `vq3d synth`")
        # its splits are "train" and "test": a validation split reads the test scenes
        return SyntheticDataset(data.path, split="test" if split in ("val", "valid") else split,
                                novel_views=novel_views, cache_mb=data.cache_mb,
                                depth_cache=data.depth_cache or None,
                                skip_missing_depth=data.skip_missing_depth, hflip=data.hflip and train)
    has_depth = bool(data.depth_cache) or (kind == "webdataset" and data.depth_in_shards)
    if require_depth and not has_depth:
        raise UserError(f"the depth loss needs pseudo-GT depth for {data.path}: run `vq3d depth "
                        f"--data {data.path} --out CACHE --res {data.resolution}` and set "
                        "data.depth_cache=CACHE (or set loss.depth=0)")
    common = dict(resolution=data.resolution, hflip=data.hflip and train,
                  depth_cache=data.depth_cache or None, skip_missing_depth=data.skip_missing_depth,
                  max_pixels=data.max_image_pixels)
    if kind == "webdataset":
        return ShardDataset(expand_shard_spec(data.path), **common,
                            depth_in_shards=data.depth_in_shards, shuffle=train,
                            shuffle_buffer=data.shuffle_buffer, seed=seed, rank=rank,
                            world_size=world_size, repeat=train, source=data.path)
    if kind == "filelist":
        records, class_names = read_file_list(data.path)
        source = data.path
    elif kind in ("folder", "flat"):
        source = _split_path(data.path, split)
        if not Path(source).is_dir():
            raise UserError(f"image folder {source} does not exist")
        if kind == "folder":
            records, class_names = list_class_folders(source)
        else:
            records, class_names = list_flat(source), []
    else:
        raise UserError(f"unknown data.kind '{kind}'")
    return ImageDataset(records, class_names=class_names, verify=data.verify_images,
                        source=source, **common)


def loader_view(dataset: Dataset, uint8: bool = True) -> Dataset:
    """A shallow copy of an image/shard dataset for a DataLoader with `collate_items`: items
    carry the files skipped on the way ("_skipped") and, with `uint8`, uint8 images (convert
    batches with `images_to_float`). The caller's dataset is unchanged; other datasets are
    returned as is."""
    if not hasattr(dataset, "emit_uint8"):
        return dataset
    view = copy.copy(dataset)
    view.emit_uint8 = uint8
    view.report_skips = True
    return view


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float32 in [-1, 1]; float input is returned as is."""
    return images.float().div_(127.5).sub_(1.0) if images.dtype == torch.uint8 else images


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """default_collate, plus the list of files skipped on the way (`_skipped`)."""
    skipped = [s for item in items for s in item.pop("_skipped", ())]
    batch = default_collate(items)
    batch["_skipped"] = skipped
    return batch


class BatchLoader:
    """Batches of float images on `device`; counts and logs bad files in the main process."""

    def __init__(self, dataset: Dataset, batch_size: int, *, num_workers: int = 2,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.bad_files: dict[str, str] = dict(getattr(dataset, "bad_files", {}))
        # uint8 images to a GPU (4x fewer bytes; converted there); on CPU converting in the
        # workers measured as fast or faster (benchmarks/loader.py).
        uint8 = self.device is not None and self.device.type == "cuda"
        dataset = loader_view(dataset, uint8=uint8)
        self.dataset = dataset
        iterable = isinstance(dataset, IterableDataset)
        self.sampler = None
        if not iterable:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                              shuffle=shuffle, seed=seed, drop_last=False)
            if drop_last and len(self.sampler) < batch_size:
                log.warning("only %d images per rank for batch size %d: keeping the last "
                            "partial batch", len(self.sampler), batch_size)
                drop_last = False
        pin = self.device is not None and self.device.type == "cuda"
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
            collate_fn=collate_items, drop_last=drop_last, pin_memory=pin,
            persistent_workers=num_workers > 0 and not iterable,
            prefetch_factor=4 if num_workers > 0 else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def _note_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for key, reason in skipped:
            if key not in self.bad_files:
                log.warning("skipping unusable image %s (%s)", key, reason)
            self.bad_files[key] = reason

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        for batch in self.loader:
            self._note_skipped(batch.pop("_skipped", []))
            if self.device is not None:
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
            if torch.is_tensor(batch.get("image")):
                batch["image"] = images_to_float(batch["image"])
            yield batch
        self.epoch += 1


def build_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 2,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device | None = None) -> BatchLoader:
    """A `BatchLoader` (see its docstring); `rank`/`world_size` split map-style data."""
    return BatchLoader(dataset, batch_size, num_workers=num_workers, shuffle=shuffle,
                       drop_last=drop_last, seed=seed, rank=rank, world_size=world_size,
                       device=device)


def write_dataset_info(source: BatchLoader | Dataset, run_dir: str | Path) -> None:
    """Write class_index.json (labelled data) and bad_files.json into the run folder."""
    dataset = source.dataset if isinstance(source, BatchLoader) else source
    run_dir = Path(run_dir)
    class_names = getattr(dataset, "class_names", None)
    if class_names:
        atomic_write_json(run_dir / "class_index.json", {n: i for i, n in enumerate(class_names)})
    bad = source.bad_files if isinstance(source, BatchLoader) else getattr(dataset, "bad_files", {})
    atomic_write_json(run_dir / "bad_files.json", dict(sorted(bad.items())))
    if hasattr(dataset, "depth_source"):  # synthetic data: which depth targets the run trained on
        atomic_write_json(run_dir / "dataset_info.json", {"depth_targets": dataset.depth_source})
