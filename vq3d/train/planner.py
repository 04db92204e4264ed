"""The run planner: how many steps a run gets, and the schedule's shape at that length.

One place for both ways of sizing a run and for both users of it (`vq3d train` and `vq3d demo`):
- `--steps N` (`scale_schedule`): the preset's shape (warm-ups, GAN start, the s* floor's fade)
  scaled to N steps;
- `--max-minutes M` with `train.fit_to_time` (`FitClock`, `plan_to_minutes`): the steps are fitted
  to the minutes from measured step times, refitted as timing improves, and the shape scaled
  with them;
- Stage 2 with `train.fit_to_time` and `--max-minutes` (`stage2_steps_to_minutes`): its steps,
  or fewer when they would not fit, from its own measured step time (no GAN, no shape to scale).
"""

from __future__ import annotations

from vq3d.config import Config

FIT_PROBE = (10, 40)  # train.fit_to_time first plans the run from these steps (after start-up)
# of max_minutes, for the planned steps; the rest is for checkpoints and a slowdown after the
# last refit (at most `FitClock.every` steps before the end). At 0.95 the demo's Stage 1 left
# 24-26 s of its 9.6 minutes unused (its last checkpoint took under a second), on two machines
FIT_TIME_SHARE = 0.98


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
SCHEDULE_SHAPE = (("train", "warmup_steps"), ("train", "field_lr_ramp_steps"), ("loss", "gan_start_steps"),
                  ("loss", "gan_warmup_steps"), ("loss", "depth_scale_floor_steps"), ("loss", "novel_gan_start_steps"))


def scale_schedule(cfg: Config, steps: int, keep: tuple[str, ...] = ()) -> dict[str, int]:
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


def gan_step_cost(cfg: Config) -> float:
    """How many pre-GAN steps one GAN step costs, from the rays each renders: whole canonical and
    novel images of the GAN batch against the ray subsets of the whole batch (the renderer is the
    cost of a step). It errs high, so a fitted run's first plan errs short: measured on 2 CPU
    cores, 1.45x where this gives 2 (batch 32, GAN batch 8), 5.8x where it gives 8 (batch 8, GAN
    batch 8) and 2.9x where it gives 4 (batch 8, GAN batch 4); the refit after 50 timed GAN steps
    replaces it."""
    t, res = cfg.train, cfg.data.resolution
    rays = cfg.render.train_rays if 0 < cfg.render.train_rays < res * res else res * res
    gan_images = t.gan_batch_size or t.batch_size
    return max(1.0, 2 * gan_images * res * res / (t.batch_size * rays)) if cfg.loss.gan > 0 else 1.0


def plan_to_minutes(cfg: Config, done: int, step_seconds: float, seconds_elapsed: float, in_gan: bool) -> tuple[int, int]:
    """(steps, gan_start) that fill `FIT_TIME_SHARE` of `cfg.train.max_minutes`, `seconds_elapsed`
    of which are spent and `done` steps taken, at `step_seconds` per step of the current phase.
    Once the GAN runs only the number of steps is left to choose."""
    seconds_left = FIT_TIME_SHARE * cfg.train.max_minutes * 60.0 - seconds_elapsed
    if in_gan:
        return done + max(1, int(seconds_left / step_seconds)), cfg.loss.gan_start_steps
    return fit_to_time(cfg.train.steps, cfg.loss.gan_start_steps, done, step_seconds, gan_step_cost(cfg),
                       seconds_left)


def stage2_steps_to_minutes(cfg: Config, most_steps: int, done: int, step_seconds: float,
                            seconds_elapsed: float) -> int:
    """Stage 2's steps: as many as fill `FIT_TIME_SHARE` of `cfg.train.max_minutes` at
    `step_seconds` each (`seconds_elapsed` spent, `done` taken), but at most `most_steps` (the
    configured ones: more steps would only overfit a small token set further)."""
    seconds_left = FIT_TIME_SHARE * cfg.train.max_minutes * 60.0 - seconds_elapsed
    return max(done + 1, min(most_steps, done + int(seconds_left / step_seconds)))


def apply_plan(cfg: Config, steps: int, gan_start: int, in_gan: bool) -> None:
    """Give `cfg` the planned length: the whole shape scales before the GAN; once it runs, its
    start and warm-up are history and stay."""
    scale_schedule(cfg, steps, keep=("loss.gan_start_steps", "loss.gan_warmup_steps") if in_gan else ())
    cfg.loss.gan_start_steps = gan_start
