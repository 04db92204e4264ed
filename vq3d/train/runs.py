"""Run folders shared by both stages: the resolved config beside the outputs, resume rules,
and loading a trained Stage-1 model back for evaluation, tokens, generation and the viewer.

    RUN/config.yaml          resolved config (written at start)
    RUN/checkpoints/...      safetensors checkpoints (vq3d.train.checkpoint)
    RUN/metrics.jsonl        one JSON line per logged step (vq3d.train.logger)
    RUN/class_index.json     class name -> id, when the data has classes
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from vq3d.config import Config, ConfigError, apply_overrides, from_dict, save_config
from vq3d.errors import UserError
from vq3d.train.checkpoint import latest_checkpoint, load_checkpoint


def read_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a vq3d run folder (no config.yaml): pass the --out of a training run")
    try:
        return from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ConfigError) as err:
        raise UserError(f"{path} is not a valid vq3d config: {err}") from None


def prepare_run(run_dir: str | Path, cfg: Config, resume: bool, overrides: list[str] = (),
                check_resumed: Callable[[Config], None] | None = None) -> tuple[Config, int]:
    """Create or reopen a run folder. Returns (config to use, step to start from).

    A fresh run refuses a folder that already holds checkpoints (use --resume). A resumed run
    uses the config saved in the folder, with the user's --set overrides applied on top;
    `check_resumed` may refuse that config (raising) before anything in the folder is written. A run
    asked to resume that has no checkpoint yet (killed before its first, or never started) starts
    at step 0, saying so: with the config it was started with when the folder holds one, else
    with `cfg`. So a script may always pass --resume.
    """
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume and ckpt is None:
        saved = (run_dir / "config.yaml").is_file()
        print(f"{run_dir}: no checkpoint to resume yet; starting the run at step 0"
              f"{' with its saved config' if saved else ''}", file=sys.stderr)
        cfg = apply_overrides(read_run_config(run_dir), list(overrides)) if saved else cfg
        start = 0
    elif resume:
        cfg = apply_overrides(read_run_config(run_dir), list(overrides))
        if check_resumed is not None:
            check_resumed(cfg)
        start = int(load_state_only(ckpt)["step"])
    else:
        if ckpt is not None:
            raise UserError(f"{run_dir} already holds a run (checkpoint {ckpt.name}): pass --resume to "
                            "continue it, or choose another --out")
        start = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return cfg, start


def load_state_only(ckpt: Path) -> dict:
    import json

    return json.loads((ckpt / "state.json").read_text())


def is_run_folder(path: str | Path) -> bool:
    """A training run's folder (its resolved config.yaml), as opposed to an exported model."""
    return (Path(path) / "config.yaml").is_file()


def load_stage1(run_dir: str | Path, device: torch.device | str = "cpu", use_ema: bool = True):
    """A trained `Stage1Model` (eval mode) and its config from a run folder (EMA weights if
    saved), an exported folder (`vq3d export-run`) or a hub id in the local cache."""
    from vq3d.models.stage1 import Stage1Model

    if not is_run_folder(run_dir):
        from vq3d.models.hub import hub_folder

        model = Stage1Model.from_pretrained(hub_folder(run_dir))  # a folder, or the cache: UserError if neither
        return model.to(device).eval(), model.cfg
    cfg = read_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir} has no checkpoint yet: train it first (vq3d train stage1)")
    model = Stage1Model(cfg)
    name = "ema" if use_ema and (ckpt / "ema.safetensors").is_file() else "model"
    load_checkpoint(ckpt, {name: model}, restore_rng=False)
    return model.to(device).eval(), cfg
