"""Run by tests/test_stage1_torchrun.py under `torchrun --nproc_per_node 2`: trains the `tiny`
Stage-1 preset for a few steps through the real entry point, then writes what each rank ended
with (weights of every module, the dataset indices it trained on) for the test to compare."""

import json
import os
import sys

import torch
from safetensors.torch import save_file

from torchrun_launch import dump_stacks_if_hung
from vq3d.config import load_config
from vq3d.train import stage1

data, run, record = sys.argv[1], sys.argv[2], sys.argv[3]
dump_stacks_if_hung()
torch.set_num_threads(1)
seen: list[int] = []
trainers: list[stage1.Stage1Trainer] = []
original_step = stage1.Stage1Trainer.train_step
original_init = stage1.Stage1Trainer.__init__


def recording_step(self, batch):
    seen.extend(int(i) for i in batch["index"])
    return original_step(self, batch)


def recording_init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    trainers.append(self)


stage1.Stage1Trainer.train_step = recording_step
stage1.Stage1Trainer.__init__ = recording_init
cfg = load_config("tiny", [], [f"data.path={data}", "train.device=cpu", "train.steps=3", "train.ckpt_every=100",
                               "loss.gan_start_steps=0", "loss.r1_every=2"])
stage1.train_stage1(cfg, run)
rank = int(os.environ["RANK"])
trainer = trainers[0]
tensors = {f"{name}.{k}": v.detach().contiguous().clone()
           for name, module in trainer._modules().items() for k, v in module.state_dict().items()}
save_file(tensors, os.path.join(record, f"rank{rank}.safetensors"))
with open(os.path.join(record, f"rank{rank}.json"), "w") as f:
    json.dump({"indices": seen, "world_size": trainer.info.world_size}, f)
