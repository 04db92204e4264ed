"""Learning-rate schedule: linear warm-up, then cosine decay to a floor [ViT-VQGAN, nanoGPT].
(How many steps a run gets, and the schedule's shape at that length: `vq3d.train.planner`.)

The rate is a pure function of the step, set on the optimizer before every step, so a resumed
run needs nothing but its step number:

    set_lr(opt, lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
"""

from __future__ import annotations

import math

import torch


def lr_at(
    step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1
) -> float:
    """Learning rate for the optimizer step with 0-based index `step`.

    Warm-up: `base_lr * (step + 1) / warmup_steps` for `step < warmup_steps` (full rate at the
    last warm-up step). Then `base_lr * (min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2)`
    with `p = (step - warmup_steps) / (total_steps - warmup_steps)` clamped to [0, 1]: `base_lr`
    at `step == warmup_steps`, `min_ratio * base_lr` from `total_steps` on.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def ramp_scale(step: int, scale: float, ramp_steps: int) -> float:
    """A group's rate multiplier at `step`: 1 at step 0, `scale` from `ramp_steps` on, linear between."""
    if ramp_steps <= 0:
        return scale
    return 1.0 + (scale - 1.0) * min(1.0, step / ramp_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate to `lr` times the group's optional `lr_scale` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
