"""Mip-NeRF 360 scene contraction: unbounded space -> a ball (or cube) of radius 2.

    contract(x) = x                        if ||x|| <= 1
                  (2 - 1/||x||) x / ||x||   otherwise            (Barron et al. 2022, Mip-NeRF 360)

The paper's contraction uses the L2 norm: contracted points fill the ball of radius 2, so the
corners of the triplanes' cube [-2, 2]^3 stay empty. nerfstudio's L-inf variant fills the cube.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ContractionNorm = Literal["l2", "linf"]


def contract(x: Tensor, norm: ContractionNorm = "l2") -> Tensor:
    """Contract points `x` (..., 3) into the norm ball of radius 2; identity inside radius 1.

    Continuous everywhere, with |contract(x)| < 2 for every finite x (in the chosen norm).
    """
    if norm == "l2":
        mag = x.norm(dim=-1, keepdim=True)
    elif norm == "linf":
        mag = x.abs().amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown contraction norm {norm!r}: use 'l2' or 'linf'")
    # clamp keeps the unused branch finite (and its gradient zero) inside the unit ball
    safe = mag.clamp_min(1.0)
    return torch.where(mag <= 1.0, x, (2.0 - 1.0 / safe) * (x / safe))
