"""`vq3d train stage1|stage2 ...`: train (or resume) a model in a run folder."""

from __future__ import annotations

import argparse
import json
import sys

from vq3d.cli import add_config_args, config_from_args
from vq3d.errors import UserError


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides plus the shorthand flags, in the form `section.key=value` (a fresh Stage-1
    run's --steps is applied by `_scaled_to_steps`; a resumed one keeps its plan and only moves
    its end)."""
    extra = []
    if args.steps is not None and (args.section == "stage2" or args.resume):
        extra.append(f"{args.section}.steps={args.steps}")
    if args.steps is not None:
        extra.append("train.fit_to_time=false")  # steps asked for are kept, not fitted to --max-minutes
    if args.max_minutes is not None:
        extra.append(f"train.max_minutes={args.max_minutes}")
    if getattr(args, "data", None):
        extra.append(f"data.path={args.data}")
    return list(args.overrides) + extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train Stage 1 (autoencoder) or Stage 2 (GPT)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    s1 = stages.add_parser("stage1", help="the 3D-aware VQ autoencoder (paper Sec. 3.2)")
    add_config_args(s1, default_preset=None)
    s1.add_argument("--data", help="dataset folder, file list or shards (data.path)")
    s1.add_argument("--out", required=True, help="run folder (checkpoints, logs, config)")
    s1.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s1.add_argument("--steps", type=int,
                    help="total steps: the schedule (GAN start, warm-ups, decay) scaled to them (with "
                         "--resume: only the end moves); kept as given, not fitted to --max-minutes")
    s1.add_argument("--max-minutes", type=float, help="stop and checkpoint after this long (train.max_minutes)")
    s1.set_defaults(func=_stage1, section="train")
    s2 = stages.add_parser("stage2", help="the autoregressive GPT over Stage-1 tokens")
    add_config_args(s2, default_preset=None)
    s2.add_argument("--stage1", help="the Stage-1 run the tokens came from (checked against the tokens)")
    s2.add_argument("--tokens", required=True, help="token folder written by `vq3d tokens`")
    s2.add_argument("--out", required=True, help="run folder (checkpoints, logs, config)")
    s2.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s2.add_argument("--steps", type=int, help="total steps (stage2.steps)")
    s2.add_argument("--max-minutes", type=float, help="stop and checkpoint after this long (train.max_minutes)")
    s2.set_defaults(func=_stage2, section="stage2")


def _stage1(args: argparse.Namespace) -> int:
    from vq3d.train.stage1 import train_stage1

    if args.resume and not _resumable(args.out):
        args.resume = False  # nothing saved yet: a fresh run from the command line (prepare_run says so)
        starting_fresh = True
    else:
        starting_fresh = False
    overrides = _run_overrides(args)
    args.overrides = overrides
    cfg = config_from_args(args)  # on --resume the run's saved config is used instead (plus --set)
    if starting_fresh:
        print(f"{args.out}: no checkpoint or config to resume; starting a new run", file=sys.stderr)
    if args.steps is not None and not args.resume:
        _scaled_to_steps(cfg, args.steps, args.overrides)
    logs = train_stage1(cfg, args.out, resume=args.resume, overrides=overrides)
    print(json.dumps({k: v for k, v in logs.items()}, default=str), file=sys.stderr)
    return 0


def _resumable(out: str) -> bool:
    """Whether --resume has something to continue: a checkpoint, or the config a run killed
    before its first checkpoint was started with (vq3d.train.runs.prepare_run)."""
    from pathlib import Path

    from vq3d.train.checkpoint import latest_checkpoint

    run = Path(out)
    return run.is_dir() and (latest_checkpoint(run) is not None or (run / "config.yaml").is_file())


def _scaled_to_steps(cfg, steps: int, overrides: list[str]) -> None:
    """--steps N for Stage 1: the preset's (or config's) schedule shape scaled to N steps, as a
    run fitted to its minutes does (`vq3d.train.planner.scale_schedule`); fields given with
    --set keep their values."""
    from vq3d.train.planner import scale_schedule

    if steps < 1:
        raise UserError(f"--steps {steps}: need at least 1")
    keep = tuple(item.split("=", 1)[0].strip() for item in overrides if "=" in item)
    if "train.steps" in keep:
        raise UserError("give the number of steps once: --steps N or --set train.steps=N")
    scale_schedule(cfg, steps, keep)


def _stage2(args: argparse.Namespace) -> int:
    from vq3d.train.stage2 import train_stage2

    overrides = _run_overrides(args)
    args.overrides = overrides
    if args.preset is None and not args.config and args.stage1:
        from vq3d.models.hub import hub_folder, read_hub_config
        from vq3d.train.runs import is_run_folder, read_run_config

        # the Stage-1 model's preset by default
        args.preset = (read_run_config(args.stage1) if is_run_folder(args.stage1) else
                       read_hub_config(hub_folder(args.stage1), "stage1")[0]).preset
    cfg = config_from_args(args)
    logs = train_stage2(cfg, args.tokens, args.out, resume=args.resume, overrides=overrides,
                        stage1_run=args.stage1)
    print(json.dumps(logs, default=str), file=sys.stderr)
    return 0
