"""Stage-1 token datasets: `vq3d tokens` encodes images into ids for Stage 2.

    TOK/ids.npy       (N, T) int32 token ids in raster order, memory-mapped
    TOK/labels.npy    (N,) int64 class ids (-1 for unlabelled data)
    TOK/tokens.json   codebook size, sequence length, classes, the Stage-1 run, and `done`

Encoding is batched and resumable: ids are written into a preallocated memory map and
`done` (the number of rows written and flushed) is updated atomically after each batch.

With `hflip=True` every image is also encoded mirrored left-right (a mirrored photo is the
canonical view of the mirrored scene, so it is a valid training sequence for Stage 2): rows
[0, n) hold the images and rows [n, 2n) their mirrors in the same order, and tokens.json has
`"mirrored": true`. `mirror_pairs` keeps an image and its mirror on the same side of a split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json


def codebook_fingerprint(model) -> str:
    """A hash of the Stage-1 codebook: tokens mean something only together with these codes."""
    import hashlib

    codes = model.quantizer.codebook.weight.detach().float().cpu().contiguous().numpy()
    return hashlib.sha256(codes.tobytes()).hexdigest()[:16]


def stage1_codebook_hash(run_dir: str | Path) -> str:
    """`codebook_fingerprint` of a Stage-1 run's latest checkpoint, read without building the model."""
    import hashlib

    from safetensors import safe_open

    from vq3d.train.checkpoint import latest_checkpoint

    from vq3d.train.runs import is_run_folder

    if is_run_folder(run_dir):
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise UserError(f"{run_dir} has no Stage-1 checkpoint")
        name = "ema" if (ckpt / "ema.safetensors").is_file() else "model"  # as `load_stage1` chooses
        weights = ckpt / f"{name}.safetensors"
    else:  # an exported model (vq3d export-run) or a hub id in the local cache
        from vq3d.models.hub import WEIGHTS, hub_folder

        weights = hub_folder(str(run_dir)) / WEIGHTS
    with safe_open(str(weights), framework="pt") as f:
        codes = f.get_tensor("quantizer.codebook.weight").float().contiguous().numpy()
    return hashlib.sha256(codes.tobytes()).hexdigest()[:16]


def check_same_codebook(stage1_run: str | Path, expected_hash: str, what: str) -> None:
    """UserError unless `stage1_run`'s codebook is the one `what` was made with."""
    if stage1_codebook_hash(stage1_run) != expected_hash:
        raise UserError(f"{what} was made with another Stage-1 codebook than {stage1_run}'s: pass the "
                        "Stage-1 run whose tokens it was trained on")


def check_stage2_matches(stage1_run: str | Path, model, meta: dict[str, Any], stage2_run: str | Path) -> None:
    """UserError unless the Stage-2 run (its metadata `meta`) was trained on the tokens of
    `stage1_run`, whose loaded model is `model`: the same codebook and ids per image."""
    check_same_codebook(stage1_run, meta["codebook_hash"], f"the Stage-2 run {stage2_run}")
    if model.tokens_per_image != meta["seq_len"]:
        raise UserError(f"Stage 2 models {meta['seq_len']} ids an image but Stage 1 makes "
                        f"{model.tokens_per_image}")


def _stage1_identity(run_dir: Path, model) -> dict[str, Any]:
    from vq3d.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir) if Path(run_dir).is_dir() else None
    where = str(Path(run_dir).resolve()) if Path(run_dir).exists() else str(run_dir)  # a hub id stays an id
    return {"stage1_run": where, "stage1_checkpoint": ckpt.name if ckpt else None,
            "codebook_hash": codebook_fingerprint(model)}


def mirror_pairs(rows: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Rows of a split made over the source images, plus their mirrors when the folder has them.

    rows: (M,) indices in [0, n) of the n source images; returns (M,) or (2M,) sorted row indices.
    """
    if not info.get("mirrored"):
        return rows
    return np.sort(np.concatenate([rows, rows + info["count"] // 2]))


def read_token_info(tok_dir: str | Path) -> dict[str, Any]:
    """tokens.json of a finished token folder (UserError when missing or incomplete)."""
    path = Path(tok_dir) / "tokens.json"
    if not path.is_file():
        raise UserError(f"{tok_dir} holds no tokens (no tokens.json): run `vq3d tokens` first")
    info = json.loads(path.read_text())
    if info["done"] < info["count"]:
        raise UserError(f"{tok_dir} is incomplete ({info['done']}/{info['count']} images): "
                        "rerun the same `vq3d tokens` command to finish it")
    return info


def load_tokens(tok_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(ids (N, T) int32 memmap, labels (N,) int64, info) of a finished token folder."""
    info = read_token_info(tok_dir)
    ids = np.load(Path(tok_dir) / "ids.npy", mmap_mode="r")
    labels = np.load(Path(tok_dir) / "labels.npy")
    return ids, labels, info


@torch.no_grad()
def extract_tokens(stage1_run: str | Path, data_path: str, out_dir: str | Path, split: str = "train",
                   batch_size: int = 64, device: str = "cpu", num_workers: int = 0,
                   hflip: bool = False) -> dict[str, Any]:
    """Encode every image of `data_path` (its `split`) with the run's Stage-1 encoder.

    `hflip` also encodes each image mirrored (rows n..2n-1; see the module docstring).
    """
    from dataclasses import replace

    from vq3d.data.loader import build_dataset
    from vq3d.train.runs import load_stage1

    stage1_run, out_dir = Path(stage1_run), Path(out_dir)
    model, cfg = load_stage1(stage1_run, device)
    # the images only: a synthetic scene's novel views were 4 of every 5 files read
    dataset: Dataset = build_dataset(replace(cfg.data, path=data_path, hflip=False), split, train=False,
                                     novel_views=False)
    if not hasattr(dataset, "__len__"):
        raise UserError("token extraction needs a map-style dataset (an image folder, file list or "
                        "synthetic dataset), not streaming shards")
    n, seq_len = len(dataset), model.tokens_per_image
    if n == 0:
        raise UserError(f"no usable images in {data_path}")
    rows = 2 * n if hflip else n
    identity = _stage1_identity(stage1_run, model)
    info = {"count": rows, "mirrored": hflip, "seq_len": seq_len, "grid": model.grid,
            "codebook_size": cfg.model.codebook_size, "class_names": list(getattr(dataset, "class_names", []) or []), "data": str(data_path),
            "split": split, **identity, "done": 0}
    info["num_classes"] = len(info["class_names"])
    meta_path = out_dir / "tokens.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        same = {k: old.get(k, False if k == "mirrored" else None)
                for k in ("count", "mirrored", "seq_len", "codebook_size", "codebook_hash", "data", "split")}
        if same != {k: info[k] for k in same}:
            raise UserError(f"{out_dir} holds tokens of another run or dataset ({old.get('stage1_run')}, "
                            f"{old.get('data')}): choose another --out")
        info["done"] = old["done"]
        ids = np.load(out_dir / "ids.npy", mmap_mode="r+")
        labels = np.load(out_dir / "labels.npy", mmap_mode="r+")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        if any(out_dir.iterdir()):
            raise UserError(f"{out_dir} is not empty: choose an empty or new --out for tokens")
        ids = np.lib.format.open_memmap(out_dir / "ids.npy", mode="w+", dtype=np.int32, shape=(rows, seq_len))
        labels = np.lib.format.open_memmap(out_dir / "labels.npy", mode="w+", dtype=np.int64, shape=(rows,))
        atomic_write_json(meta_path, info)
    start = info["done"] // 2 if hflip else info["done"]  # `done` counts rows; both halves advance together
    loader = DataLoader(Subset(dataset, range(start, n)), batch_size=batch_size, num_workers=num_workers)
    row = start
    for batch in tqdm(loader, desc="tokens", initial=start // batch_size, total=-(-n // batch_size)):
        images = batch["image"]
        if images.dtype == torch.uint8:
            images = images.float() / 127.5 - 1.0
        b = images.shape[0]
        for first, view in [(row, images)] + ([(n + row, images.flip(-1))] if hflip else []):
            ids[first: first + b] = model.encode(view.to(device)).cpu().numpy().astype(np.int32)
            labels[first: first + b] = batch["label"].numpy()
        row += b
        ids.flush()
        labels.flush()
        info["done"] = 2 * row if hflip else row
        atomic_write_json(meta_path, info)
    return info
