"""WebDataset tar shards, streamed: each rank and each loader worker reads its own part.

A shard is a tar whose members are grouped into samples by key (the member name up to the
first dot of its base name, as in WebDataset): `KEY.jpg` (or png, webp, ...), optional
`KEY.cls` (integer label as text) or `KEY.json` ({"label": int}), and optional `KEY.disp.png`
(16-bit disparity written by `vq3d depth --write-shards`). A sample's stable id is
`SHARD/KEY` (SHARD: the tar's name without `.tar`).

Splitting (`partition`): with G = world_size * num_workers readers and global reader index
g = rank * num_workers + worker, reader g takes shards g, g+G, g+2G, ... of the epoch's shard
order (a permutation shared by all ranks, seeded by seed and epoch). When there are fewer shards
than readers, every reader walks all shards and keeps samples g, g+G, ... instead (correct but
each reads everything; a warning says so). Either way the readers' data are disjoint and cover
every sample. Ranks may get a different number of samples: train by steps with `repeat=True`
(an endless stream) rather than by epochs under DDP.

Within a reader, samples pass through a shuffle buffer of `shuffle_buffer` items. Bad samples
(undecodable image, no image, missing depth) are skipped and reported as in images.py.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vq3d.data.decode import DEFAULT_MAX_PIXELS, BadImageError, load_crop
from vq3d.data.depth_cache import DepthCache, SourceId, missing_depth_error
from vq3d.data.images import UNLABELED, with_image
from vq3d.errors import UserError

log = logging.getLogger("vq3d.data")

# Image member extensions, in order of preference when a sample holds several.
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")
DISPARITY_EXT = "disp.png"


def expand_shard_spec(spec: str) -> list[str]:
    """Shard paths from a folder (its *.tar), brace ranges `a-{000..009}.tar`, a glob or one tar.

    Several specs may be joined with '::'. Raises UserError when nothing matches.
    """
    shards: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        if os.path.isdir(part):
            shards.extend(sorted(glob.glob(os.path.join(glob.escape(part), "*.tar"))))
            continue
        for name in _expand_braces(part):
            if any(c in name for c in "*?["):
                shards.extend(sorted(glob.glob(name)))
            else:
                shards.append(name)
    if not shards:
        raise UserError(f"no WebDataset shards (*.tar) found at {spec}")
    return shards


def _expand_braces(pattern: str) -> list[str]:
    """`x{01..03}y` -> x01y x02y x03y (zero padding kept); `{a,b}` alternatives too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end():], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [x for option in options for x in _expand_braces(head + option + tail)]


def shard_id(path: str) -> str:
    """A shard's name without `.tar`: the prefix of its samples' stable ids."""
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".tar") else name


def split_sample_name(member_name: str) -> tuple[str, str]:
    """WebDataset grouping: `dir/abc.disp.png` -> ('dir/abc', 'disp.png')."""
    directory, base = os.path.split(member_name)
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, tuple[bytes, tarfile.TarInfo]]]]:
    """Stream (sample key, {ext: (bytes, member info)}) from one tar, in member order."""
    current_key: str | None = None
    members: dict[str, tuple[bytes, tarfile.TarInfo]] = {}
    with tarfile.open(path, "r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_sample_name(info.name)
            if key.startswith(".") or "/." in key:
                continue
            if key != current_key and current_key is not None:
                yield current_key, members
                members = {}
            current_key = key
            handle = tar.extractfile(info)
            members[ext] = (handle.read() if handle else b"", info)
    if current_key is not None:
        yield current_key, members


def partition(num_shards: int, rank: int, world_size: int, worker: int,
              num_workers: int) -> tuple[list[int], int, int]:
    """(shard positions, sample modulus, sample offset) for one reader (module docstring)."""
    readers = world_size * num_workers
    reader = rank * num_workers + worker
    if num_shards >= readers:
        return list(range(reader, num_shards, readers)), 1, 0
    return list(range(num_shards)), readers, reader


def image_member(members: dict[str, Any]) -> str | None:
    for ext in SHARD_IMAGE_EXTS:
        if ext in members:
            return ext
    return None


def sample_label(members: dict[str, tuple[bytes, Any]]) -> int:
    if "cls" in members:
        try:
            return int(members["cls"][0].decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            raise BadImageError("corrupt", "the .cls member is not an integer") from None
    if "json" in members:
        try:
            label = json.loads(members["json"][0]).get("label", UNLABELED)
            return int(label) if label is not None else UNLABELED
        except (ValueError, TypeError, AttributeError):
            raise BadImageError("corrupt", "the .json member has no integer 'label'") from None
    return UNLABELED


def encode_disparity_png(disparity_u16: np.ndarray) -> bytes:
    """uint16 (R, R) -> 16-bit grayscale PNG bytes (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(disparity_u16.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_disparity_png(data: bytes) -> np.ndarray:
    """16-bit PNG bytes -> float32 (R, R) in [0, 1]."""
    with Image.open(io.BytesIO(data)) as img:
        values = np.asarray(img).astype(np.float32)
    return values / 65535.0


class ShardDataset(IterableDataset):
    """Streams items (as in images.py) from WebDataset shards; see the module docstring."""

    def __init__(self, shards: Sequence[str], *, resolution: int, hflip: bool = False,
                 depth_cache: str | Path | None = None, depth_in_shards: bool = False,
                 skip_missing_depth: bool = False, shuffle: bool = True,
                 shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0, world_size: int = 1,
                 repeat: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 source: str = "") -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.shards = list(shards)
        self.resolution = int(resolution)
        self.hflip = hflip
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer)) if shuffle else 1
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.repeat = repeat
        self.max_pixels = max_pixels
        self.source = source
        self.depth_in_shards = depth_in_shards
        self.skip_missing_depth = skip_missing_depth
        self.epoch = 0
        self.emit_uint8 = False
        self.report_skips = False
        self.bad_files: dict[str, str] = {}
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if missing:
            raise UserError(f"{len(missing)} shard(s) do not exist (e.g. {missing[0]})")
        self.depth: DepthCache | None = None
        if depth_cache:
            self.depth = DepthCache(depth_cache, self.resolution)
            self.depth.check_readable()
            undone = [s for s in self.shards
                      if not self.depth.shard_done(shard_id(s), SourceId.of_file(s, shard_id(s)))]
            if undone:
                if not skip_missing_depth:
                    raise missing_depth_error([shard_id(s) for s in undone], len(self.shards),
                                              depth_cache, source, what="shards")
                log.warning("training without %d shard(s) whose depth is not cached (e.g. %s)",
                            len(undone), shard_id(undone[0]))
                self.shards = [s for s in self.shards if s not in set(undone)]
            if not self.shards:
                raise UserError(f"no shard of {source} has cached depth in {depth_cache}")

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shard order and buffers for this epoch (call before iterating)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ decoding
    def _decode(self, shard: str, key: str, members: dict[str, tuple[bytes, tarfile.TarInfo]]
                ) -> dict[str, Any]:
        ext = image_member(members)
        if ext is None:
            raise BadImageError("not an image", "sample has no image member")
        data, info = members[ext]
        pixels = load_crop(data, self.resolution, max_pixels=self.max_pixels)
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # (3,R,R) uint8
        sid = f"{shard_id(shard)}/{key}"
        item: dict[str, Any] = {"label": sample_label(members), "key": sid}
        disparity = None
        if self.depth is not None:
            try:
                disparity = self.depth.load(SourceId(sid, int(info.size), int(info.mtime)))
            except (OSError, ValueError) as err:
                raise BadImageError("no cached depth", str(err)) from None
        elif self.depth_in_shards:
            if DISPARITY_EXT not in members:
                raise BadImageError("no depth in shard", f"sample has no .{DISPARITY_EXT}")
            disparity = decode_disparity_png(members[DISPARITY_EXT][0])
            if disparity.shape != (self.resolution, self.resolution):
                raise BadImageError("no depth in shard", f"disparity is {disparity.shape}, "
                                    f"not {self.resolution}x{self.resolution}")
        disp_t = torch.from_numpy(disparity)[None] if disparity is not None else None  # (1,R,R)
        return with_image(item, image, disp_t, self.hflip, self.emit_uint8)

    # ------------------------------------------------------------------ streaming
    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _epoch_items(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)  # same order on every rank
        positions, modulus, offset = partition(len(order), self.rank, self.world_size,
                                               worker, num_workers)
        if modulus > 1 and epoch == self.epoch and worker == 0 and self.rank == 0:
            log.warning("%d shard(s) for %d readers: every reader streams all shards; write more "
                        "shards than world_size * num_workers", len(order), modulus)
        count = 0
        for position in positions:
            shard = self.shards[order[position]]
            try:
                samples = iter_tar_samples(shard)
                for key, members in samples:
                    mine = count % modulus == offset
                    count += 1
                    if not mine:
                        continue
                    try:
                        yield self._decode(shard, key, members)
                    except BadImageError as err:
                        self._note_bad(f"{shard_id(shard)}/{key}", str(err))
            except (tarfile.TarError, OSError, EOFError) as err:
                # A damaged tar: keep what was streamed, report the rest of the shard once.
                self._note_bad(shard_id(shard), f"unreadable shard: {err}")

    def _note_bad(self, key: str, reason: str) -> None:
        self.bad_files[key] = reason
        self._pending.append((key, reason))
        if not self.report_skips:
            log.warning("skipping unusable sample %s (%s)", key, reason)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._reader()
        self._pending: list[tuple[str, str]] = []
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        buffer: list[dict[str, Any]] = []
        epoch = self.epoch
        while True:
            for item in self._epoch_items(epoch, worker, num_workers):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                    continue
                slot = rng.randrange(len(buffer))
                buffer[slot], item = item, buffer[slot]
                yield self._with_skips(item)
            if not self.repeat:
                break
            epoch += 1
        rng.shuffle(buffer)
        for item in buffer:
            yield self._with_skips(item)
        if self.report_skips and self._pending:  # no item left to carry them: log here
            for key, reason in self._pending:
                log.warning("skipping unusable sample %s (%s)", key, reason)

    def _with_skips(self, item: dict[str, Any]) -> dict[str, Any]:
        if self.report_skips:
            item["_skipped"] = self._pending
            self._pending = []
        return item
