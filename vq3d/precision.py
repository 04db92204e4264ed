"""The precision policy: what may run in bf16 under autocast and what stays fp32 (docs/design.md).

Under `torch.autocast(dtype=torch.bfloat16)`, on CPU or CUDA alike:

- **fp32 always (geometry and sums):** cameras, ray origins and directions, sample edges,
  their disparities and distances, plane coordinates (contraction), the bilinear corner
  indices and fractions, transmittance and compositing, the depth loss's normal sums, and the
  quantizer's latents and code distances. bf16 keeps 8 significant bits: at 256 px it merges
  ray directions (187 distinct x-directions of 256), 33 NeRF sample edges onto 7, and rounds
  plane coordinates to about a texel of a 512 plane; near codes tie in the nearest-code search.
- **the autocast dtype (bf16) allowed:** the ViTs, the decoder's planes and the features read
  from them, and the field MLPs (their weight gradients are accumulated in fp32).

Code that must stay fp32 runs inside `full_precision()` (or is decorated with `fp32`), which
turns autocast off for every device type; the custom autograd Functions of the renderer pick
their compute dtype with `autocast_dtype` and cast explicitly, so the policy does not depend on
which device's autocast is active (`torch.amp.custom_fwd` only knows one device type).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

GEOMETRY_DTYPE = torch.float32
LOW_PRECISION = (torch.bfloat16, torch.float16)
_DEVICE_TYPES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on `device_type` right now, or None when it is off there."""
    if device_type not in _DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def compute_dtype(device: torch.device | str, default: torch.dtype = GEOMETRY_DTYPE) -> torch.dtype:
    """The dtype the policy lets features and MLPs run in on `device`: autocast's, else `default`
    (pass the inputs' dtype to keep fp64 checks in fp64)."""
    return autocast_dtype(torch.device(device).type) or default


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of `dtype` values are accumulated in: fp32 for bf16 / fp16, else itself."""
    return GEOMETRY_DTYPE if dtype in LOW_PRECISION else dtype


def upcast(x: Tensor) -> Tensor:
    """`x` in fp32 if it is in a low-precision dtype (bf16, fp16), else unchanged (fp32, fp64)."""
    return x.float() if x.dtype in LOW_PRECISION else x


@contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type inside (a no-op where it is off already)."""
    with ExitStack() as stack:
        for device_type in _DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _to_fp32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return upcast(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_to_fp32(v) for v in value)
    return value


def fp32(fn: F) -> F:
    """Decorator: run `fn` with autocast off and its low-precision tensor arguments (also inside
    lists and tuples) cast to fp32 (fp64 ones stay fp64)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with full_precision():
            return fn(*(_to_fp32(a) for a in args), **{k: _to_fp32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
