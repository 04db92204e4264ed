"""Exponential moving average of a model's weights, kept in fp32.

    ema = EMA(model, cfg.ema_decay)          # model may be DDP / torch.compile wrapped
    ... optimizer.step(); ema.update(model, step)
    save_checkpoint(..., modules={"model": model, "ema": ema.shadow}, ...)
    save_weights(run_dir / "ema.safetensors", ema.shadow)

`shadow` is a full copy of the (unwrapped) module, so it checkpoints, exports and renders like
the model itself. Update: shadow <- decay * shadow + (1 - decay) * weights, for every floating
parameter and buffer; other buffers (counters, integer tables) are copied. Given the step, the
decay warms up as min(decay, (1 + step) / (10 + step)) (the `num_updates` rule of TensorFlow's
ExponentialMovingAverage), so early steps do not leave the random initialisation in the average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vq3d.train.distributed import unwrap_model


class EMA:
    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(unwrap_model(module))
        self.shadow.float().eval().requires_grad_(False)
        for p in self.shadow.parameters():
            p.grad = None

    def _pairs(self, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        source = unwrap_model(module)
        own = dict(self.shadow.named_parameters()) | dict(self.shadow.named_buffers())
        theirs = dict(source.named_parameters()) | dict(source.named_buffers())
        if own.keys() != theirs.keys():
            diff = sorted(own.keys() ^ theirs.keys())[:5]
            raise ValueError(f"EMA shadow and module differ in tensors: {diff}")
        return [(own[k], theirs[k]) for k in own]

    @torch.no_grad()
    def update(self, module: nn.Module, step: int | None = None, skip: torch.Tensor | None = None) -> None:
        """shadow <- d * shadow + (1 - d) * module (floating tensors; others copied).

        d is `decay`, or its warmed-up value at `step` (0-based) when a step is given. `skip`, a
        0-d tensor, leaves the shadow as it is where it is 1 (a skipped step), on the device.
        """
        d = self.decay_at(step)
        weight = 1.0 - d if skip is None else (1.0 - skip.float()) * (1.0 - d)
        for mine, theirs in self._pairs(module):
            if mine.is_floating_point():
                mine.lerp_(theirs.detach().to(mine.dtype), weight)
            elif skip is None:
                mine.copy_(theirs)
            else:
                mine.copy_(torch.where(skip > 0, mine, theirs))

    def decay_at(self, step: int | None) -> float:
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite `module`'s weights with the average (cast to the module's dtypes)."""
        for mine, theirs in self._pairs(module):
            theirs.copy_(mine.to(theirs.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
