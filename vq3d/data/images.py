"""Image datasets from files: class folders (ImageNet layout), flat folders and file lists.

Items are dicts:
    image      float32 (3, R, R) in [-1, 1]   (uint8 (3, R, R) when `emit_uint8`; see loader.py)
    label      int: class index, or UNLABELED (-1) for unconditional data
    key        str: stable id, the path relative to the dataset root (or as the list wrote it)
    disparity  float32 (1, R, R) in [0, 1], only when a depth cache is given; flipped with the image

Preprocessing (ViT-VQGAN): shorter side resized to R, centre crop, optional random horizontal
flip. Labels: class sub-folder names sorted alphabetically give indices 0..C-1
(`class_names`, `write_class_index`). A flat folder is unconditional: every label is -1, so a
class-conditional model cannot silently train on one fake class (use `label >= 0` to test).

Bad files (policy):
1. At construction a fast header check (`verify=True`, the default) drops every file that is
   missing, unreadable, empty, not an image or too large (decompression bomb); they are listed in
   `bad_files` ({key: reason}) and logged as warnings by the `vq3d.data` logger.
2. A file that passes the header check but fails to decode (e.g. truncated) is met in
   `__getitem__`: it is recorded in `bad_files` of the process that met it and the next index's
   item is returned instead, so training never stops on a bad file. When `report_skips` is set
   (the loader of `loader.py` sets it), the skipped files ride along in the item under
   "_skipped" and the loader counts and logs them in the main process; otherwise the process
   that met them logs them.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vq3d.data.decode import DEFAULT_MAX_PIXELS, BadImageError, is_image_name, load_crop, probe_image
from vq3d.data.depth_cache import DepthCache, SourceId, missing_depth_error
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json

log = logging.getLogger("vq3d.data")

UNLABELED = -1  # label of unconditional images (flat folders, file lists without labels)
MAX_CONSECUTIVE_BAD = 64  # __getitem__ gives up (UserError) after this many bad files in a row
LOGGED_BAD_FILES = 20  # bad files named one per line in the log; the rest are summarized
_PARALLEL_VERIFY_FROM = 20_000  # header checks use a process pool from this many files


@dataclass(frozen=True)
class ImageRecord:
    """One image file: absolute path, stable key, label, and size/mtime (-1: could not stat)."""

    path: str
    key: str
    label: int = UNLABELED
    size: int = -1
    mtime: int = -1

    def source_id(self) -> SourceId:
        return SourceId(self.key, self.size, self.mtime)


def _record(path: str, key: str, label: int) -> ImageRecord:
    try:
        st = os.stat(path)
        return ImageRecord(path, key, label, int(st.st_size), int(st.st_mtime))
    except OSError:
        return ImageRecord(path, key, label)  # broken link or unreadable: found by verify


def _walk_images(folder: Path) -> list[str]:
    """Image files (by extension) under `folder`, recursively, sorted; hidden names skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and is_image_name(f))
    # os.walk lists broken symlinks among filenames, which verify reports as "missing"
    return sorted(found)


def _key(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def list_flat(root: str | Path) -> list[ImageRecord]:
    """Every image under `root` (recursively), unlabeled (-1), sorted by key."""
    root = Path(root)
    return [_record(p, _key(p, root), UNLABELED) for p in _walk_images(root)]


def list_class_folders(root: str | Path) -> tuple[list[ImageRecord], list[str]]:
    """ImageNet layout root/CLASS/**/image: records and the sorted class names (index order)."""
    root = Path(root)
    class_names = sorted(e.name for e in os.scandir(root)
                         if e.is_dir() and not e.name.startswith("."))
    records = []
    for index, name in enumerate(class_names):
        files = _walk_images(root / name)
        if not files:
            log.warning("class folder %s holds no images (class %d kept for a stable index)",
                        root / name, index)
        records.extend(_record(p, _key(p, root), index) for p in files)
    return records, class_names


def _labels_from_strings(raw: list[str | int | None], where: str) -> tuple[list[int], list[str]]:
    """Integers stay integers; otherwise names are indexed in sorted order; missing -> -1."""
    present = [r for r in raw if r is not None and str(r).strip() != ""]
    def as_int(v: Any) -> int | None:
        try:
            return int(str(v).strip())
        except ValueError:
            return None
    if all(as_int(v) is not None for v in present):
        labels = [UNLABELED if (v is None or str(v).strip() == "") else as_int(v) for v in raw]
        if any(label < UNLABELED for label in labels):
            raise UserError(f"{where}: labels must be >= 0 (or empty for none)")
        return labels, []
    names = sorted({str(v).strip() for v in present})
    index = {n: i for i, n in enumerate(names)}
    return [UNLABELED if (v is None or str(v).strip() == "") else index[str(v).strip()]
            for v in raw], names


def read_file_list(list_path: str | Path) -> tuple[list[ImageRecord], list[str]]:
    """A CSV (`path[,label]`, header optional) or JSONL ({"path", "label"?}) file list.

    Relative paths are resolved against the list's folder; keys are the paths as written
    (normalized). Labels may be integers or class names (indexed in sorted order).
    """
    list_path = Path(list_path)
    base = list_path.parent
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read file list {list_path}: {err}") from None
    paths: list[str] = []
    raw_labels: list[str | int | None] = []
    if list_path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise UserError(f"{list_path}:{number}: not valid JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise UserError(f"{list_path}:{number}: each line must be an object with a 'path'")
            paths.append(row["path"])
            raw_labels.append(row.get("label"))
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        path_col, label_col = 0, 1
        if rows and "path" in [c.strip().lower() for c in rows[0]]:
            header = [c.strip().lower() for c in rows.pop(0)]
            path_col = header.index("path")
            label_col = header.index("label") if "label" in header else -1
        for number, row in enumerate(rows, 1):
            if len(row) <= path_col or not row[path_col].strip():
                raise UserError(f"{list_path}: data row {number} has no path")
            paths.append(row[path_col].strip())
            has_label = label_col >= 0 and len(row) > label_col
            raw_labels.append(row[label_col] if has_label else None)
    if not paths:
        raise UserError(f"file list {list_path} names no images")
    labels, class_names = _labels_from_strings(raw_labels, str(list_path))
    records = []
    for written, label in zip(paths, labels):
        key = Path(os.path.normpath(written)).as_posix()
        full = written if os.path.isabs(written) else str(base / written)
        records.append(_record(full, key, label))
    return records, class_names


def pool_context() -> BaseContext:
    """Process start method for header checks: fork where available (like DataLoader workers;
    no `if __name__ == "__main__"` guard needed in user scripts), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _probe_record(args: tuple[str, int, int]) -> str | None:
    path, size, max_pixels = args
    if size < 0 and not os.path.lexists(path):
        return "missing"
    try:
        probe_image(path, max_pixels)
    except BadImageError as err:
        return str(err)
    return None


def verify_records(records: Sequence[ImageRecord], max_pixels: int = DEFAULT_MAX_PIXELS,
                   workers: int = 0) -> tuple[list[ImageRecord], dict[str, str]]:
    """Header check of every file: (usable records, {key: reason} of the others).

    `workers` > 1 uses a process pool (by default from 20k files on: ~10k headers/s/core).
    """
    jobs = [(r.path, r.size, max_pixels) for r in records]
    if workers == 0:
        workers = min(8, os.cpu_count() or 1) if len(jobs) >= _PARALLEL_VERIFY_FROM else 1
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            reasons = list(pool.map(_probe_record, jobs, chunksize=1000))
    else:
        reasons = [_probe_record(j) for j in jobs]
    good = [r for r, why in zip(records, reasons) if why is None]
    bad = {r.key: why for r, why in zip(records, reasons) if why is not None}
    return good, bad


def log_bad_files(bad: dict[str, str], where: str) -> None:
    """Name each bad file (up to LOGGED_BAD_FILES) and the total in warnings."""
    for i, (key, reason) in enumerate(bad.items()):
        if i == LOGGED_BAD_FILES:
            log.warning("... and %d more unusable files in %s", len(bad) - i, where)
            break
        log.warning("skipping unusable image %s (%s)", key, reason)
    if bad:
        log.warning("%d unusable image(s) skipped in %s", len(bad), where)


def with_image(item: dict[str, Any], image: torch.Tensor, disparity: torch.Tensor | None, hflip: bool,
               emit_uint8: bool) -> dict[str, Any]:
    """`item` with "image" (3, R, R) (uint8 as given with `emit_uint8`, else float in [-1, 1]) and,
    when given, "disparity" (1, R, R); with `hflip` both are mirrored together with probability
    1/2 (the global torch RNG, as in a DataLoader worker)."""
    if hflip and bool(torch.rand(()) < 0.5):
        image = image.flip(-1)
        disparity = disparity.flip(-1) if disparity is not None else None
    item["image"] = image if emit_uint8 else image.float().div_(127.5).sub_(1.0)
    if disparity is not None:
        item["disparity"] = disparity
    return item


class ImageDataset(Dataset):
    """Map-style dataset over `ImageRecord`s (see the module docstring for items and bad files)."""

    def __init__(self, records: Sequence[ImageRecord], *, resolution: int, hflip: bool = False,
                 class_names: Sequence[str] = (), depth_cache: str | Path | None = None,
                 skip_missing_depth: bool = False, verify: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "",
                 verify_workers: int = 0) -> None:
        self.resolution = int(resolution)
        self.hflip = hflip
        self.class_names = list(class_names)
        self.max_pixels = max_pixels
        self.source = source
        self.bad_files: dict[str, str] = {}
        self.emit_uint8 = False  # images as uint8 (3,R,R); the loader converts them in batches
        self.report_skips = False  # attach skipped files to items (the loader collects them)
        records = list(records)
        if verify:
            records, bad = verify_records(records, max_pixels, verify_workers)
            self.bad_files.update(bad)
            log_bad_files(bad, source or "dataset")
        self.depth: DepthCache | None = None
        if depth_cache:
            self.depth = DepthCache(depth_cache, self.resolution)
            self.depth.check_readable()
            known_bad = self.depth.bad_digests()
            if known_bad:  # found unusable by `vq3d depth` (e.g. truncated): bad files here too
                unusable = {r.key: f"{self.depth.bad_reason(r.source_id())} (found by vq3d depth)"
                            for r in records if r.source_id().digest() in known_bad}
                self.bad_files.update(unusable)
                log_bad_files(unusable, source or "dataset")
                records = [r for r in records if r.key not in unusable]
            missing = set(self.depth.missing([r.source_id() for r in records]))
            if missing:
                missing_keys = [r.key for r in records if r.source_id() in missing]
                if not skip_missing_depth:
                    raise missing_depth_error(missing_keys, len(records), depth_cache, source)
                log.warning("training without %d image(s) that have no cached depth (e.g. %s)",
                            len(missing_keys), ", ".join(missing_keys[:3]))
                records = [r for r in records if r.source_id() not in missing]
        if not records:
            raise UserError(f"no usable images in {source or 'the dataset'} "
                            f"({len(self.bad_files)} unusable): run `vq3d data check {source}`")
        self.records = records

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_index(self) -> dict[str, int]:
        """{class name: label} in label order."""
        return {name: i for i, name in enumerate(self.class_names)}

    def write_class_index(self, path: str | Path) -> None:
        """Save {class name: label} as JSON (atomically), e.g. into the run folder."""
        atomic_write_json(path, self.class_index)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: ImageRecord) -> dict[str, Any]:
        pixels = load_crop(record.path, self.resolution, max_pixels=self.max_pixels)
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # (3,R,R) uint8
        item: dict[str, Any] = {"label": record.label, "key": record.key}
        disparity = None
        if self.depth is not None:
            try:
                disparity = torch.from_numpy(self.depth.load(record.source_id()))[None]  # (1,R,R)
            except (OSError, ValueError) as err:
                raise BadImageError("depth cache entry unreadable", str(err)) from None
        return with_image(item, image, disparity, self.hflip, self.emit_uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for step in range(MAX_CONSECUTIVE_BAD):
            record = self.records[(index + step) % len(self.records)]
            try:
                item = self._load(record)
            except BadImageError as err:
                self.bad_files[record.key] = str(err)
                skipped.append((record.key, str(err)))
                if not self.report_skips:
                    log.warning("skipping unusable image %s (%s)", record.key, err)
                continue
            if self.report_skips:
                item["_skipped"] = skipped
            return item
        raise UserError(f"{MAX_CONSECUTIVE_BAD} unusable images in a row from index {index} of "
                        f"{self.source or 'the dataset'}: run `vq3d data check` on it")
