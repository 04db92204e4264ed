"""FLOPs of a piece of work from its operators' shapes (`torch.utils.flop_counter`'s formulas).

`FlopCounterMode` attributes FLOPs to modules with backward hooks that fail inside
`torch.autograd.grad` (R1's double backward), and it has no formula for the CPU's attention
kernel; this counter keeps only a total, and adds the CPU attention kernels (same arguments as
flash attention's). It works on real and on fake tensors (shapes are all it reads), so the
paper preset's FLOPs can be counted without computing anything.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

FORMULAS = dict(flop_registry)
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = flop_registry[aten._scaled_dot_product_flash_attention]
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = flop_registry[
    aten._scaled_dot_product_flash_attention_backward]


class FlopCount(TorchDispatchMode):
    """Counts FLOPs (multiply-adds count 2) of matmuls, convolutions and attention run inside."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.by_op[func._overloadpacket.__name__] += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run `fn()`; returns its result and the FLOPs of what it ran (forward and backward)."""
    with FlopCount() as counter:
        result = fn()
    return result, counter.total
