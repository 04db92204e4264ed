"""Running a Stage-1 training step on fake tensors (shapes and dtypes, no data, no compute):
the paper preset's peak memory at any batch size in seconds, on a machine without a GPU.

Under `torch._subclasses.FakeTensorMode` every operator computes only its output's shape and
dtype; autocast casts as on the CPU, which is nearly what a GPU does (CUDA's autocast also
returns layer norms, softmax and sums in fp32, transients this count misses), and `PeakMemory` (a dispatch mode that
adds each new storage's bytes and subtracts them when the storage is freed) follows what a
caching-free allocator would hold. The step can run this way because it never reads a tensor
on the host (see `vq3d.utils.host_sync`); the scatter of the triplanes' gradient must be
`index_add` (the CPU's `segment` method has a data-dependent size).
"""

from __future__ import annotations

import tempfile
import weakref
from contextlib import contextmanager
from typing import Any, Iterator
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vq3d.config import Config


class PeakMemory(TorchDispatchMode):
    """Bytes of the storages made inside the mode and still alive: `current`, and the largest,
    `peak` (views and in-place results share their input's storage and add nothing; storages
    made before the mode are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


@contextmanager
def _fake_construction() -> Iterator[None]:
    """Model construction under fake tensors: truncated-normal initialisation reads a value on
    the host, and `.to(cpu)` swaps fake parameters; neither changes shapes, so both are skipped."""
    normal = nn.init.normal_

    def trunc_normal(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                     b: float = 2.0) -> torch.Tensor:
        return normal(t, mean, std)

    with mock.patch.object(nn.init, "trunc_normal_", trunc_normal), \
            mock.patch.object(nn.Module, "to", lambda self, *args, **kwargs: self):
        yield


def fake_step_memory(cfg: Config) -> dict[str, int]:
    """Peak bytes of two training steps of `cfg` (device cpu, its batch size and precision) on
    fake tensors: {"peak", "state" (after them: weights, gradients, optimizer states), "built"
    (after building the models)}. The second step finds the optimizer's states in memory and is
    a lazy-R1 step (`loss.r1_every`), so the peak covers R1's double backward too."""
    from vq3d.train.stage1 import Stage1Trainer  # heavy import, only when used

    res, batch = cfg.data.resolution, cfg.train.batch_size
    with tempfile.TemporaryDirectory() as run_dir, FakeTensorMode(allow_non_fake_inputs=True), \
            PeakMemory() as memory:
        with _fake_construction():
            trainer = Stage1Trainer(cfg, run_dir)
        built = memory.current
        data = {"image": torch.rand(batch, 3, res, res) * 2 - 1, "disparity": torch.rand(batch, 1, res, res)}
        r1 = max(1, cfg.loss.r1_every)
        for step in (2 * r1 - 1, 2 * r1):  # a plain step, then an R1 step
            trainer.step = step
            trainer.train_step(data)
        return {"peak": memory.peak, "state": memory.current, "built": built}
