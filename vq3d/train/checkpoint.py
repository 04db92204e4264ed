"""Checkpoints as safetensors + JSON: atomic, resumable, and never unpickled.

Layout of `run_dir/checkpoints/step_00001000/`:
    {name}.safetensors        weights of each module (no `module.` / `_orig_mod.` prefixes)
    optim_{name}.safetensors  tensors of each optimizer's state (exp_avg, step, ...)
    optim_{name}.json         the rest of it (param_groups, numbers), tensors named by key
    rng.safetensors, rng.json torch CPU/CUDA, numpy and python `random` generator states
    state.json                {"step", "state": user state, ...}; written last
The folder is written under a temporary name and renamed into place, then the `latest` pointer
file is replaced atomically, so a run killed at any moment leaves the previous checkpoint whole.

RNG states are those of the saving process (rank 0); multi-rank runs should derive per-rank
randomness from (seed, rank, step) rather than rely on restored global generators.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vq3d.errors import UserError
from vq3d.train.distributed import unwrap_model
from vq3d.utils.io import atomic_write, atomic_write_text

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, or does not match the model it is loaded into."""


# ----------------------------------------------------------------------------- tensors <-> json


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of `obj`; tensors and arrays move to `tensors` under a path-like key."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {"__intdict__": {str(k): _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}}
    raise TypeError(f"cannot store {type(obj).__name__} at '{key}' in a checkpoint (no pickling)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__intdict__" in obj:
        return {int(k): _decode(v, tensors) for k, v in obj["__intdict__"].items()}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _save_tree(path_stem: Path, obj: Any) -> None:
    """Write `obj` as `{stem}.safetensors` (its tensors) + `{stem}.json` (everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, "t", tensors)
    save_file(tensors, str(path_stem.with_suffix(".safetensors")))
    path_stem.with_suffix(".json").write_text(json.dumps(encoded))


def _load_tree(path_stem: Path) -> Any:
    tensors = load_file(str(path_stem.with_suffix(".safetensors")), device="cpu")
    return _decode(json.loads(path_stem.with_suffix(".json").read_text()), tensors)


# ----------------------------------------------------------------------------- module weights


def _clean_key(key: str) -> str:
    return key.replace("_orig_mod.", "")


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict of the unwrapped module with clean keys; tied tensors stored once each."""
    state = unwrap_model(module).state_dict()
    out: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[int, torch.device]] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state entry '{key}' is a {type(value).__name__}, not a tensor")
        storage = (value.untyped_storage().data_ptr(), value.device)
        t = value.detach()
        # safetensors refuses tensors sharing memory (tied weights): give each its own copy
        t = t.clone() if storage in seen_storages and t.numel() > 0 else t
        seen_storages.add(storage)
        out[_clean_key(key)] = t.cpu().contiguous()
    return out


def _load_module_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                         strict: bool = True) -> None:
    target = unwrap_model(module)
    own = target.state_dict()
    actual_key = {_clean_key(k): k for k in own}
    missing = sorted(set(actual_key) - set(tensors))
    unexpected = sorted(set(tensors) - set(actual_key))
    wrong_shape = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(own[actual_key[k]].shape)}"
        for k in actual_key if k in tensors and tensors[k].shape != own[actual_key[k]].shape
    ]
    if wrong_shape or (strict and (missing or unexpected)):
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches (saved vs model): {few(wrong_shape)}" if wrong_shape else ""]
        raise CheckpointError(
            f"{source} does not match the model ({'; '.join(p for p in parts if p)}); "
            "was it saved with a different config?"
        )
    remapped = {actual_key[k]: v for k, v in tensors.items() if k in actual_key}
    target.load_state_dict(remapped, strict=strict)


def save_weights(path: str | Path, module: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Export one module's weights to a single safetensors file (atomic)."""
    tensors = module_tensors(module)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_weights(path: str | Path, module: nn.Module, strict: bool = True) -> None:
    """Load a file written by `save_weights` (or a checkpoint's `{name}.safetensors`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    _load_module_tensors(module, load_file(str(path), device="cpu"), str(path), strict)


# ----------------------------------------------------------------------------- rng


def capture_rng_state() -> dict[str, Any]:
    """Generator states of torch (CPU and the current GPU), numpy and python `random`."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device only (no new contexts)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- checkpoints


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (best effort: some file systems refuse folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    state: dict[str, Any] | None = None,
    rng: bool = True,
    keep: int = 2,
) -> Path:
    """Write `run_dir/checkpoints/step_{step:08d}/` atomically, point `latest` at it, prune.

    `state` must be JSON-able (numbers, strings, lists, dicts). `keep` newest checkpoints stay
    (the one just written always does); `keep <= 0` keeps all. Call it on rank 0 only.
    Returns the checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp_step_*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp_{name}_{os.getpid()}"
    tmp.mkdir()
    try:
        for mod_name, module in modules.items():
            save_file(module_tensors(module), str(tmp / f"{mod_name}.safetensors"))
        for opt_name, opt in (optimizers or {}).items():
            _save_tree(tmp / f"optim_{opt_name}", opt.state_dict())
        if rng:
            _save_tree(tmp / "rng", capture_rng_state())
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "modules": sorted(modules),
            "optimizers": sorted(optimizers or {}),
            "rng": rng,
            "torch_version": torch.__version__,
            "state": state or {},
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # re-saving a step (e.g. after resume): swap the old one out
            trash = root / f".tmp_{name}_old_{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", name + "\n")
    if keep > 0:
        others = [p for _, p in _step_dirs(root) if p != final]
        for old in others[: max(0, len(others) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, else the highest complete `step_*` folder, else None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "state.json").is_file():
            return named
    dirs = _step_dirs(root)
    return dirs[-1][1] if dirs else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder, or a `checkpoints` folder."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    found = latest_checkpoint(run_dir)
    if found is not None:
        return found
    raise CheckpointError(
        f"no checkpoint found at {path}: give a run folder or a checkpoints/step_* folder"
    )


def load_checkpoint(
    path_or_run_dir: str | Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer / RNG states) in place; return the user state plus `step`.

    Modules may sit on any device (tensors are read to CPU and copied in); optimizer states
    follow their parameters' devices. Every name in `modules`/`optimizers` must be in the
    checkpoint; modules saved but not asked for are ignored. No pickle is ever loaded.
    """
    ckpt = resolve_checkpoint(path_or_run_dir)
    meta = json.loads((ckpt / "state.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt} has checkpoint format {meta.get('format')}, expected 1")
    for mod_name, module in modules.items():
        file = ckpt / f"{mod_name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{ckpt} has no module '{mod_name}' (it has {meta['modules']})")
        _load_module_tensors(module, load_file(str(file), device="cpu"), str(file), strict)
    for opt_name, opt in (optimizers or {}).items():
        stem = ckpt / f"optim_{opt_name}"
        if not stem.with_suffix(".json").is_file():
            raise CheckpointError(
                f"{ckpt} has no optimizer '{opt_name}' (it has {meta['optimizers']})"
            )
        opt.load_state_dict(_load_tree(stem))
    if restore_rng and meta.get("rng"):
        restore_rng_state(_load_tree(ckpt / "rng"))
    return dict(meta.get("state", {}), step=int(meta["step"]))
