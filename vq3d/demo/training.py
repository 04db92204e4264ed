"""The demo's two training phases: Stage 1 or 2 for a budget of seconds, resumed when a killed
demo left a checkpoint, with the equivalent `vq3d train` command line."""

from __future__ import annotations

import shlex
import shutil
import time
from typing import Any

from vq3d.config import load_config
from vq3d.demo.state import DemoLayout, read_json
from vq3d.utils.io import atomic_write_json

STAGE_SECTION = {"stage1": "train", "stage2": "stage2"}  # the config section of each stage's steps


def shell_quote(value: Any) -> str:
    return shlex.quote(str(value))


def record_spent(layout: DemoLayout, name: str, elapsed: float) -> None:
    """Training seconds spent so far (this run's `elapsed` on top of earlier runs'), for a rerun."""
    partial = read_json(layout.partial(name))
    if partial is not None:
        partial["spent_seconds"] = partial["spent_before"] + elapsed
        atomic_write_json(layout.partial(name), partial)


def _estimator_depth(layout: DemoLayout, seed: int) -> str:
    """Write (or complete) the estimator-like depth cache of the demo's scenes; its command."""
    from vq3d.data.pseudo_depth import Corruption, write_estimator_cache

    write_estimator_cache(layout.data, layout.depth, Corruption(seed=seed), progress=False)
    return (f"vq3d depth --data {shell_quote(layout.data)} --out {shell_quote(layout.depth)} --estimator-like "
            f"--seed {seed}")


def train_stage(layout: DemoLayout, name: str, seconds: float, settings: dict[str, Any],
                sets: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Train `name` ("stage1" or "stage2") for `seconds` (and the settings' steps, if any).

    Resumes from the run's checkpoint when there is one (a run killed before its first checkpoint
    starts over). The command line goes into the partial record at once, so a rerun keeps it.
    Returns (result, []) with the steps reached and why it stopped; KeyboardInterrupt when a
    signal stopped it (it checkpointed first)."""
    from vq3d.train.checkpoint import latest_checkpoint
    from vq3d.train.runs import load_state_only

    q, s = shell_quote, settings
    run = layout.stage1 if name == "stage1" else layout.stage2
    steps = s[f"{name}_steps"]  # None: each stage fits its steps to its minutes (train.fit_to_time)
    resume = run.is_dir() and latest_checkpoint(run) is not None
    step_arg = f" --steps {steps}" if steps is not None else ""
    depth_commands = []
    if name == "stage1":  # Stage 1 trains on estimator-like relative depth, as it would on photos
        started = time.monotonic()
        depth_commands = [_estimator_depth(layout, s["seed"])]
        seconds -= time.monotonic() - started  # part of the stage's budget (6 s for 4,000 scenes)
        sets = [*sets, f"data.depth_cache={layout.depth}"]
    minutes = max(seconds / 60.0, 0.01)
    run_sets = [f"train.max_minutes={minutes:.3f}"]
    run_sets += [f"{STAGE_SECTION[name]}.steps={steps}"] if steps is not None else []
    run_sets += ["train.fit_to_time=false"] if steps is not None else []
    if resume:
        command = f"vq3d train {name} --out {q(run)} --resume --max-minutes {minutes:.3f}{step_arg}"
    else:
        if run.exists():  # killed before its first checkpoint: nothing to keep
            shutil.rmtree(run)
        cfg_args = "".join(f" --config {q(f)}" for f in s["config_files"])
        set_args = "".join(f" --set {q(x)}" for x in sets)
        inputs = (f"--data {q(layout.data)}" if name == "stage1" else
                  f"--stage1 {q(layout.stage1)} --tokens {q(layout.tokens)}")
        command = (f"vq3d train {name} --preset {s['preset']}{cfg_args} {inputs} --out {q(run)} "
                   f"--max-minutes {minutes:.3f}{step_arg}{set_args}")
    # a resumed run reads its saved config and applies only `run_sets` on top
    cfg = load_config(s["preset"], s["config_files"], [*sets, f"data.path={layout.data}", *run_sets])
    partial = read_json(layout.partial(name))
    partial["commands"] = partial["commands"] + [c for c in depth_commands if c not in partial["commands"]] + [command]
    atomic_write_json(layout.partial(name), partial)
    if name == "stage1":
        from vq3d.train.stage1 import train_stage1

        logs = train_stage1(cfg, run, resume=resume, overrides=run_sets)
    else:
        from vq3d.train.stage2 import train_stage2

        logs = train_stage2(cfg, layout.tokens, run, resume=resume, overrides=run_sets,
                            stage1_run=layout.stage1)
    if logs.get("stop_reason") == "signal":
        raise KeyboardInterrupt  # the run checkpointed; a rerun of the demo resumes it
    step = int(load_state_only(latest_checkpoint(run))["step"])
    result = {"steps": step, "stop_reason": logs.get("stop_reason"),
              "budget_minutes": round(read_json(layout.partial(name))["budget_seconds"] / 60.0, 3),
              "last": {k: v for k, v in logs.items() if isinstance(v, (int, float))}}
    return result, []
