"""Evaluation phases the demo runs only when their modules are present.

`vq3d.eval.train_features`, `vq3d.eval.generation` and `vq3d.eval.radius` are optional for the
demo: each phase below is listed (and run) when its import succeeds. Only the import is guarded;
an error inside a call is a real error and stops the demo.

Results land where the page looks for them:
  DIR/features/                      the domain feature net (feature_net_info.json)
  DIR/eval/generation.json           "Generation metrics" section
  DIR/eval/radius/radius.csv, *.png  "Metrics vs sampling radius" section (DIR/eval/radius.json: the summary)
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vq3d.data.synthetic_writer import split_counts
from vq3d.demo.plan import LOAD_SECONDS
from vq3d.utils.io import atomic_write_json


@dataclass
class OptionalSizes:
    """How much work the optional phases do."""

    features_steps: int | None = None  # None: train_features' default
    features_minutes: float = 0.5
    generation_n: int = 50  # reconstructions and samples scored
    radius_n: int = 16  # scenes and samples per radius
    radii: tuple[float, ...] = (0.0, 0.15, 0.3, 0.45, 0.6)


def _train_features() -> Callable | None:
    try:
        from vq3d.eval.train_features import train_features
    except ImportError:
        return None
    return train_features


def _evaluate_generation() -> Callable | None:
    try:
        from vq3d.eval.generation import evaluate_generation
    except ImportError:
        return None
    return evaluate_generation


def _evaluate_radius() -> Callable | None:
    try:
        from vq3d.eval.radius import evaluate_radius
    except ImportError:
        return None
    return evaluate_radius


# name -> (title, importer)
OPTIONAL_PHASES = {
    "features": ("train feature net", _train_features),
    "eval_generation": ("generation metrics", _evaluate_generation),
    "eval_radius": ("metrics vs radius", _evaluate_radius),
}


def available_phases() -> list[tuple[str, str]]:
    """(name, title) of the optional phases whose module imports, in run order."""
    return [(name, title) for name, (title, importer) in OPTIONAL_PHASES.items() if importer() is not None]


def estimate_seconds(name: str, sizes: OptionalSizes, costs: Any, n_scenes: int, views: int) -> float:
    """Rough seconds of an optional phase from the unit costs of `plan.probe_costs`: the images it
    reads, renders, encodes and samples (batched, as the evaluations run them)."""
    n_train, n_test = split_counts(n_scenes)
    if name == "features":  # every view of the training scenes, the canonical views of the held-out
        loading = n_train * costs.scene_read + n_test * costs.canonical_read
        return LOAD_SECONDS + loading + sizes.features_minutes * 60.0
    if name == "eval_generation":  # s1: read + encode + canonical + novel; s2: sample + canonical + novel
        per_scene = costs.scene_read + costs.encode + 4 * costs.render_batched + costs.sample_batched
        return LOAD_SECONDS + sizes.generation_n * per_scene
    if name == "eval_radius":  # at each radius: the model's render and an exact ray-cast ground truth
        # of each Stage-1 scene (a view's share of a synthetic scene's cost), a sample's render
        ray_cast = costs.synth_scene / (1 + views)
        per_radius = 2 * costs.render_batched + ray_cast
        return LOAD_SECONDS + sizes.radius_n * (len(sizes.radii) * per_radius + costs.canonical_read
                                                + costs.sample_batched)
    raise KeyError(name)


def time_boxed_seconds(name: str, sizes: OptionalSizes) -> float:
    """The part of an optional phase's estimate that its own clock bounds (the feature net trains
    for at most `features_minutes`): a busy machine does not lengthen it."""
    return sizes.features_minutes * 60.0 if name == "features" else 0.0


def run_optional(name: str, layout: Any, sizes: OptionalSizes, seed: int, device: str,
                 progress: bool) -> tuple[dict[str, Any], list[str]]:
    """Run optional phase `name`; returns (result summary, equivalent commands)."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    features = feature_dir(layout)
    feature_args = f" --features {q(layout.features)}" if features else ""
    if name == "features":
        train_features = _train_features()
        info = train_features(layout.data, layout.features, steps=sizes.features_steps,
                              minutes=sizes.features_minutes, seed=seed, device=device, progress=progress)
        steps = f" --steps {sizes.features_steps}" if sizes.features_steps else ""
        return ({k: info[k] for k in ("heldout_accuracy",) if k in info},
                [f"vq3d eval train-features --data {q(layout.data)} --out {q(layout.features)}{steps} "
                 f"--minutes {sizes.features_minutes:g} --seed {seed}"])
    if name == "eval_generation":
        evaluate_generation = _evaluate_generation()
        metrics = evaluate_generation(layout.stage1, layout.data, stage2_run=layout.stage2,
                                      n=sizes.generation_n, features=features, device=device, seed=seed,
                                      progress=progress)
        path = layout.eval / "generation.json"
        atomic_write_json(path, _plain(metrics))
        return ({"file": str(path)},
                [f"vq3d eval generation --stage1 {q(layout.stage1)} --stage2 {q(layout.stage2)} "
                 f"--data {q(layout.data)} --n {sizes.generation_n}{feature_args} --seed {seed} --json "
                 f"> {q(path)}"])
    if name == "eval_radius":
        evaluate_radius = _evaluate_radius()
        out = layout.eval / "radius"
        result = evaluate_radius(layout.stage1, layout.data, list(sizes.radii), out,
                                 stage2_run=layout.stage2, n=sizes.radius_n, features=features,
                                 device=device, seed=seed, progress=progress)
        atomic_write_json(layout.eval / "radius.json", _plain(result))
        radii = ",".join(f"{r:g}" for r in sizes.radii)
        return ({"csv": str(result.get("csv", out / "radius.csv"))},
                [f"vq3d eval radius --stage1 {q(layout.stage1)} --stage2 {q(layout.stage2)} "
                 f"--data {q(layout.data)} --radii {radii} --out {q(out)} --n {sizes.radius_n}{feature_args} "
                 f"--seed {seed}"])
    raise KeyError(name)


def _plain(obj: Any) -> Any:
    """JSON-ready copy (paths and other objects become strings)."""
    return json.loads(json.dumps(obj, default=str))


def feature_dir(layout: Any) -> Path | None:
    """The feature net folder when one was trained."""
    return layout.features if (layout.features / "feature_net_info.json").is_file() else None
