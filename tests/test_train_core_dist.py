"""Trainer core under a real 2-process gloo group (CPU), started with torch.multiprocessing.

The ranks fork from a fresh forkserver that has already imported torch and torch._dynamo (which
DDP imports when constructed): two spawned interpreters each importing it cost seconds more.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_data(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(BATCH, 3, generator=g), torch.randn(BATCH, 1, generator=g)


def initial_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = setup_distributed("cpu", timeout_s=60)
    try:
        assert (info.rank, info.world_size, info.is_main) == (rank, 2, rank == 0)
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
    finally:
        cleanup()


def test_two_gloo_ranks_train_identical_weights_and_agree(tmp_path):
    multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", __name__])
    ranks = mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False,
                               start_method="forkserver")
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for proc in ranks.processes:
                proc.kill()
            pytest.fail("the two gloo ranks did not finish in 120 s")
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k

    # reference: one process, the mean of both ranks' gradients (= loss over the union batch)
    model = initial_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        (x0, y0), (x1, y1) = rank_data(0, step), rank_data(1, step)
        loss = (model(torch.cat([x0, x1])) - torch.cat([y0, y1])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.allclose(w0[k], v, atol=1e-6), k

    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["mean"] == [0.5, 1.0]
        assert r["metrics"] == {"a": 0.5, "b": 4.0}
        assert r["any"] == [True, False]
        assert r["broadcast"] == {"from": 0}
        assert r["stops"] == [False, True]  # both ranks stop together, at the synced step
        assert r["finite"] is False  # both ranks skip when one saw a NaN
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert set(saved) == {"weight", "bias"}  # no "module." prefix from DDP
    assert torch.equal(saved["weight"], w0["weight"])
