"""`vq3d train stage1` under a real `torchrun --nproc_per_node 2` on CPU (gloo)."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vq3d.cli import main

from torchrun_launch import run_two_ranks

WORKER = Path(__file__).with_name("torchrun_stage1_worker.py")


def test_two_process_tiny_run_keeps_ranks_identical_splits_data_and_writes_one_checkpoint(tmp_path):
    data, run, record = tmp_path / "data", tmp_path / "run", tmp_path / "record"
    record.mkdir()
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "1", "--no-progress"]) == 0
    run_two_ranks(WORKER, [str(data), str(run), str(record)])

    w0, w1 = load_file(str(record / "rank0.safetensors")), load_file(str(record / "rank1.safetensors"))
    assert set(w0) == set(w1) and any(k.startswith("d_main.") for k in w0)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"

    r0, r1 = (json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["indices"]) == len(r1["indices"]) == 3 * 2  # 3 steps x (batch 4 / 2 ranks)
    for step in range(3):  # each global batch is split, never duplicated, between the ranks
        assert not set(r0["indices"][2 * step: 2 * step + 2]) & set(r1["indices"][2 * step: 2 * step + 2])

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "latest")
    assert ckpts == ["step_00000003"], ckpts  # one writer, one checkpoint, no leftovers
    saved = load_file(str(run / "checkpoints" / "step_00000003" / "model.safetensors"))
    for k, v in saved.items():
        assert torch.equal(v, w0[f"model.{k}"]), k
