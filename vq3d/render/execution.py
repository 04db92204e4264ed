"""How big the renderer's chunks are, from a memory budget (docs/design.md, "Execution").

The renderer works on chunks of points (lookup + MLP, forward and backward) and of rays
(proposal resampling, inference renders) so that temporaries stay bounded. Their sizes come
from one budget, the bytes one chunk's temporaries may take:

- `render.chunk_mb` > 0: that many MB;
- on CUDA (`chunk_mb = 0`): a quarter of the memory the device can still give (free memory
  plus what PyTorch's caching allocator holds unused), so a training render at the paper's
  sizes is one chunk per level -- a few large kernels instead of thousands of small ones,
  which leave a GPU launch-bound;
- on CPU (`chunk_mb = 0`): 32 MB. Larger chunks do not run faster on CPU and cost memory:
  this keeps the point chunks of the demo preset near 16k points, the size the CPU path
  was tuned at.

The per-point and per-ray byte counts below are upper estimates of the temporaries (not of
what is kept for backward, which does not depend on the chunking).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch

CPU_CHUNK_MB = 32.0
CUDA_BUDGET_SHARE = 0.25
ScatterMethod = Literal["segment", "index_add"]


@dataclass(frozen=True)
class ExecutionPolicy:
    """Chunk budget (bytes), the triplane-gradient scatter method of one render, and whether the
    lookup + MLP chunks of training renders run compiled (`render.compile_field`)."""

    chunk_bytes: int
    scatter: ScatterMethod
    compiled: bool = False

    def per_chunk(self, bytes_each: int) -> int:
        """How many items (points, rays) of `bytes_each` temporaries one chunk holds (>= 1)."""
        return max(1, self.chunk_bytes // max(1, bytes_each))


def lookup_bytes_per_point(channels: int, hidden: int, layers: int) -> int:
    """Temporaries of one point in the fused lookup + MLP, forward or backward (the larger):
    corner rows and weights (~27 words), the `index_add` scatter's 12 weighted feature rows
    (12 C fp32) or the `segment` scatter's sorted keys and per-texel sums, the features, and
    the MLP's recomputed activations and their gradients."""
    return 4 * (40 + 13 * channels + 4 * hidden * max(1, layers - 1) + 8)


def resample_bytes_per_ray(samples: int) -> int:
    """Temporaries of one ray in proposal resampling with dilation: the dilated histogram's 2K
    breakpoints, the sort, the sparse table of log2(K) + 1 levels and the CDF (fp32/int64)."""
    levels = max(1, samples.bit_length())
    return 8 * samples * (levels + 16)


def render_bytes_per_ray(samples_per_level: list[int]) -> int:
    """Per-ray tensors of an inference render (edges, disparities, distances, weights, points,
    rgb of every level), about 16 words per sample."""
    return 64 * sum(samples_per_level)


def budget_bytes(chunk_mb: float, device: torch.device) -> int:
    """The chunk budget in bytes for `device` (see the module docstring)."""
    if chunk_mb > 0:
        return int(chunk_mb * 2**20)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(2**26, int(CUDA_BUDGET_SHARE * (free + cached)))
    return int(CPU_CHUNK_MB * 2**20)


def execution_policy(chunk_mb: float, scatter: str, device: torch.device, compiled: bool = False) -> ExecutionPolicy:
    """The policy for one render on `device` from `render.chunk_mb`, `render.scatter`
    ("auto": `index_add` on CUDA, where atomic adds are fast, `segment` elsewhere) and
    `render.compile_field` (`compiled`)."""
    if scatter == "auto":
        scatter = "index_add" if device.type == "cuda" else "segment"
    if scatter not in ("segment", "index_add"):
        raise ValueError(f"unknown render.scatter {scatter!r}: use auto, segment or index_add")
    return ExecutionPolicy(budget_bytes(chunk_mb, device), scatter, compiled)  # type: ignore[arg-type]


DEFAULT_POLICY = ExecutionPolicy(int(CPU_CHUNK_MB * 2**20), "segment")


@functools.cache
def compile_once(fn: Callable, eager_overrides: tuple[tuple[str, object], ...] = ()) -> Callable:
    """`fn` compiled once per process for `render.compile_field` (`torch.compile`, one graph,
    static shapes): each shape of its tensors and each value of its other arguments compiles a
    specialised graph on first use, seconds each on a CPU. Where the compiler cannot build (no
    C++ compiler on a CPU, ...), it warns once and runs `fn` eagerly from then on; a call that
    would pass dynamo's limit of graphs per function (`recompile_limit`: a run rendering many
    shapes) runs eagerly too, and shapes compiled before stay compiled. Eager calls get the
    keyword arguments `eager_overrides` (choices that only pay when compiled)."""
    graph = torch.compile(fn, fullgraph=True, dynamic=False)
    failed: list[str] = []
    warned: list[str] = []

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not failed:
            try:
                return graph(*args, **kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                failed.append(str(err).strip().splitlines()[0])
                reason = f"{failed[0]}; it runs eagerly from now on"
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                reason = "one graph per shape and the limit of graphs is reached; new shapes run eagerly"
            if reason not in warned:
                warned.append(reason)
                warnings.warn(f"render.compile_field: {fn.__name__} did not compile ({reason})", stacklevel=2)
        return fn(*args, **{**kwargs, **dict(eager_overrides)})

    return run
