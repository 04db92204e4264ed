"""What both stages' trainers share: the device and process group, seeding, bf16 autocast, the
DDP wrapper, checkpoints (saved on rank 0, then a barrier), the run logger and run control.

    core = TrainerCore(cfg, run_dir, start_step)
    forward = core.wrap(model)
    state = core.restore({"gpt": model}, {"opt": opt})   # {} on a fresh run
    with core.logger() as logger, core.run_control(steps, "stage2") as rc:
        while not rc.should_stop(step):
            with core.autocast: ...
            core.save(step, {"gpt": model}, {"opt": opt})

Each stage keeps only its own step (what it computes and updates) and its own evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vq3d.config import Config
from vq3d.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from vq3d.train.distributed import barrier, setup_distributed, wrap_ddp
from vq3d.train.logger import RunLogger
from vq3d.train.run_control import RunControl


class TrainerCore:
    """The run-level machinery of one training process (one rank)."""

    def __init__(self, cfg: Config, run_dir: str | Path, start_step: int = 0) -> None:
        self.cfg, self.run_dir, self.start_step = cfg, Path(run_dir), start_step
        self.info = setup_distributed(cfg.train.device, backend=cfg.train.dist_backend)
        self.device = self.info.device
        seed_everything(cfg.train.seed + self.info.rank)
        # bf16 autocast on the step's device (CPU or CUDA) when asked for: the precision policy
        # keeps geometry fp32 (vq3d/precision.py)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.train.precision == "bf16")

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` under DistributedDataParallel when several ranks run, else itself."""
        return wrap_ddp(model, self.info)

    def restore(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Load the run's latest checkpoint into `modules` and `optimizers` when resuming; returns
        its plain state ({} on a fresh run)."""
        if self.start_step <= 0:
            return {}
        return load_checkpoint(self.run_dir, modules, optimizers)

    def save(self, step: int, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             state: dict[str, Any] | None = None) -> None:
        """A checkpoint of step `step`, written atomically by rank 0; every rank waits for it."""
        if self.is_main:
            save_checkpoint(self.run_dir, step, modules, optimizers, state=state,
                            keep=self.cfg.train.keep_checkpoints)
        barrier()

    def logger(self) -> RunLogger:
        """metrics.jsonl and TensorBoard, written by rank 0. What an earlier attempt logged after
        the step this one starts from (0 for a run killed before its first checkpoint) is dropped,
        so a curve never holds a stretch twice."""
        return RunLogger(self.run_dir, enabled=self.is_main, resume_step=self.start_step)

    def run_control(self, total_steps: int, desc: str, sync_every: int = 10) -> RunControl:
        """The step bound, `train.max_minutes`, signals, divergence checks and the progress bar."""
        t = self.cfg.train
        return RunControl(total_steps, t.max_minutes, self.start_step, t.max_bad_steps,
                          show_progress=self.is_main, desc=desc, sync_every=sync_every)
