"""Run by tests/test_train_core_dist.py under `torchrun --nproc_per_node 2`: a few DDP steps of a
linear model and every collective helper of `vq3d.train.distributed`, then writes what each rank
ended with (weights, the helpers' results) for the test to compare."""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from torchrun_launch import dump_stacks_if_hung
from vq3d.train.checkpoint import save_checkpoint
from vq3d.train.distributed import (
    all_reduce_mean,
    any_rank,
    barrier,
    broadcast_object,
    cleanup,
    reduce_metrics,
    setup_distributed,
    wrap_ddp,
)
from vq3d.train.run_control import RunControl

STEPS, BATCH, LR = 3, 4, 0.1


def rank_data(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(BATCH, 3, generator=g), torch.randn(BATCH, 1, generator=g)


def initial_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def main(out_dir: str) -> None:
    dump_stacks_if_hung()
    torch.set_num_threads(1)
    info = setup_distributed("cpu", timeout_s=60)
    rank = info.rank
    try:
        model = initial_model()
        if rank == 1:  # DDP must broadcast rank 0's weights at wrap time
            nn.init.zeros_(model.weight)
        ddp = wrap_ddp(model, info)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        for step in range(STEPS):
            x, y = rank_data(rank, step)
            loss = (ddp(x) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rc = RunControl(100, show_progress=False, install_signals=False, sync_every=2)
        if rank == 1:
            rc.signal_received = 15  # only rank 1 "got" SIGTERM
        stops = [rc.should_stop(1), rc.should_stop(2)]  # synced at steps divisible by 2
        finite = rc.record_loss(float("nan") if rank == 1 else 1.0, step=0)
        rc.close()
        results = {
            "info": [info.rank, info.world_size, info.is_main],
            "mean": all_reduce_mean(torch.tensor([float(rank), 2.0 * rank])).tolist(),
            "metrics": reduce_metrics({"a": float(rank), "b": torch.tensor(4.0)}),
            "any": [any_rank(rank == 1), any_rank(False)],
            "broadcast": broadcast_object({"from": rank}),
            "stops": stops,
            "finite": finite,
        }
        if info.is_main:
            save_checkpoint(out_dir, STEPS, {"model": ddp}, rng=False)
        barrier()
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(out_dir, f"rank{rank}.safetensors"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        # both ranks idle before either tears gloo down: a rank that exits while its peer still
        # writes can abort that peer's gloo threads ("terminate called without an active exception")
        barrier()
    except BaseException:
        cleanup()
        raise
    # Every rank has passed the last barrier with its files written. A rank still aborted once
    # with the same message in a clean-clone CI run (2026-12-06), so a rank that got here leaves
    # without tearing gloo down: what this test checks is already on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
