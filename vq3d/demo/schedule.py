"""The demo's schedule: estimates of every phase, the training budgets, and keeping to the total.

At the start (`make_plan`): measure unit costs, estimate the fixed phases, shrink their counts
when they would take more than `plan.FIXED_SHARE` of the budget, and split what is left between
the two training stages. While running (`before_fixed_phase` / `after_fixed_phase`): the ratio of
measured to estimated time of the fixed phases so far (a busy machine) scales the estimates of
those still to come; when they no longer fit in the time left, the counts of the remaining phases
shrink again, and optional metric phases are skipped (a rerun with more --minutes adds them).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from vq3d.config import Config
from vq3d.data.raycast import SHAPES
from vq3d.data.synthetic_writer import split_counts
from vq3d.demo import plan
from vq3d.demo.optional import OPTIONAL_PHASES, OptionalSizes, estimate_seconds, time_boxed_seconds
from vq3d.demo.progress import PhaseDisplay, clock
from vq3d.demo.state import DemoLayout, finished, read_json
from vq3d.errors import UserError
from vq3d.utils.io import atomic_write_json

TRAINING = ("stage1", "stage2")
SLOWDOWN_RANGE = (0.5, 4.0)  # the measured/estimated ratio is clamped to this range
SELF_TIMED_PHASES = ("synth", "report")  # not estimated from the model's unit costs: no slowdown from them


class Schedule:
    """Estimates, effective sizes and training budgets of one demo run."""

    def __init__(self, layout: DemoLayout, cfg: Config, settings: dict[str, Any], optional: OptionalSizes,
                 names: list[str], display: PhaseDisplay) -> None:
        self.layout, self.cfg, self.settings, self.names, self.display = layout, cfg, settings, names, display
        self.total_seconds = settings["minutes"] * 60.0
        self.reserve = plan.reserve_seconds(self.total_seconds)
        # effective sizes of the fixed phases (shrunk when the budget is short)
        self.sizes = {k: settings[k] for k in ("eval_scenes", "recon_scenes", "samples_per_class", "frames")}
        self.optional = optional
        self.costs: plan.UnitCosts | None = None
        self.slowdown = 1.0
        self._measured: dict[str, tuple[float, float]] = {}  # phase -> (seconds, estimate)
        self.planned: dict[str, float] = {}

    # -- estimates -----------------------------------------------------------------------------

    def estimates(self) -> dict[str, float]:
        """Seconds of every fixed phase at the effective sizes, times the slowdown (but the part its
        own clock bounds); 0 when finished."""
        s, eff, r, costs = self.settings, self.sizes, self.cfg.render, self.costs
        card = read_json(self.layout.data / "dataset.json") or {}
        sizes = plan.DemoSizes(
            n_scenes=s["n_scenes"], resolution=s["resolution"], views=s["views"],
            eval_scenes=eff["eval_scenes"], recon_scenes=eff["recon_scenes"],
            generated=len(SHAPES) * eff["samples_per_class"], classes=len(SHAPES), frames=eff["frames"],
            mesh_resolution=s["mesh_resolution"],
            samples_per_ray=sum(r.proposal_samples) + r.nerf_samples, synth_done=int(card.get("n_scenes", 0)))
        fixed = plan.estimate_fixed_seconds(sizes, costs) if costs else {}
        out = {}
        for name in self.names:
            if name in TRAINING:
                continue
            if name == "report":
                out[name] = plan.REPORT_SECONDS
            elif finished(self.layout, name) is not None or costs is None:
                out[name] = 0.0
            else:
                base = (fixed[name] if name in fixed else
                        estimate_seconds(name, self.optional, costs, s["n_scenes"], s["views"]))
                boxed = time_boxed_seconds(name, self.optional)
                out[name] = (base - boxed) * self.slowdown + boxed
        return out

    def _publish(self, estimates: dict[str, float]) -> None:
        for name, seconds in estimates.items():
            if name not in self.display.finished:
                self.display.set_estimate(name, seconds)

    def fixed_left(self) -> float:
        """Estimated seconds of the fixed phases that have not run yet."""
        return sum(self.display.estimates[n] for n in self.names
                   if n not in TRAINING and n not in self.display.finished)

    def _effective(self) -> dict[str, Any]:
        o = self.optional
        return {**self.sizes, "generation_n": o.generation_n, "radius_n": o.radius_n,
                "features_minutes": o.features_minutes}

    def shrink(self, estimates: dict[str, float], available: float, share: float,
               exclude: tuple[str, ...] = ()) -> dict[str, float]:
        """Shrink the counts of the phases still to run so that the fixed phases (but `exclude`)
        fit in `share` of `available` seconds: first the metrics' scene and sample counts, then
        the page's reconstructions, samples and orbit frames, each down to a floor. Returns the
        new estimates (of every phase)."""
        before = self._effective()
        estimates = {n: v for n, v in estimates.items() if n not in exclude}
        factor = plan.scale_factor(estimates, available, share, plan.METRIC_PHASES)
        if factor < 1.0:
            n_test = split_counts(self.settings["n_scenes"])[1]
            eval_n = n_test if self.sizes["eval_scenes"] == 0 else min(self.sizes["eval_scenes"], n_test)
            self.sizes["eval_scenes"] = plan.scaled(eval_n, factor, 10)
            o = self.optional
            self.optional = replace(o, generation_n=plan.scaled(o.generation_n, factor, 8),
                                    radius_n=plan.scaled(o.radius_n, factor, 2),
                                    features_minutes=round(min(o.features_minutes,
                                                               max(0.1, o.features_minutes * factor)), 3))
            estimates = {n: v for n, v in self.estimates().items() if n not in exclude}
        factor = plan.scale_factor(estimates, available, share, plan.VISUAL_PHASES)
        if factor < 1.0:
            self.sizes.update(recon_scenes=plan.scaled(self.sizes["recon_scenes"], factor, 1),
                              samples_per_class=plan.scaled(self.sizes["samples_per_class"], factor, 1),
                              frames=plan.scaled(self.sizes["frames"], factor, 6))
        after = self._effective()
        changed = ", ".join(f"{k} {before[k]} -> {after[k]}" for k in after if after[k] != before[k])
        if changed:
            self.display.write(f"time budget: fixed phases scaled down to fit ({changed})")
        return self.estimates()

    # -- the plan ------------------------------------------------------------------------------

    def make_plan(self) -> dict[str, Any]:
        """Measure unit costs, estimate the fixed phases (shrunk to their share), split the rest
        between the training stages; UserError when --minutes cannot fit both. Returns the plan."""
        todo = [n for n in self.names if n != "report" and finished(self.layout, n) is None]
        self.costs = plan.probe_costs(self.cfg, self.settings["device"], views=self.settings["views"]) if todo else None
        estimates = self.estimates()
        if self.costs is not None:
            estimates = self.shrink(estimates, self.seconds_left(), plan.FIXED_SHARE)
        self._publish(estimates)
        self.planned = {name: self.training_budget(name) for name in TRAINING}
        for name, seconds in self.planned.items():
            self.display.set_estimate(name, seconds + (plan.TRAIN_OVERHEAD_SECONDS if seconds else 0.0))
        self._check_budgets()
        return {"total_seconds": self.total_seconds, "reserve_seconds": self.reserve,
                "stage1_fraction": self.settings["stage1_fraction"],
                "fixed_seconds": {n: round(v, 1) for n, v in estimates.items()},
                "training_seconds": {n: round(b, 1) for n, b in self.planned.items()},
                "sizes": {**self.sizes, **asdict(self.optional)},
                "unit_costs": self.costs.as_dict() if self.costs else None}

    def describe(self, info: dict[str, Any]) -> str:
        fixed = ", ".join(f"{n} {clock(s)}" for n, s in info["fixed_seconds"].items() if s > 0)
        t, f = info["training_seconds"], info["stage1_fraction"]
        return (f"plan for {clock(self.total_seconds)}: fixed phases "
                f"~{clock(sum(info['fixed_seconds'].values()))} ({fixed}); training: stage 1 "
                f"{clock(t['stage1'])}, stage 2 {clock(t['stage2'])} (split {f:.0%}/{1 - f:.0%} of what the "
                f"fixed phases leave); reserve {clock(self.reserve)}")

    def _check_budgets(self) -> None:
        floor = plan.MIN_TRAIN_MINUTES * 60.0
        short = [n for n, b in self.planned.items() if finished(self.layout, n) is None and b < floor
                 and self.settings[f"{n}_steps"] is None and self.settings[f"{n}_minutes"] is None]
        if not short:
            return
        fraction = min(self.settings["stage1_fraction"], 1 - self.settings["stage1_fraction"])
        fixed = self.fixed_left() + 2 * plan.TRAIN_OVERHEAD_SECONDS + floor / max(fraction, 1e-3)
        needed = (max(fixed + 10.0, fixed / 0.97) + self.display.elapsed()) / 60.0  # from the budget's start
        raise UserError(
            f"--minutes {self.settings['minutes']:g} is too short: the fixed phases need about "
            f"{clock(self.fixed_left())} (mm:ss) on this machine, leaving under "
            f"{plan.MIN_TRAIN_MINUTES:g} min for {' and '.join(short)}; pass --minutes "
            f"{max(1.0, -(-needed * 2) // 2):g} or more, or fewer --scenes")

    # -- training budgets ----------------------------------------------------------------------

    def remaining(self, name: str) -> float | None:
        """Seconds a training stage that is part-way still has, or None when it has not started."""
        partial = read_json(self.layout.partial(name))
        return None if partial is None else max(0.0, partial["budget_seconds"] - partial["spent_seconds"])

    def seconds_left(self) -> float:
        return self.total_seconds - self.display.elapsed() - self.reserve

    def training_budget(self, name: str) -> float:
        """Seconds of training `name` gets if it starts now (0 when it is finished).

        A stage part-way keeps what is left of its budget; an explicit --stageN-minutes wins;
        otherwise the other stage's need is set aside, or, when neither has started, what the
        fixed phases leave is split `stage1_fraction` : (1 - `stage1_fraction`)."""
        if finished(self.layout, name) is not None:
            return 0.0
        remaining = self.remaining(name)
        if remaining is not None:
            return remaining
        if self.settings[f"{name}_minutes"] is not None:
            return self.settings[f"{name}_minutes"] * 60.0
        left = self.seconds_left() - self.fixed_left()
        overhead = plan.TRAIN_OVERHEAD_SECONDS
        other = "stage2" if name == "stage1" else "stage1"
        if finished(self.layout, other) is not None:
            return left - overhead
        other_remaining = self.remaining(other)
        if other_remaining is not None:
            return left - 2 * overhead - other_remaining
        if self.settings[f"{other}_minutes"] is not None:
            return left - 2 * overhead - self.settings[f"{other}_minutes"] * 60.0
        fraction = self.settings["stage1_fraction"]
        return (fraction if name == "stage1" else 1.0 - fraction) * (left - 2 * overhead)

    def start_training(self, name: str) -> float:
        """This run's training seconds for `name`, recorded in its partial file (a rerun of a
        killed demo continues the same budget). Below the floor: the floor, with a warning."""
        partial = read_json(self.layout.partial(name))
        if partial is None:
            budget = self.training_budget(name)
            floor = plan.MIN_TRAIN_MINUTES * 60.0
            if budget < floor:
                self.display.write(f"{self.display.titles[name]}: the time budget leaves "
                                   f"{clock(max(budget, 0))}; training {clock(floor)} anyway (the demo runs "
                                   "over its budget)")
                budget = floor
            partial = {"budget_seconds": budget, "spent_seconds": 0.0, "spent_before": 0.0, "commands": []}
        else:
            partial["spent_before"] = partial["spent_seconds"]
        atomic_write_json(self.layout.partial(name), partial)
        left = max(0.0, partial["budget_seconds"] - partial["spent_seconds"])
        self.display.set_estimate(name, left + plan.TRAIN_OVERHEAD_SECONDS)
        return left

    def _training_ahead(self) -> float:
        """Seconds the training stages not yet finished are still expected to take."""
        total = 0.0
        for name in TRAINING:
            if finished(self.layout, name) is None:
                remaining = self.remaining(name)
                total += (remaining if remaining is not None else self.planned.get(name, 0.0))
                total += plan.TRAIN_OVERHEAD_SECONDS
        return total

    # -- keeping to the budget while running ---------------------------------------------------

    def before_fixed_phase(self, name: str) -> bool:
        """Whether fixed phase `name` runs now. An optional phase runs when it fits in the time
        left together with the core phases after it; a core phase always runs, but when the
        core phases left no longer fit, their counts shrink first."""
        if self.costs is None or name == "report":
            return True
        available = self.seconds_left() - self._training_ahead()
        pending = [n for n in self.names if n not in TRAINING and n not in self.display.finished]
        core_need = sum(self.display.estimates[n] for n in pending if n not in OPTIONAL_PHASES)
        if name in OPTIONAL_PHASES:
            return core_need + self.display.estimates[name] <= available
        if core_need > available:
            estimates = self.shrink(self.estimates(), max(available, 0.0), 1.0,
                                    exclude=tuple(OPTIONAL_PHASES))
            self._publish(estimates)
        return True

    def after_fixed_phase(self, name: str, seconds: float) -> None:
        """Update the slowdown (measured / estimated time of this run's fixed phases so far) and
        re-estimate the phases still to come with it."""
        estimate = self.display.estimates.get(name, 0.0) / self.slowdown
        # the synth phase is timed by its own probe (numpy ray casting and file writes), so its
        # error says nothing of the model phases: counted, it once scaled them all by 1.75 and
        # took 48 s from Stage 1, whose budget is set right after it; a phase bound mostly by its
        # own clock (the feature net's minutes) says little of them either
        if name in SELF_TIMED_PHASES or time_boxed_seconds(name, self.optional) > 0 or estimate <= 0:
            return
        self._measured[name] = (seconds, estimate)
        measured = sum(m for m, _ in self._measured.values())
        estimated = sum(e for _, e in self._measured.values())
        if estimated >= 5.0:  # too little to judge from before that
            lo, hi = SLOWDOWN_RANGE
            self.slowdown = min(hi, max(lo, measured / estimated))
            self._publish(self.estimates())
