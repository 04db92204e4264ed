"""Pseudo-GT disparity cache: one small file per image, named by what the image is.

Layout of a cache folder:
    cache.json                      format, model, normalization (written once, atomically)
    r{R}/ab/abcdef....npy           uint16 (R, R) disparity * 65535 of one image at resolution R
    r{R}/ab/abcdef....bad           the reason this image could not be used (not retried)
    r{R}/shards/NAME.json           "this WebDataset shard is complete" (shard inputs only)

An entry's file name is a hash of the image's stable key (its path relative to the dataset
root, or `shard/sample` inside a tar) together with its size in bytes and modification time in
whole seconds. A changed or renamed image therefore gets a new name and is recomputed, and the
old entry is never read again (it is stale; `prune_stale` deletes such entries). Each entry is
written atomically (temp file + rename), so a killed run leaves only complete entries and a
rerun resumes where it stopped. One file per image scales to ImageNet (1.28M entries in 256
sub-folders, ~128 KiB each at 256x256) without ever rewriting a large file.

Disparity is relative inverse depth, normalized per image to [0, 1] (docs/design.md), cropped with
the training crop (`decode.center_square_box`) at the training resolution, not flipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_bytes, atomic_write_json

DEFAULT_DEPTH_MODEL = "Intel/dpt-large"  # the paper's pseudo-GT depth estimator (DPT)
CACHE_FORMAT = "vq3d-depth-cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class SourceId:
    """What an image is: stable key plus size (bytes) and mtime (whole seconds)."""

    key: str
    size: int
    mtime: int

    @classmethod
    def of_file(cls, path: str | Path, key: str) -> "SourceId":
        st = os.stat(path)
        return cls(key, int(st.st_size), int(st.st_mtime))

    def digest(self) -> str:
        text = f"{self.key}\0{self.size}\0{self.mtime}"
        return hashlib.sha1(text.encode("utf-8")).hexdigest()


def encode_disparity(disparity: np.ndarray) -> np.ndarray:
    """float (R, R) in [0, 1] -> uint16 (R, R)."""
    return np.rint(np.clip(disparity, 0.0, 1.0) * 65535.0).astype(np.uint16)


def decode_disparity(stored: np.ndarray) -> np.ndarray:
    """uint16 (R, R) -> float32 (R, R) in [0, 1]."""
    return stored.astype(np.float32) / 65535.0


class DepthCache:
    """Read and write cached disparity maps of one resolution under `root`."""

    def __init__(self, root: str | Path, resolution: int) -> None:
        self.root = Path(root)
        self.resolution = int(resolution)
        self.entries_dir = self.root / f"r{self.resolution}"

    # ---------------------------------------------------------------- metadata
    def read_meta(self) -> dict | None:
        meta_path = self.root / "cache.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"depth cache {self.root}: cache.json is unreadable ({err}); "
                            "delete it or use a new --out folder") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise UserError(f"{self.root} is not a vq3d depth cache (cache.json has no "
                            f"format '{CACHE_FORMAT}'); choose another folder")
        return meta

    def claim(self, model: str, output: str) -> None:
        """Create the cache (or check it was made by the same model); raises UserError."""
        meta = self.read_meta()
        if meta is None:
            if self.root.exists() and any(p.name != "cache.json" for p in self.root.iterdir()):
                raise UserError(f"{self.root} holds other files and no cache.json: give an empty "
                                "or new folder as --out")
            atomic_write_json(self.root / "cache.json", {
                "format": CACHE_FORMAT, "version": CACHE_VERSION, "model": model,
                "model_output": output, "encoding": "uint16 npy, value/65535",
                "normalization": "per-image min-max of disparity to [0, 1]",
                "crop": "shorter-side resize + centre crop (vq3d.data.decode.center_square_box)",
            })
            return
        if meta.get("model") != model:
            raise UserError(f"depth cache {self.root} was made with model '{meta.get('model')}', "
                            f"not '{model}': use a new --out folder for a different model")

    def check_readable(self) -> None:
        """Raise UserError when `root` is not a cache of this resolution (for training)."""
        if not self.root.is_dir():
            raise UserError(f"depth cache {self.root} does not exist: run `vq3d depth --data DATA "
                            f"--out {self.root} --res {self.resolution}` first")
        self.read_meta()

    # ---------------------------------------------------------------- entries
    def entry_path(self, source: SourceId) -> Path:
        digest = source.digest()
        return self.entries_dir / digest[:2] / f"{digest}.npy"

    def _scan(self, suffix: str) -> set[str]:
        found: set[str] = set()
        if not self.entries_dir.is_dir():
            return found
        for sub in os.scandir(self.entries_dir):
            if sub.is_dir() and len(sub.name) == 2:
                found.update(name[: -len(suffix)] for name in os.listdir(sub.path)
                             if name.endswith(suffix))
        return found

    def existing_digests(self) -> set[str]:
        """Digests of every stored entry (one listdir per sub-folder; fast for millions)."""
        return self._scan(".npy")

    def bad_digests(self) -> set[str]:
        """Digests of images the depth job found unusable (a `.bad` file holds the reason)."""
        return self._scan(".bad")

    def missing(self, sources: Iterable[SourceId], include_bad: bool = False) -> list[SourceId]:
        """The sources with no entry, in input order (known-bad images excluded unless asked)."""
        done = self.existing_digests()
        if not include_bad:
            done |= self.bad_digests()
        return [s for s in sources if s.digest() not in done]

    def bad_reason(self, source: SourceId) -> str | None:
        """Why the depth job could not use this image, or None."""
        try:
            return self.entry_path(source).with_suffix(".bad").read_text().strip() or "unusable"
        except OSError:
            return None

    def save_bad(self, source: SourceId, reason: str) -> None:
        """Remember that this image version is unusable (a rerun does not try it again)."""
        atomic_write_bytes(self.entry_path(source).with_suffix(".bad"), reason.encode("utf-8"))

    def save(self, source: SourceId, disparity: np.ndarray) -> None:
        """Store disparity (R, R) float in [0, 1] atomically."""
        if disparity.shape != (self.resolution, self.resolution):
            raise ValueError(f"disparity shape {disparity.shape} != cache resolution {self.resolution}")
        buffer = io.BytesIO()
        np.save(buffer, encode_disparity(disparity), allow_pickle=False)
        atomic_write_bytes(self.entry_path(source), buffer.getvalue())

    def load(self, source: SourceId) -> np.ndarray:
        """float32 (R, R) in [0, 1]; FileNotFoundError when absent, ValueError when corrupt."""
        stored = np.load(self.entry_path(source), allow_pickle=False)
        if stored.dtype != np.uint16 or stored.shape != (self.resolution, self.resolution):
            raise ValueError(f"depth cache entry {self.entry_path(source)} has dtype {stored.dtype} "
                             f"and shape {stored.shape}")
        return decode_disparity(stored)

    def prune_stale(self, sources: Iterable[SourceId]) -> int:
        """Delete entries that belong to none of `sources` (changed/removed images); returns count."""
        keep = {s.digest() for s in sources}
        removed = 0
        for suffix, digests in ((".npy", self.existing_digests()), (".bad", self.bad_digests())):
            for digest in digests - keep:
                (self.entries_dir / digest[:2] / f"{digest}{suffix}").unlink(missing_ok=True)
                removed += 1
        return removed

    # ---------------------------------------------------------------- shard markers
    def shard_marker(self, shard_id: str) -> Path:
        return self.entries_dir / "shards" / f"{shard_id.replace('/', '__')}.json"

    def shard_done(self, shard_id: str, source: SourceId) -> bool:
        marker = self.shard_marker(shard_id)
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return info.get("size") == source.size and info.get("mtime") == source.mtime

    def mark_shard_done(self, shard_id: str, source: SourceId, samples: int, bad: int) -> None:
        atomic_write_json(self.shard_marker(shard_id), {
            "shard": shard_id, "size": source.size, "mtime": source.mtime,
            "samples": samples, "bad": bad})


def missing_depth_error(missing_keys: list[str], total: int, cache_root: str | Path,
                        data_path: str | Path, what: str = "images") -> UserError:
    """The fail-fast message for a dataset whose cache lacks entries (or shards)."""
    examples = ", ".join(missing_keys[:3])
    return UserError(
        f"{len(missing_keys)} of {total} {what} have no cached depth in {cache_root} "
        f"(e.g. {examples}): run `vq3d depth --data {data_path} --out {cache_root}` to fill the "
        "cache, or set data.skip_missing_depth=true to train without them")
