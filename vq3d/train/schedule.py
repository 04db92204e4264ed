"""Learning-rate schedule: linear warm-up, then cosine decay to a floor [ViT-VQGAN, nanoGPT].

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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's rate to `lr` times the group's optional `lr_scale` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def fit_to_time(steps: int, gan_start: int, done: int, step_seconds: float, gan_cost: float,
                seconds_left: float) -> tuple[int, int]:
    """(steps, gan_start) scaled by one factor f so that the rest of the run takes `seconds_left`.

    Steps before `gan_start` take `step_seconds`, later ones `gan_cost` times that, and `done`
    steps are behind us: f solves (f * pre - done) * t + f * gan * gan_cost * t = seconds_left with
    pre = min(gan_start, steps), gan = steps - pre. Scaling both keeps the schedule's shape (the
    cosine decay, the GAN's share) on a faster or slower machine.
    """
    pre = min(gan_start, steps)
    gan = steps - pre
    f = (seconds_left / step_seconds + done) / (pre + gan * gan_cost)
    new_steps = max(done + 1, round(steps * f))
    return new_steps, round(gan_start * f)


# The fields that, with train.steps, make a Stage-1 schedule's shape: where the GAN starts, the
# warm-ups (learning rate, GAN weight, the s* floor's fade) as steps. A run fitted to its minutes
# (`fit_to_time`) or given `--steps N` scales them all by one factor, so its cosine decay, GAN
# share and warm-ups keep their proportions on any machine and at any length.
SCHEDULE_SHAPE = (("train", "warmup_steps"), ("loss", "gan_start_steps"), ("loss", "gan_warmup_steps"),
                  ("loss", "depth_scale_floor_steps"), ("loss", "novel_gan_start_steps"))


def scale_schedule(cfg, steps: int, keep: tuple[str, ...] = ()) -> dict[str, int]:
    """Set `cfg.train.steps` to `steps` and scale every SCHEDULE_SHAPE field by the same factor
    (rounded; a positive value stays >= 1), except the "section.key" names in `keep` (values a
    user set, or phases already under way). Returns the new values by "section.key"."""
    factor = steps / max(1, cfg.train.steps)
    new = {}
    for section, key in SCHEDULE_SHAPE:
        name = f"{section}.{key}"
        if name in keep:
            continue
        value = getattr(getattr(cfg, section), key)
        scaled = max(1, round(value * factor)) if value > 0 else value
        setattr(getattr(cfg, section), key, scaled)
        new[name] = scaled
    cfg.train.steps = steps
    return new


class FitClock:
    """Times a run's steps and says when to refit its plan to its minutes (`train.fit_to_time`).

    The first fit comes at step `probe[1]`, timed from step `probe[0]` (start-up steps are slower).
    Later refits come every `every` steps and use the mean time of every step timed so far in the
    current phase (before the GAN, or with it), so the plan converges on the real step time
    instead of trusting 30 noisy steps (on 2 busy cores two probes of one preset read 0.21 and
    0.26 s). GAN steps are timed from the `settle`-th of them on, and the plan is refitted as
    soon as `gan_probe` are timed: until then their cost is an estimate from the rays they render.
    """

    def __init__(self, probe: tuple[int, int] = (10, 40), every: int = 250, gan_probe: int = 50,
                 settle: int = 10) -> None:
        self.probe, self.every, self.gan_probe, self.settle = probe, every, gan_probe, settle
        self.phase: bool | None = None  # whether the steps timed now train the GAN
        self.phase_start = 0  # the first step of the current phase
        self.mark: tuple[int, float] | None = None  # (steps done, time) where timing began
        self.last_fit: int | None = None  # steps done at the last refit (of either phase)
        self.fitted_gan = False

    def tick(self, done: int, now: float, gan: bool) -> tuple[float, bool] | None:
        """Record that step `done - 1` ended at `now` (seconds, monotonic); `gan`: whether it
        trained the GAN. Returns (mean seconds per step, gan) when the plan should be refitted."""
        if gan != self.phase:
            self.phase, self.phase_start, self.mark = gan, done - 1, None
        settle = self.settle if gan else self.probe[0]
        if self.mark is None:
            if done - self.phase_start >= settle:
                self.mark = (done, now)
            return None
        timed = done - self.mark[0]
        if gan:
            due = timed >= self.gan_probe and (not self.fitted_gan or done - self.last_fit >= self.every)
        else:
            due = timed >= self.probe[1] - self.probe[0] and (
                self.last_fit is None or done - self.last_fit >= self.every)
        if not due:
            return None
        self.last_fit, self.fitted_gan = done, self.fitted_gan or gan
        return (now - self.mark[1]) / timed, gan
