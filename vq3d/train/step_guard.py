"""Skipping non-finite updates on the device: the same decision on every rank, no host sync.

    guard = StepGuard(device, max_bad_steps)
    bad = guard.flag(loss, grad_norm)       # 0-d float on the device: 1 if any rank saw inf/nan
    guard.step(optimizer, bad)               # a fused AdamW skips the whole update where bad == 1
    ...
    guard.check()                            # when logging: raise after max_bad_steps in a row

Why on the device: a Python `if not torch.isfinite(loss)` waits for the GPU to finish the
step, and taken by each rank alone it lets one rank skip an update while the others wait for
it in the gradient all-reduce (a hang). Here the flag is all-reduced (MAX, one small
collective that queues on the device like the others), and the update is skipped inside the fused optimizer kernel, which reads
`optimizer.found_inf` as it does for `torch.amp.GradScaler`: parameters, moments and the step
count stay as they were. The counters live on the device and are read only when logging, so a
diverged run stops at the next log step rather than at once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from vq3d.train.distributed import is_distributed
from vq3d.train.run_control import NonFiniteLossError


def fused_adamw(params: list, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA), which can skip an update on the device."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """Loading a state dict replaces the param groups' options, and a checkpoint written by a
    non-fused optimizer would switch the kernel (and the skip) off: switch it back on, with
    each step count where the fused kernel wants it (fp32, on the parameter's device; a
    non-fused optimizer keeps it on the CPU)."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(p.device, torch.float32)


class StepGuard:
    """Device-side non-finite detection, skip, and bad-step counters for one run."""

    def __init__(self, device: torch.device, max_bad_steps: int, skipped: int = 0,
                 last_finite_step: int = -1) -> None:
        self.max_bad_steps = max_bad_steps
        self.skipped = torch.full((), skipped, dtype=torch.long, device=device)  # over the whole run
        self.bad_in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.last_finite_step = torch.full((), last_finite_step, dtype=torch.long, device=device)

    def state(self) -> dict[str, int]:
        """The counters to checkpoint (a host read: call when saving)."""
        skipped, last = torch.stack([self.skipped, self.last_finite_step]).tolist()
        return {"skipped": int(skipped), "last_finite_step": int(last)}

    def flag(self, *values: Tensor) -> Tensor:
        """1.0 (0-d, on the device) if any of `values` holds inf or nan on any rank, else 0.0."""
        bad = torch.stack([~torch.isfinite(v.detach()).all() for v in values]).any().float()
        if is_distributed():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad

    def step(self, optimizer: torch.optim.Optimizer, bad: Tensor) -> None:
        """`optimizer.step()`, skipped on the device where `bad` is 1 (a fused AdamW)."""
        if not all(g.get("fused") for g in optimizer.param_groups):
            raise ValueError("StepGuard.step needs a fused optimizer (see fused_adamw)")
        optimizer.grad_scale, optimizer.found_inf = None, bad
        optimizer.step()

    def record(self, bad: Tensor, step: int) -> None:
        """Count the generator update of `step` as skipped (bad = 1) or done."""
        bad_long = bad.long()
        self.skipped += bad_long
        self.bad_in_a_row.mul_(bad_long).add_(bad_long)  # reset by a good step
        self.last_finite_step.copy_(torch.where(bad_long > 0, self.last_finite_step, step))

    def check(self) -> int:
        """Read the counters (a host sync: call when logging); returns the skipped steps so far.
        Raises NonFiniteLossError after `max_bad_steps` non-finite steps in a row."""
        skipped, in_a_row, last = (int(x) for x in torch.stack(
            [self.skipped, self.bad_in_a_row, self.last_finite_step]).tolist())
        if self.max_bad_steps > 0 and in_a_row >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{in_a_row} non-finite losses in a row; last finite step "
                f"{'none yet' if last < 0 else last}; lower the learning rate (train.lr), keep gradient "
                "clipping on (train.grad_clip) or train in fp32 (train.precision=fp32), then resume from "
                "the last checkpoint")
        return skipped
