"""Run by tests/test_stage1_torchrun.py under `torchrun --nproc_per_node 2`: 3 DDP steps of the
`tiny` preset with every ablation switch of the paper's Table 3, and one run in which rank 1
alone sees a non-finite loss at step 1 (a nan pixel: every loss of that rank's step is nan). Writes what each rank ended with for the test."""

import json
import os
import sys

import torch

from torchrun_launch import dump_stacks_if_hung
from vq3d.config import load_config
from vq3d.train import stage1
from vq3d.train.distributed import cleanup

ABLATIONS = {
    "full": [],
    "no_gan": ["loss.gan=0"],
    "no_scale": ["loss.scale=0"],
    "no_interlevel": ["loss.interlevel=0"],
    "no_nerf_losses": ["loss.distortion=0", "loss.interlevel=0"],
    "no_depth": ["loss.depth=0", "loss.scale=0"],
    "no_triplanes": ["model.representation=implicit"],
    "cnn": ["model.backbone=cnn"],
}

data, out_dir, record = sys.argv[1], sys.argv[2], sys.argv[3]
dump_stacks_if_hung()
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
original_step = stage1.Stage1Trainer.train_step
inject = {"on": False}


def step_with_a_nan_on_rank_1(self, batch):
    """A nan pixel in rank 1's images at step 1: its losses, render and discriminator go nan."""
    if inject["on"] and rank == 1 and self.step == 1:
        batch = dict(batch, image=batch["image"].clone())
        batch["image"][0, 0, 0, 0] = float("nan")
    return original_step(self, batch)


stage1.Stage1Trainer.train_step = step_with_a_nan_on_rank_1
base = [f"data.path={data}", "train.device=cpu", "train.steps=3", "train.ckpt_every=100", "train.log_every=1",
        "loss.gan_start_steps=0", "loss.r1_every=2"]
results = {}
for name, overrides in [*ABLATIONS.items(), ("nan_on_rank_1", [])]:
    inject["on"] = name == "nan_on_rank_1"
    run = os.path.join(out_dir, name)
    cfg, _ = stage1.prepare_run(run, load_config("tiny", [], base + overrides), False, [])
    trainer = stage1.Stage1Trainer(cfg, run)  # one process group for all runs (train_stage1 leaves it)
    last = trainer.train()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    results[name] = {"step": trainer.step, "skipped": int(trainer.guard.skipped),
                     "weights_sum": float(weights.double().sum()), "weights_abs": float(weights.double().abs().sum()),
                     "stop_reason": last.get("stop_reason") if rank == 0 else None}
with open(os.path.join(record, f"ablations_rank{rank}.json"), "w") as f:
    json.dump(results, f)
cleanup()
