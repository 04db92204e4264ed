"""`vq3d train stage1` under a real `torchrun --nproc_per_node 2` on CPU (gloo)."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vq3d.cli import main

from torchrun_launch import run_two_ranks

WORKER = Path(__file__).with_name("torchrun_stage1_worker.py")
ABLATION_WORKER = Path(__file__).with_name("torchrun_stage1_ablations_worker.py")


def _run_worker(worker: Path, tmp_path: Path) -> Path:
    """Tiny synthetic data, then `worker DATA RUN RECORD` on two ranks; returns RECORD."""
    data, run, record = tmp_path / "data", tmp_path / "run", tmp_path / "record"
    record.mkdir()
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "1", "--no-progress"]) == 0
    run_two_ranks(worker, [str(data), str(run), str(record)])
    return record


def test_two_process_tiny_run_keeps_ranks_identical_splits_data_and_writes_one_checkpoint(tmp_path):
    record = _run_worker(WORKER, tmp_path)
    run = tmp_path / "run"

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


def test_every_table3_ablation_runs_under_ddp_and_a_nan_on_one_rank_is_skipped_by_both(tmp_path):
    record = _run_worker(ABLATION_WORKER, tmp_path)
    r0, r1 = (json.loads((record / f"ablations_rank{r}.json").read_text()) for r in (0, 1))
    assert set(r0) == {"full", "no_gan", "no_scale", "no_interlevel", "no_nerf_losses", "no_depth",
                       "no_triplanes", "cnn", "nan_on_rank_1"}
    for name in r0:
        assert r0[name]["step"] == r1[name]["step"] == 3, name
        assert r0[name]["weights_sum"] == r1[name]["weights_sum"], name  # ranks stayed in sync
        assert r0[name]["weights_abs"] == r1[name]["weights_abs"], name
        assert r0[name]["stop_reason"] == "steps", name
    # rank 1 alone saw the nan at step 1; both skipped that one update, and only that one
    assert r0["nan_on_rank_1"]["skipped"] == r1["nan_on_rank_1"]["skipped"] == 1
    assert all(r0[name]["skipped"] == 0 for name in r0 if name != "nan_on_rank_1")
    assert r0["nan_on_rank_1"]["weights_sum"] != r0["full"]["weights_sum"]
