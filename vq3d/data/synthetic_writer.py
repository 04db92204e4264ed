"""Write the synthetic dataset to disk: resumable, deterministic, every file atomic.

Layout of a dataset folder:
  dataset.json        the card: format, settings (resolution, views, seed, cameras, classes),
                      counts; written first, so a folder with it is recognisably ours
  manifest.jsonl      one JSON record per complete scene, in index order (see `scene_record`)
  scenes/0000/000012_canonical.png, 000012_novel0.png ... (uint8 RGB)
  scenes/0000/000012_depth.npy   float32 (1 + K, H, W), canonical view first: ray distance t

Every file is written atomically (`vq3d.utils.io`). A scene's files are written before the
manifest that lists it, and the manifest is rewritten (atomically) every so often and when the
run stops for any reason, so it never lists a scene whose files are incomplete. A rerun with
the same settings continues after the last listed scene; scenes depend only on (seed, index),
so the files are identical to those of an uninterrupted run.

Speed: `workers` processes (one per core by default) each ray-cast and write chunks of
consecutive scenes, listed in index order by the calling process; in one process a writer thread
writes behind the ray casting. The demo's 4,450 scenes at 32 px took 57 s in one process of a
2-core machine, where creating a file takes 0.2-1 ms (docs/results.md, "The demo's clock").
The files do not depend on the number of workers.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import struct
import sys
import time
import zlib
from collections import Counter, deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from vq3d.data.raycast import SHAPES
from vq3d.data.synthetic import CameraSettings, Scene, render_scene, sample_scene
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_bytes

FORMAT = "vq3d-synthetic"
FORMAT_VERSION = 1
TEST_EVERY = 10  # scene i is held out (split "test") when i % TEST_EVERY == TEST_EVERY - 1
CARD_NAME, MANIFEST_NAME = "dataset.json", "manifest.jsonl"
# the card's keys that must match for a rerun to continue a dataset
SETTING_KEYS = ("format", "version", "resolution", "views", "seed", "camera_distance", "fov_deg",
                "sampling_radius", "supersample", "classes", "test_every")
SETTING_DEFAULTS = {"supersample": 1}  # cards written before the key existed
_WRITE_QUEUE = 4  # scenes encoded ahead of the writer thread
MAX_WORKERS = 8  # ray-casting processes by default: one per usable core, at most this many
# fewer scenes than this to make are ray-cast in the calling process: a pool's start (~50 ms
# forked) would cost more than a second process saves
PARALLEL_MIN_SCENES = 16
_CHUNK_SCENES = 8  # consecutive scenes a worker ray-casts per task (fewer round trips)
RECORD_KEYS = ("index", "split", "label", "class_name", "image", "novel_images", "depth", "fov_deg",
               "c2w", "novel_c2w")


def split_of(index: int) -> str:
    """The split of scene `index`: every TEST_EVERY-th scene is held out ("test"), 10%."""
    return "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"


def split_counts(n_scenes: int) -> tuple[int, int]:
    """(training, held-out) scene counts of a dataset of scenes 0..n_scenes-1 (`split_of`)."""
    n_test = n_scenes // TEST_EVERY
    return n_scenes - n_test, n_test


def dataset_settings(resolution: int, views: int, seed: int, camera: CameraSettings) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "resolution": resolution, "views": views,
        "seed": seed, "camera_distance": camera.camera_distance, "fov_deg": camera.fov_deg,
        "sampling_radius": camera.sampling_radius, "supersample": camera.supersample,
        "classes": list(SHAPES), "test_every": TEST_EVERY,
    }


def validate_request(n: int, resolution: int, views: int, seed: int, camera: CameraSettings) -> None:
    """Raise `UserError` (one line: what is wrong, how to fix it) for impossible settings."""
    if n <= 0:
        raise UserError(f"--n {n}: the number of scenes must be positive, e.g. --n 64")
    if views < 0:
        raise UserError(f"--views {views}: the number of novel views must be >= 0, e.g. --views 4")
    if resolution < 8 or resolution % 2:
        raise UserError(f"--res {resolution}: the resolution must be an even number >= 8, e.g. --res 64")
    if seed < 0:
        raise UserError(f"--seed {seed}: the seed must be >= 0")
    camera.validate()


def scene_paths(index: int, views: int) -> dict[str, Any]:
    """Paths of scene `index`'s files, relative to the dataset root."""
    stem = f"scenes/{index // 1000:04d}/{index:06d}"
    return {"image": f"{stem}_canonical.png", "novel_images": [f"{stem}_novel{k}.png" for k in range(views)],
            "depth": f"{stem}_depth.npy"}


def scene_record(scene: Scene, views: int) -> dict[str, Any]:
    """The manifest record of a scene: its files, class, cameras (c2w 4x4 lists) and geometry."""
    c2w = scene.c2w.tolist()
    return {
        "index": scene.index, "split": split_of(scene.index), "label": scene.label,
        "class_name": scene.shape, **scene_paths(scene.index, views), "fov_deg": scene.fov_deg,
        "c2w": c2w[0], "novel_c2w": c2w[1:],
        "object": {"shape": scene.shape, "params": scene.params.tolist(), "center": scene.center.tolist(),
                   "rotation": scene.rotation.tolist()},
        "room": {"lo": scene.room_lo.tolist(), "hi": scene.room_hi.tolist()},
    }


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes (8-bit RGB) of an image (H, W, 3) uint8 (PNG spec, RFC 2083).

    Every row uses the "Up" filter (difference to the row above, mod 256), then zlib. Written
    here because PIL's encoder costs several times more per small image than the compression.
    """
    height, width, _ = image.shape
    rows = image.reshape(height, 3 * width)
    filtered = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) + chunk(b"IEND", b""))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def render_for_disk(scene: Scene, resolution: int,
                    supersample: int = 1) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Render a scene: its manifest record, images (V, H, W, 3) uint8 and depth (V, H, W) float32."""
    render = render_scene(scene, resolution, supersample)
    return scene_record(scene, scene.c2w.shape[0] - 1), render.to_uint8(), render.depth.astype(np.float32)


def default_workers() -> int:
    """Ray-casting processes when none are asked for: the cores this process may run on, at most
    MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def _one_thread() -> None:
    # a worker ray-casts with one torch thread: the workers share the cores (and a forked child
    # must not use the parent's OpenMP pool)
    torch.set_num_threads(1)


def _make_scenes(root: Path, seed: int, views: int, camera: CameraSettings, resolution: int,
                 indices: range) -> list[dict[str, Any]]:
    """Ray-cast scenes `indices` and write their files (a worker's task); returns their records."""
    records = []
    for index in indices:
        record, images, depth = render_for_disk(sample_scene(seed, index, views, camera), resolution,
                                                camera.supersample)
        write_scene_files(root, record, images, depth)
        records.append(record)
    return records


def _chunks_made(pool: Executor, root: Path, seed: int, start: int, n: int, views: int,
                 camera: CameraSettings, resolution: int, ahead: int) -> Iterator[list[dict[str, Any]]]:
    """The records of scenes start..n-1, made (files written) by the pool's workers in chunks of
    _CHUNK_SCENES consecutive scenes, yielded in index order; at most `ahead` chunks are queued
    beyond the one awaited."""
    job = functools.partial(_make_scenes, root, seed, views, camera, resolution)
    queued: deque[Future] = deque()
    next_index = start
    while queued or next_index < n:
        while next_index < n and len(queued) < ahead:
            stop = min(n, next_index + _CHUNK_SCENES)
            queued.append(pool.submit(job, range(next_index, stop)))
            next_index = stop
        yield queued.popleft().result()


def _scene_pool(workers: int, scenes: int) -> ProcessPoolExecutor | None:
    """A pool of `workers` processes that make scenes, or None (make them in this process) for one
    worker or fewer than PARALLEL_MIN_SCENES scenes. Forked on Linux (a fast start; each child sets
    one thread before any torch work, as DataLoader workers do), spawned elsewhere."""
    if workers <= 1 or scenes < PARALLEL_MIN_SCENES:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread)
    pool.submit(int).result()  # the first task starts every forked worker now
    return pool


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically (with the usual permissions, see `vq3d.utils.io`)."""
    atomic_write_bytes(path, data)


def write_scene_files(root: Path, record: dict[str, Any], images: np.ndarray, depth: np.ndarray) -> None:
    """Encode and write a scene's PNGs and depth under `root`, each file atomically."""
    for rel, image in zip([record["image"], *record["novel_images"]], images, strict=True):
        write_bytes(root / rel, encode_png(image))
    write_bytes(root / record["depth"], _npy_bytes(depth))


# ----------------------------------------------------------------------------- reading back


def read_card(root: Path) -> dict[str, Any]:
    """The dataset card of `root`, checked to be a vq3d synthetic dataset."""
    path = root / CARD_NAME
    if not path.is_file():
        raise UserError(f"{root} holds no {CARD_NAME}, so it is not a vq3d synthetic dataset; "
                        "create one with `vq3d synth --out DIR ...`")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); "
                        "restore it or regenerate the dataset in a new folder") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise UserError(f"{path} is not a vq3d synthetic dataset card (format != {FORMAT!r}); "
                        "use another --out folder")
    return card


def read_manifest(root: Path, views: int, check_files: bool = True) -> list[dict[str, Any]]:
    """The records of `root/manifest.jsonl` (none if it does not exist yet), validated.

    Each line must be a JSON object with the record keys, line i describing scene i with
    `views` novel views; with `check_files` every listed file must exist.
    """
    path = root / MANIFEST_NAME
    if not path.exists():
        return []
    fix = "restore it, or delete the folder and regenerate"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); {fix}") from None
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {i + 1} is not valid JSON; {fix}") from None
        if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
            raise UserError(f"{path} line {i + 1} is not a scene record "
                            f"(needs {', '.join(RECORD_KEYS)}); {fix}")
        if record["index"] != i:
            raise UserError(f"{path} line {i + 1} describes scene {record['index']}, "
                            f"expected scene {i}; {fix}")
        if len(record["novel_images"]) != views or len(record["novel_c2w"]) != views:
            raise UserError(f"{path} line {i + 1} has {len(record['novel_images'])} novel views, "
                            f"the card says {views}; {fix}")
        if check_files:
            for rel in [record["image"], *record["novel_images"], record["depth"]]:
                if not (root / rel).is_file():
                    raise UserError(f"{path} lists {rel} (scene {i}) but the file is missing; {fix}")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- generation


def _card(settings: dict[str, Any], records: list[dict[str, Any]], requested: int) -> dict[str, Any]:
    counts = Counter(r["class_name"] for r in records)
    return {
        **settings,
        "n_scenes": len(records), "n_requested": requested, "complete": len(records) >= requested,
        "n_train": sum(r["split"] == "train" for r in records),
        "n_test": sum(r["split"] == "test" for r in records),
        "class_counts": {name: counts.get(name, 0) for name in SHAPES},
        "image_format": "PNG, uint8 RGB; canonical view then K novel views",
        "depth_format": "npy float32 (1 + K, H, W), canonical view first; "
                        "ray distance t from the camera centre",
        "cameras": "c2w 4x4 camera-to-world, OpenGL convention (vq3d.render.cameras)",
    }


def _write_card(root: Path, card: dict[str, Any]) -> None:
    write_bytes(root / CARD_NAME, (json.dumps(card, indent=2) + "\n").encode())


def _check_resume(root: Path, settings: dict[str, Any]) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file; pass a folder")
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / CARD_NAME).exists():
        raise UserError(f"--out {root} is not empty and holds no vq3d synthetic dataset "
                        f"({CARD_NAME} missing); pass an empty or new folder")
    card = read_card(root)
    differ = [key for key in SETTING_KEYS if card.get(key, SETTING_DEFAULTS.get(key)) != settings[key]]
    if differ:
        found = ", ".join(f"{key}={card.get(key, SETTING_DEFAULTS.get(key))!r}" for key in differ)
        asked = ", ".join(f"{key}={settings[key]!r}" for key in differ)
        raise UserError(f"{root} holds a dataset made with {found} but this run asks for {asked}; "
                        "rerun with the same settings to continue it, or pass a new --out folder")


def generate_dataset(
    out: str | Path,
    n: int,
    resolution: int,
    views: int = 4,
    seed: int = 0,
    camera: CameraSettings | None = None,
    progress: bool = True,
    flush_seconds: float = 10.0,
    workers: int = 0,
) -> dict[str, Any]:
    """Generate (or continue) the dataset of scenes 0..n-1 in `out`; returns the card.

    workers: processes that ray-cast the scenes (0: `default_workers()`, one per core; 1: this
    process alone). The files are the same for any number.

    Scenes are written in index order, each scene's files before the manifest that lists it.
    The manifest is rewritten every `flush_seconds` (or 20x the time a rewrite takes) or every
    max(64, a tenth of the scenes so far) scenes, and when the run stops,
    also on an exception or Ctrl-C; a scene whose files were written after the last listed one
    is regenerated, identically, by the next run.
    """
    camera = camera or CameraSettings()
    validate_request(n, resolution, views, seed, camera)
    if workers < 0:
        raise UserError(f"--workers {workers}: pass 0 (one per core) or a positive number of processes")
    workers = workers or default_workers()
    root = Path(out)
    settings = dataset_settings(resolution, views, seed, camera)
    _check_resume(root, settings)
    records = read_manifest(root, views) if (root / CARD_NAME).exists() else []
    if len(records) > n:
        raise UserError(f"{root} already holds {len(records)} scenes, more than --n {n}; "
                        f"pass --n {len(records)} or more, or a new --out folder")
    if not (root / CARD_NAME).exists():
        _write_card(root, _card(settings, records, n))

    flushed, last_flush, flush_cost = len(records), time.monotonic(), 0.0

    def flush() -> None:
        nonlocal flushed, last_flush, flush_cost
        start = time.monotonic()
        write_bytes(root / MANIFEST_NAME, "".join(json.dumps(r) + "\n" for r in records).encode())
        _write_card(root, _card(settings, records, n))
        flushed, last_flush, flush_cost = len(records), time.monotonic(), time.monotonic() - start

    def flush_due() -> bool:  # rewriting the whole manifest stays a small share of the run
        waited = time.monotonic() - last_flush
        many = len(records) - flushed >= max(64, len(records) // 10)
        return many or waited > max(flush_seconds, 20 * flush_cost)

    bar = tqdm(total=n, initial=len(records), desc="synth", unit="scene", disable=not progress)
    pool = _scene_pool(workers, n - len(records))
    if pool is not None:  # the workers ray-cast and write; chunks are listed in index order
        chunks = _chunks_made(pool, root, seed, len(records), n, views, camera, resolution, ahead=2 * workers)
        try:
            for chunk_records in chunks:
                records.extend(chunk_records)
                bar.update(len(chunk_records))
                if flush_due():
                    flush()
        finally:
            chunks.close()
            pool.shutdown(wait=True, cancel_futures=True)  # stopped early: the queued chunks are not made
            bar.close()
            flush()
        return _card(settings, records, n)

    # In one process the main thread renders; one writer thread encodes and writes the files
    # (zlib and the file system calls release the GIL), at most `_WRITE_QUEUE` scenes behind.
    # Records join the manifest in index order once their files are written.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vq3d-synth-writer")
    pending: deque[tuple[dict[str, Any], Future]] = deque()
    write_failed = False

    def complete_oldest() -> None:
        nonlocal write_failed
        record, written = pending.popleft()
        try:
            written.result()
        except BaseException:
            write_failed = True  # later scenes must not be listed after a gap
            raise
        records.append(record)
        bar.update(1)

    try:
        for index in range(len(records), n):
            record, images, depth = render_for_disk(sample_scene(seed, index, views, camera), resolution,
                                                      camera.supersample)
            pending.append((record, writer.submit(write_scene_files, root, record, images, depth)))
            while pending and (len(pending) > _WRITE_QUEUE or pending[0][1].done()):
                complete_oldest()
            if flush_due():
                flush()
        while pending:
            complete_oldest()
    finally:
        while pending and not write_failed:  # stopped early: keep the scenes already written
            try:
                complete_oldest()
            except BaseException:
                break
        writer.shutdown(wait=True, cancel_futures=True)
        bar.close()
        flush()
    return _card(settings, records, n)
