"""Where a Stage-1 training step spends its time, by region (`vq3d bench gpu`).

A `RegionClock` records a time mark each time the step enters a region, from hooks; the time
between two marks goes to the region the earlier one opened. Marks are CUDA events on a GPU
(positions in the stream, read after one synchronisation at the end: the step is not slowed by
host reads) and `perf_counter` readings on the CPU, where work runs as it is issued.

The regions and what opens them:

- encoder, quantizer, decoder, renderer, discriminators: entering the module's forward (a forward
  pre-hook) and, in the backward, the gradient of the module's output becoming ready (a tensor
  hook on each output: the module's backward starts then); leaving a forward returns to "other"
  (to "losses" after the renderer and after a discriminator inside the generator's loss);
- losses: the loss terms of Eq. 4 forward, and their backward until the first module's output
  gradient (a discriminator's backward inside the generator's loss ends when the gradient of
  its input, an identity view made for this purpose, is ready);
- optimizer: from the last gradient of the autoencoder's parameters (a multi-gradient hook)
  through clipping, the skip decision and the fused AdamW update, and the discriminators' update;
- quantizer also covers the codebook step (usage, dead-code restarts); discriminators the
  discriminator step's forward and backward (lazy R1 included when on);
- other: whatever lies between (cameras, random draws, EMA).

The hooks add a few microseconds per mark; a step has about a hundred marks. Regions are
attributed by the order in which work is issued, so on a GPU a region that the host issues
slowly is charged with the GPU's idle time while it does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import fields, is_dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

REGIONS = ("encoder", "quantizer", "decoder", "renderer", "losses", "discriminators", "optimizer", "other")


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a module's output: a tensor, a dataclass of tensors (lists too), a tuple."""
    if isinstance(value, Tensor):
        return [value]
    if is_dataclass(value):
        return [t for f in fields(value) for t in _tensors(getattr(value, f.name))]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class RegionClock:
    """Time marks of one or more steps, summed by region (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []
        self.handles: list[Any] = []
        self.phase = "generator"  # or "discriminator": where a discriminator's forward returns to

    def mark(self, region: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((region, event))
        else:
            self.marks.append((region, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        """Seconds by region since the first mark, up to the last mark (synchronises a GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for (region, a), (_, b) in zip(self.marks, self.marks[1:]):
            totals[region] += a.elapsed_time(b) / 1e3 if self.cuda else b - a
        return {r: round(totals.get(r, 0.0), 5) for r in REGIONS}

    def reset(self) -> None:
        self.marks.clear()

    # -- hooks -------------------------------------------------------------------------------

    def _on_grad(self, region: str) -> Callable[[Tensor], None]:
        def hook(_grad: Tensor) -> None:
            self.mark(region)
        return hook

    def watch_module(self, module: nn.Module | None, region: str, after: str | Callable[[], str],
                     input_grad_marks: str | None = None) -> None:
        """Marks for `module`: `region` on entering its forward and when its output's gradient is
        ready; `after` (a region or a function of the phase) on leaving its forward. With
        `input_grad_marks`, the first input passes through an identity view whose gradient marks
        the end of the module's backward (opens that region, or `after` of the phase)."""
        if module is None:
            return

        def pre(_mod: nn.Module, args: tuple) -> tuple | None:
            self.mark(region)
            if input_grad_marks is not None and args and isinstance(args[0], Tensor) and args[0].requires_grad:
                view = args[0].view_as(args[0])
                view.register_hook(self._on_grad(after() if callable(after) else after))
                return (view, *args[1:])
            return None

        def post(_mod: nn.Module, _args: tuple, output: Any) -> None:
            for t in _tensors(output):
                if t.requires_grad and t.grad_fn is not None:
                    t.register_hook(self._on_grad(region))
            self.mark(after() if callable(after) else after)

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def attach(self, trainer: Any) -> "RegionClock":
        """Watch a `Stage1Trainer`'s models, optimizers and step phases (undone by `detach`)."""
        model = trainer.model
        for name in ("encoder", "quantizer", "decoder"):
            self.watch_module(getattr(model, name), name, "other")
        self.watch_module(model.renderer, "renderer", "losses")
        back_from_disc = (lambda: "losses" if self.phase == "generator" else "discriminators")
        for disc in (trainer.d_main, trainer.d_novel):
            self.watch_module(disc, "discriminators", back_from_disc, input_grad_marks="end")
        params = [p for p in model.parameters() if p.requires_grad]
        self.handles.append(torch.autograd.graph.register_multi_grad_hook(
            params, lambda _grads: self.mark("optimizer"), mode="all"))
        for opt in trainer._optimizers().values():
            self.handles.append(opt.register_step_pre_hook(lambda *_: self.mark("optimizer")))
            self.handles.append(opt.register_step_post_hook(lambda *_: self.mark(
                "other" if self.phase == "generator" else "discriminators")))
        self._wrap(trainer, "_generator_step", "other", "generator")
        self._wrap(trainer, "_codebook_step", "quantizer", "generator")
        self._wrap(trainer, "_discriminator_step", "discriminators", "discriminator")
        return self

    def _wrap(self, trainer: Any, method: str, region: str, phase: str) -> None:
        """Mark `region` when the trainer's `method` starts and "other" when it returns."""
        original = getattr(trainer, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.phase = phase
            self.mark(region)
            try:
                return original(*args, **kwargs)
            finally:
                self.mark("other")
                self.phase = "generator"

        setattr(trainer, method, wrapped)
        self.handles.append(_Restore(trainer, method))

    def detach(self) -> None:
        for handle in reversed(self.handles):
            handle.remove()
        self.handles.clear()


class _Restore:
    """A handle that removes an instance attribute (the wrapped method), restoring the class's."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name

    def remove(self) -> None:
        self.obj.__dict__.pop(self.name, None)
