"""`vq3d train stage1` under a real `torchrun --nproc_per_node 2` on CPU (gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vq3d.cli import main

WORKER = Path(__file__).with_name("torchrun_stage1_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_tiny_run_keeps_ranks_identical_splits_data_and_writes_one_checkpoint(tmp_path):
    data, run, record = tmp_path / "data", tmp_path / "run", tmp_path / "record"
    record.mkdir()
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "1", "--no-progress"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), str(data), str(run), str(record)]
    # its own process group: on a timeout the ranks die with torchrun (subprocess.run would kill only
    # torchrun and then wait forever on the pipes the orphaned ranks still hold)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 240 s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]

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
