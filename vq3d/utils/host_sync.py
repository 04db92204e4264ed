"""Finding host synchronisations in a training step without a GPU.

On CUDA, an operator that needs a value on the host (`.item()`, `float(t)`, `if t:`), that
returns a data-dependent shape (`nonzero`, boolean indexing, `unique`, `bincount`,
`repeat_interleave` by a tensor) or that copies host data to the device (`torch.tensor(data,
device=...)`) makes the CPU wait for the GPU, so the next step's kernels cannot be queued
ahead. `HostSyncRecorder` is a dispatch mode that records those operators as they run, on
any device; CPU tests use it to prove a step free of them. (On a GPU,
`torch.cuda.set_sync_debug_mode` says the same from the driver's side; `vq3d bench gpu` uses it.)
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# operators whose result the host must wait for (values or output sizes that depend on data)
_SYNCING = {
    aten._local_scalar_dense.default: "a tensor read on the host (.item(), float(), bool(), if)",
    aten.nonzero.default: "nonzero (data-dependent size)",
    aten.masked_select.default: "masked_select (data-dependent size)",
    aten.unique_consecutive.default: "unique_consecutive (data-dependent size)",
    aten._unique2.default: "unique (data-dependent size)",
    aten.unique_dim.default: "unique (data-dependent size)",
    aten.bincount.default: "bincount (its size needs the largest value)",
    aten.repeat_interleave.Tensor: "repeat_interleave by a tensor (data-dependent size)",
    aten.repeat_interleave.self_Tensor: "repeat_interleave by a tensor (data-dependent size)",
    aten.lift_fresh.default: "a tensor made from host data (a host-to-device copy on a GPU)",
    aten.equal.default: "torch.equal (a value on the host)",
    aten.is_nonzero.default: "a tensor's truth value on the host",
    aten.allclose.default: "torch.allclose (a value on the host)",
}
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


@dataclass
class HostSync:
    op: str
    why: str
    where: str  # the innermost frame of vq3d code that called it


@dataclass
class HostSyncRecorder(TorchDispatchMode):
    """Records every operator of the kinds above run inside `with HostSyncRecorder() as rec:`."""

    syncs: list[HostSync] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        why = _SYNCING.get(func)
        if why is None and func is aten._to_copy.default and _to_host(args, kwargs or {}):
            why = ".cpu() / .to('cpu') of a device tensor"
        if why is None and func in _BOOL_INDEXED:
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                why = "boolean indexing (data-dependent size)"
        if why is not None:
            self.syncs.append(HostSync(str(func), why, _caller()))
        return func(*args, **(kwargs or {}))


def _to_host(args: tuple, kwargs: dict) -> bool:
    source = args[0] if args else None
    target = kwargs.get("device")
    return (isinstance(source, torch.Tensor) and source.device.type != "cpu" and target is not None
            and torch.device(target).type == "cpu")


def _caller() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/vq3d/" in f.filename and "host_sync" not in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('/vq3d/', 1)[-1]}:{f.lineno} {f.line}"
