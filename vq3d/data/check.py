"""`vq3d data check DIR`: which images of a dataset are usable, and why the others are not.

Every file is decoded (at reduced size for JPEGs, which still reads every byte and so finds
truncation) unless `decode=False` (header check only). The report lists the number of usable
images, the classes with their counts, a histogram of the shorter side, and every unusable
file with its reason.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vq3d.data.decode import DEFAULT_MAX_PIXELS, BadImageError, decode_rgb, probe_image
from vq3d.data.images import ImageRecord, list_class_folders, list_flat, pool_context, read_file_list
from vq3d.errors import UserError

# Upper edges of the shorter-side histogram buckets (pixels).
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 2048)
_PARALLEL_FROM = 2000  # files; below this a process pool costs more than it saves


@dataclass
class CheckReport:
    """Result of `check_dataset`."""

    path: str
    kind: str
    total: int = 0
    usable: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # usable images per class (labelled)
    unlabeled: int = 0  # usable images without a label
    size_histogram: dict[str, int] = field(default_factory=dict)  # shorter side bucket -> count
    smaller_than_resolution: int = 0  # usable images upscaled at the training resolution
    resolution: int | None = None
    bad: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["bad"] = [{"file": k, "reason": r} for k, r in self.bad]
        return out


def size_bucket(shorter_side: int) -> str:
    """Histogram label of a shorter side, e.g. '128-255' or '>=2048'."""
    low = 0
    for edge in SIZE_BUCKETS:
        if shorter_side < edge:
            return f"<{edge}" if low == 0 else f"{low}-{edge - 1}"
        low = edge
    return f">={SIZE_BUCKETS[-1]}"


def _check_file(job: tuple[str, bool, int]) -> tuple[int, int] | str:
    """(width, height) of a usable image, or the reason it is unusable."""
    path, decode, max_pixels = job
    try:
        return _image_size(path, decode, max_pixels)
    except BadImageError as err:
        return str(err)


def _image_size(source: str | bytes, decode: bool, max_pixels: int) -> tuple[int, int]:
    """Stored (width, height); with `decode`, the whole file is decoded too (finds truncation)."""
    size = probe_image(source, max_pixels)
    if decode:
        decode_rgb(source, max_pixels=max_pixels, draft_size=64)
    return size


def _map(jobs: list, workers: int) -> list:
    if workers == 0:
        workers = min(8, os.cpu_count() or 1) if len(jobs) >= _PARALLEL_FROM else 1
    if workers <= 1:
        return [_check_file(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        return list(pool.map(_check_file, jobs, chunksize=64))


def _records(path: str, kind: str) -> tuple[list[ImageRecord], list[str]]:
    if kind == "folder":
        return list_class_folders(path)
    if kind == "flat":
        return list_flat(path), []
    if kind == "filelist":
        return read_file_list(path)
    raise UserError(f"cannot check a dataset of kind '{kind}'")


def check_dataset(path: str, kind: str = "auto", *, resolution: int | None = None,
                  decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                  workers: int = 0) -> CheckReport:
    """Scan a dataset (any kind but synthetic is scanned file by file) and report."""
    from vq3d.data.loader import detect_kind

    kind = detect_kind(path) if kind == "auto" else kind
    report = CheckReport(path=str(path), kind=kind, resolution=resolution)
    sizes: list[tuple[int, int]] = []
    labels: list[int] = []
    class_names: list[str] = []
    if kind == "webdataset":
        _check_shards(path, report, sizes, labels, decode, max_pixels)
    elif kind == "synthetic":
        _check_synthetic(path, report, sizes, labels)
    else:
        records, class_names = _records(path, kind)
        report.total = len(records)
        results = _map([(r.path, decode, max_pixels) for r in records], workers)
        for record, result in zip(records, results):
            if isinstance(result, str):
                report.bad.append((record.key, result))
            else:
                sizes.append(result)
                labels.append(record.label)
    report.usable = len(sizes)
    counts = Counter(labels)
    report.unlabeled = counts.pop(-1, 0)
    report.classes = {(class_names[i] if i < len(class_names) else str(i)): counts.get(i, 0)
                      for i in (range(len(class_names)) if class_names else sorted(counts))}
    buckets = Counter(size_bucket(min(w, h)) for w, h in sizes)
    order = [size_bucket(0)] + [size_bucket(e) for e in SIZE_BUCKETS]
    report.size_histogram = {b: buckets[b] for b in order if buckets[b]}
    if resolution:
        report.smaller_than_resolution = sum(1 for w, h in sizes if min(w, h) < resolution)
    return report


def _check_shards(path: str, report: CheckReport, sizes: list, labels: list, decode: bool,
                  max_pixels: int) -> None:
    import tarfile

    from vq3d.data.shards import expand_shard_spec, image_member, iter_tar_samples, sample_label, shard_id

    for shard in expand_shard_spec(path):
        try:
            for key, members in iter_tar_samples(shard):
                report.total += 1
                sid = f"{shard_id(shard)}/{key}"
                ext = image_member(members)
                if ext is None:
                    report.bad.append((sid, "not an image: sample has no image member"))
                    continue
                try:
                    data = members[ext][0]
                    size = _image_size(data, decode, max_pixels)
                    label = sample_label(members)
                except BadImageError as err:
                    report.bad.append((sid, str(err)))
                    continue
                sizes.append(size)
                labels.append(label)
        except (tarfile.TarError, OSError, EOFError) as err:
            report.bad.append((shard_id(shard), f"unreadable shard: {err}"))


def _check_synthetic(path: str, report: CheckReport, sizes: list, labels: list) -> None:
    from vq3d.data.synthetic_dataset import SyntheticDataset

    dataset = SyntheticDataset(path, split="train")
    report.total = len(dataset)
    for index in range(len(dataset)):
        try:
            item = dataset[index]
        except Exception as err:  # noqa: BLE001 - report, do not crash the check
            report.bad.append((str(index), f"{type(err).__name__}: {err}"))
            continue
        height, width = item["image"].shape[-2:]
        sizes.append((int(width), int(height)))
        labels.append(int(item.get("label", -1)))


def format_report(report: CheckReport, max_bad: int | None = None) -> str:
    """Human-readable report (every unusable file unless `max_bad` limits the list)."""
    lines = [f"dataset {report.path} ({report.kind})",
             f"usable images: {report.usable} of {report.total}"]
    if report.classes:
        lines.append(f"classes: {len(report.classes)}")
        for name, count in report.classes.items():
            lines.append(f"  {name}: {count}")
    if report.unlabeled:
        lines.append(f"unlabeled images: {report.unlabeled}")
    if report.size_histogram:
        lines.append("shorter side (pixels):")
        width = max(len(b) for b in report.size_histogram)
        for bucket, count in report.size_histogram.items():
            lines.append(f"  {bucket:>{width}}: {count}")
    if report.resolution and report.smaller_than_resolution:
        lines.append(f"smaller than the training resolution {report.resolution} (upscaled): "
                     f"{report.smaller_than_resolution}")
    if report.bad:
        reasons = Counter(r.split(":")[0] for _, r in report.bad)
        summary = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        lines.append(f"unusable files: {len(report.bad)} ({summary})")
        shown = report.bad if max_bad is None else report.bad[:max_bad]
        for key, reason in shown:
            lines.append(f"  {key}: {reason}")
        if len(shown) < len(report.bad):
            lines.append(f"  ... and {len(report.bad) - len(shown)} more")
    if not report.usable:
        lines.append("no usable images")
    return "\n".join(lines)
