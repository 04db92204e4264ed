"""Operator calls of a piece of work, counted by the PyTorch profiler (a proxy for GPU kernel
launches that CPU machines can measure: on a GPU each call is at least one launch of a few
microseconds, so thousands of small calls leave it launch-bound)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from torch.profiler import ProfilerActivity, profile


def _is_top_level(event: Any) -> bool:
    """An aten operator called from Python or autograd, not from inside another aten operator."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count_operator_calls(fn: Callable[[], Any]) -> tuple[Any, Counter]:
    """Run `fn()` under the profiler; returns its result and the top-level aten operator calls
    by name (forward and backward alike: run the backward inside `fn` to count it)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    calls = Counter(e.name for e in prof.events() if e.name.startswith("aten::") and _is_top_level(e))
    return result, calls
