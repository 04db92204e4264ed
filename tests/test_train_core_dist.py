"""Trainer core under a real 2-process gloo group (CPU), started with `torchrun`.

The ranks run tests/torchrun_collectives_worker.py. They used to be forked from a forkserver that
had imported torch; that hung in CI (twice, never on a dev machine), so each rank is now a fresh
interpreter, as under the Stage-1 torchrun test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchrun_collectives_worker import LR, STEPS, initial_model, rank_data
from torchrun_launch import run_two_ranks

WORKER = Path(__file__).with_name("torchrun_collectives_worker.py")


def test_two_gloo_ranks_train_identical_weights_and_agree(tmp_path):
    run_two_ranks(WORKER, [str(tmp_path)], timeout_s=180)
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
        assert r["info"] == [rank, 2, rank == 0]
        assert r["mean"] == [0.5, 1.0]
        assert r["metrics"] == {"a": 0.5, "b": 4.0}
        assert r["any"] == [True, False]
        assert r["broadcast"] == {"from": 0}
        assert r["stops"] == [False, True]  # both ranks stop together, at the synced step
        assert r["finite"] is False  # both ranks skip when one saw a NaN
    saved = load_file(str(tmp_path / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert set(saved) == {"weight", "bias"}  # no "module." prefix from DDP
    assert torch.equal(saved["weight"], w0["weight"])


def test_ranks_sharing_one_gpu_talk_gloo_and_nccl_is_refused_there():
    from vq3d.errors import UserError
    from vq3d.train.distributed import choose_backend

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert choose_backend("auto", cuda, shared_gpu=False) == "nccl"  # a GPU per rank
    assert choose_backend("auto", cuda, shared_gpu=True) == "gloo"  # train.device=cuda:0 for every rank
    assert choose_backend("auto", cpu, shared_gpu=False) == "gloo"
    assert choose_backend("gloo", cuda, shared_gpu=False) == "gloo"
    for device, shared in ((cuda, True), (cpu, False)):
        with pytest.raises(UserError, match="one GPU per rank"):
            choose_backend("nccl", device, shared_gpu=shared)
    with pytest.raises(UserError, match="unknown train.dist_backend"):
        choose_backend("mpi", cpu, shared_gpu=False)
