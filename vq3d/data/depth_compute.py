"""`vq3d depth`: fill a pseudo-GT disparity cache for a dataset, resumably.

    report = compute_depth_cache("imagenet/train", "cache/dpt", resolution=256)

Only images without a current entry are decoded and run through the model (so a second run
computes nothing and loads no model); a changed or renamed image has a new entry name and is
recomputed (depth_cache.py). Images are decoded in DataLoader workers straight to the model's
input size from the same centre-square box as the training crop, inferred in batches on the
GPU when present, and each result is stored at the training resolution as soon as its batch is
done. `part=(k, n)` processes every n-th image (or shard) from the k-th, so n processes (one per
GPU) can fill one cache together.

WebDataset shards: entries are keyed `SHARD/KEY` like the training stream; a marker per shard
records that it is complete (training checks markers, not millions of entries); with
`write_shards=DIR` a copy of each shard with a `KEY.disp.png` (16-bit) member per sample is
written to DIR once the shard is complete (read it back with data.depth_in_shards=true).
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from vq3d.data.decode import DEFAULT_MAX_PIXELS, BadImageError, crop_resize, decode_rgb
from vq3d.data.depth_cache import DepthCache, SourceId
from vq3d.data.depth_model import DEFAULT_DEPTH_MODEL, DepthEstimator
from vq3d.data.images import ImageRecord, list_class_folders, list_flat, read_file_list
from vq3d.data.shards import (
    DISPARITY_EXT,
    encode_disparity_png,
    expand_shard_spec,
    image_member,
    iter_tar_samples,
    partition,
    shard_id,
)
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write

log = logging.getLogger("vq3d.data")


@dataclass
class DepthReport:
    """What a `compute_depth_cache` run did."""

    unit: str = "images"  # what `total` and `already_cached` count: images or shards
    total: int = 0  # images (file datasets) or shards (WebDataset) in this part
    already_cached: int = 0  # images (or complete shards) skipped because their entry exists
    computed: int = 0  # images run through the model
    bad: dict[str, str] = field(default_factory=dict)  # key -> reason, images found unusable now
    known_bad: int = 0  # images found unusable by an earlier run (not retried)
    pruned: int = 0  # stale entries deleted (prune=True)
    shards_written: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _model_input(source: str | bytes, height: int, width: int, max_pixels: int) -> np.ndarray:
    """Decode and resize the training crop's square to the model input: uint8 (H, W, 3)."""
    img = decode_rgb(source, max_pixels=max_pixels, draft_size=max(height, width))
    return crop_resize(img, (height, width))


class _FileInputs(Dataset):
    """Pending file records -> {"source", "key", "pixels"} or {"key", "bad"}."""

    def __init__(self, records: Sequence[ImageRecord], estimator_spec: Any, max_pixels: int):
        self.records, self.spec, self.max_pixels = list(records), estimator_spec, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            pixels = _model_input(record.path, self.spec.height, self.spec.width,
                                  self.max_pixels)
        except BadImageError as err:
            return {"source": record.source_id(), "key": record.key, "bad": str(err)}
        return {"source": record.source_id(), "key": record.key, "pixels": pixels}


class _ShardInputs(IterableDataset):
    """Streams uncached samples of the shards; a {"shard_done": ...} item ends each shard."""

    def __init__(self, shards: Sequence[str], cache: DepthCache, spec: Any, max_pixels: int):
        self.shards, self.cache, self.spec, self.max_pixels = list(shards), cache, spec, max_pixels

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        positions, modulus, offset = partition(len(self.shards), 0, 1, worker, workers)
        if modulus > 1:  # fewer shards than workers: worker 0 takes them all
            positions = positions if worker == 0 else []
        for position in positions:
            path = self.shards[position]
            name = shard_id(path)
            samples = bad = 0
            try:
                for key, members in iter_tar_samples(path):
                    samples += 1
                    sid = f"{name}/{key}"
                    ext = image_member(members)
                    if ext is None:
                        bad += 1
                        yield {"key": sid, "bad": "not an image: sample has no image member"}
                        continue
                    data, member = members[ext]
                    source = SourceId(sid, int(member.size), int(member.mtime))
                    if self.cache.entry_path(source).exists():
                        continue
                    try:
                        pixels = _model_input(data, self.spec.height, self.spec.width,
                                              self.max_pixels)
                    except BadImageError as err:
                        bad += 1
                        yield {"key": sid, "bad": str(err)}
                        continue
                    yield {"source": source, "key": sid, "pixels": pixels}
            except (tarfile.TarError, OSError, EOFError) as err:
                yield {"key": name, "bad": f"unreadable shard: {err}"}
                continue
            yield {"shard_done": path, "samples": samples, "bad_count": bad}


def _list_records(data: str, kind: str) -> list[ImageRecord]:
    if kind == "filelist":
        return read_file_list(data)[0]
    if kind == "folder":
        return list_class_folders(data)[0]
    if kind == "flat":
        return list_flat(data)
    raise UserError(f"unknown dataset kind '{kind}'")


def write_shard_with_depth(source_shard: str, cache: DepthCache, out_dir: str | Path) -> Path:
    """Copy a shard adding `KEY.disp.png` (16-bit) for every sample with a cache entry."""
    out = Path(out_dir) / os.path.basename(source_shard)
    name = shard_id(source_shard)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            for key, members in iter_tar_samples(source_shard):
                for ext, (data, info) in members.items():
                    if ext == DISPARITY_EXT:
                        continue  # replaced by the current cache entry
                    copy = tarfile.TarInfo(info.name)
                    copy.size, copy.mtime, copy.mode = len(data), info.mtime, info.mode
                    tar.addfile(copy, io.BytesIO(data))
                ext = image_member(members)
                if ext is None:
                    continue
                data, info = members[ext]
                entry = cache.entry_path(SourceId(f"{name}/{key}", int(info.size), int(info.mtime)))
                if not entry.exists():
                    continue
                png = encode_disparity_png(np.load(entry, allow_pickle=False))
                disp = tarfile.TarInfo(f"{key}.{DISPARITY_EXT}")
                disp.size, disp.mtime = len(png), info.mtime
                tar.addfile(disp, io.BytesIO(png))

    atomic_write(out, write)
    return out


def compute_depth_cache(
    data: str, out: str | Path, *, model: str = DEFAULT_DEPTH_MODEL, resolution: int = 256,
    batch_size: int = 16, device: str = "auto", allow_download: bool = False,
    kind: str = "auto", num_workers: int = 2, part: tuple[int, int] = (0, 1),
    write_shards: str | Path | None = None, prune: bool = False, progress: bool = True,
    precision: str = "auto", model_output: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS, estimator: DepthEstimator | None = None,
) -> DepthReport:
    """Fill the cache at `out` for the dataset at `data` (module docstring); returns a report."""
    from vq3d.data.loader import detect_kind  # loader imports this package's siblings

    if resolution < 8:
        raise UserError(f"--res {resolution} is too small (at least 8)")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, not {batch_size}")
    index, count = part
    if not (count >= 1 and 0 <= index < count):
        raise UserError(f"--part {index}/{count} must be K/N with 0 <= K < N")
    kind = detect_kind(data) if kind == "auto" else kind
    if kind == "synthetic":
        raise UserError(f"{data} is the synthetic dataset: its ground-truth depth is used, no "
                        "cache is needed (--estimator-like writes estimator-like maps of it; --kind "
                        "flat runs the depth model on it anyway)")
    if write_shards and kind != "webdataset":
        raise UserError("--write-shards needs WebDataset shards as --data")
    cache = DepthCache(out, resolution)
    cache.claim(model if estimator is None else estimator.name, model_output)
    report = DepthReport()
    start = time.perf_counter()
    state: dict[str, Any] = {"estimator": estimator}

    def get_estimator() -> DepthEstimator:
        if state["estimator"] is None:
            state["estimator"] = DepthEstimator(model, device=device, allow_download=allow_download,
                                                precision=precision, model_output=model_output)
        return state["estimator"]

    if kind == "webdataset":
        shards = expand_shard_spec(data)[index::count]
        report.unit, report.total = "shards", len(shards)
        pending = []
        for path in shards:
            if cache.shard_done(shard_id(path), SourceId.of_file(path, shard_id(path))):
                report.already_cached += 1
                if write_shards and not (Path(write_shards) / os.path.basename(path)).exists():
                    write_shard_with_depth(path, cache, write_shards)
                    report.shards_written += 1
            else:
                pending.append(path)
        if pending:
            est = get_estimator()
            inputs = _ShardInputs(pending, cache, est.spec, max_pixels)
            _run(inputs, est, cache, resolution, batch_size, num_workers, report, progress,
                 None, write_shards)
    else:
        records = _list_records(data, kind)[index::count]
        report.total = len(records)
        if prune:
            if count > 1:
                raise UserError("--prune cannot be combined with --part (it would delete the other "
                                "parts' entries)")
            report.pruned = cache.prune_stale(r.source_id() for r in records)
        have, known_bad = cache.existing_digests(), cache.bad_digests()
        digests = [r.source_id().digest() for r in records]
        report.already_cached = sum(d in have for d in digests)
        report.known_bad = sum(d in known_bad and d not in have for d in digests)
        todo_set = {r.source_id() for r, d in zip(records, digests)
                    if d not in have and d not in known_bad}  # known-bad ones are not retried
        todo = [r for r in records if r.source_id() in todo_set]
        if todo:
            est = get_estimator()
            inputs = _FileInputs(todo, est.spec, max_pixels)
            _run(inputs, est, cache, resolution, batch_size, num_workers, report, progress,
                 len(inputs), None)
    report.seconds = time.perf_counter() - start
    for key, reason in list(report.bad.items())[:20]:
        log.warning("no depth for unusable image %s (%s)", key, reason)
    return report


def _run(inputs: Dataset, estimator: DepthEstimator, cache: DepthCache, resolution: int,
         batch_size: int, num_workers: int, report: DepthReport, progress: bool,
         total: int | None, write_shards: str | Path | None) -> None:
    from tqdm import tqdm

    loader = DataLoader(inputs, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list, prefetch_factor=4 if num_workers > 0 else None)
    with tqdm(total=total, unit="img", desc="depth", disable=not progress) as bar:
        for items in loader:
            good = [it for it in items if "pixels" in it]
            if good:
                pixels = torch.from_numpy(np.stack([it["pixels"] for it in good]))  # (B,H,W,3)
                disparity = estimator.predict_disparity(pixels, resolution).numpy()  # (B,R,R)
                for item, disp in zip(good, disparity):
                    cache.save(item["source"], disp)
                report.computed += len(good)
                bar.update(len(good))
            for item in items:
                if "bad" in item:
                    report.bad[item["key"]] = item["bad"]
                    if "source" in item:
                        cache.save_bad(item["source"], item["bad"])
                    bar.update(1 if total is not None else 0)
                elif "shard_done" in item:
                    path = item["shard_done"]
                    cache.mark_shard_done(shard_id(path), SourceId.of_file(path, shard_id(path)),
                                          item["samples"], item["bad_count"])
                    if write_shards:
                        write_shard_with_depth(path, cache, write_shards)
                        report.shards_written += 1
