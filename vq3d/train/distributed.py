"""Process-group setup for single-process and `torchrun` runs, and the few collectives we use.

    info = setup_distributed(cfg.train.device)      # reads RANK / WORLD_SIZE / LOCAL_RANK
    model = wrap_ddp(model.to(info.device), info)   # no-op when world_size == 1
    loss_for_log = all_reduce_mean(loss.detach())   # identity when not distributed
    ...
    cleanup()

Devices and backend (`train.device`, `train.dist_backend`): under torchrun `cuda` puts rank r on
`cuda:LOCAL_RANK` and talks NCCL; `cuda:N` puts every rank on that one GPU, which NCCL refuses, so
the ranks talk gloo (on CUDA tensors) -- a way to check the distributed path on one GPU; `cpu`
talks gloo. Every collective here is a no-op outside a process group, so the same training loop
runs with and without `torchrun`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vq3d.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run."""

    rank: int  # global rank, 0 .. world_size-1
    local_rank: int  # rank on this machine (picks the GPU)
    world_size: int
    device: torch.device
    is_main: bool  # rank 0: the only process that logs, shows progress and writes checkpoints

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device_pref: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' -> cuda:local_rank; 'cpu'/'cuda:N' as given."""
    pref = device_pref.strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device '{device_pref}' was requested but CUDA is not available; "
                "use --set train.device=cpu (or auto)"
            )
        index = int(pref.split(":", 1)[1]) if ":" in pref else local_rank
        if index >= torch.cuda.device_count():
            hint = "" if ":" in pref else (" (one GPU per torchrun rank; train.device=cuda:0 puts every rank "
                                           "on one GPU)")
            raise UserError(
                f"device cuda:{index} does not exist ({torch.cuda.device_count()} GPUs visible){hint}"
            )
        return torch.device("cuda", index)
    if pref == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{device_pref}': use auto, cpu, cuda or cuda:N")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def choose_backend(backend: str, device: torch.device, shared_gpu: bool) -> str:
    """The process group's backend: `backend` unless "auto"; auto is NCCL when each rank has its
    own GPU, gloo on CPU or when the ranks share one GPU (NCCL needs one GPU per rank)."""
    if backend not in ("auto", "nccl", "gloo"):
        raise UserError(f"unknown train.dist_backend '{backend}': use auto, nccl or gloo")
    if backend == "auto":
        return "nccl" if device.type == "cuda" and not shared_gpu else "gloo"
    if backend == "nccl" and (device.type != "cuda" or shared_gpu):
        raise UserError("train.dist_backend=nccl needs one GPU per rank (train.device=cuda); "
                        "ranks on the CPU or sharing one GPU use gloo")
    return backend


def setup_distributed(device_pref: str = "auto", timeout_s: float = 1800.0, backend: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's env vars, or run as a single process.

    Under torchrun `cuda` (or auto on a GPU machine) puts each process on `cuda:LOCAL_RANK`; an
    explicit `cuda:N` puts every process on that GPU (gloo then; see `choose_backend`). Calling it
    again in an initialised process reuses the group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        device = resolve_device(device_pref, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(0, 0, 1, device, True)
    shared_gpu = ":" in device_pref.strip()  # one named GPU for every rank
    device = resolve_device(device_pref, local_rank)
    if shared_gpu and device.type == "cuda" and rank == 0 and torch.cuda.device_count() > 1:
        # a config written for one process (train.device=cuda:0) would put every rank on one GPU
        print(f"note: train.device={device_pref} puts all {world_size} ranks on that one GPU (gloo); use "
              "train.device=cuda (or auto) for one GPU per rank", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(choose_backend(backend, device, shared_gpu), rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, local_rank, world_size, device, rank == 0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined). On a normal exit the ranks
    meet at a barrier first: a gloo rank that tears down while its peer still sends aborts that
    peer ("terminate called without an active exception", seen in CI). While an exception
    propagates (this is called from `finally`) a peer may never arrive, so there is no barrier."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, info: DistInfo, **ddp_kwargs: Any) -> nn.Module:
    """DistributedDataParallel around `module` (already on `info.device`); identity for 1 process."""
    if not info.distributed:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)


def broadcast_parameters(modules: list[nn.Module], src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank (for modules outside DDP)."""
    if not is_distributed():
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def all_reduce_grads(params: list[nn.Parameter]) -> None:
    """Average gradients over ranks (one flat all-reduce) for parameters outside DDP."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def unwrap_model(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers (any nesting)."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _collective_device() -> torch.device:
    """Where the small tensors of our own collectives live: the GPU for NCCL, the host for gloo
    (gloo's CUDA support covers all-reduce and broadcast only)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks (a new tensor; the input is untouched). Identity for 1 process."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def reduce_metrics(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Average a dict of scalars over ranks with ONE collective; returns python floats."""
    keys = sorted(metrics)
    values = [float(metrics[k]) for k in keys]
    if is_distributed() and keys:
        packed = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        values = (packed / dist.get_world_size()).tolist()
    return dict(zip(keys, values))


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on at least one rank (so all ranks decide alike)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (pickled in memory between our own processes only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]
