"""The two-rank check of `vq3d bench gpu`: one Stage-1 step under DistributedDataParallel.

`two_rank_step` launches this module under `torchrun --nproc_per_node 2`. Each rank builds the
preset's trainer, takes one full step (GAN, novel views and R1 on) on its own random batch, and
writes a SHA-256 of every module's weights; the ranks must end identical. On one GPU both ranks
share it (`train.device=cuda:0`), which NCCL refuses, so they talk gloo on CUDA tensors
(`vq3d.train.distributed.choose_backend`); on CPU they talk gloo as the test suite's ranks do.

    python -m torch.distributed.run --nproc_per_node 2 -m vq3d.bench.ddp_check --out DIR \
        --preset demo --device cuda:0 --precision bf16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `vq3d/` (a checkout's root)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def worker(out: Path, preset: str, device: str, precision: str) -> None:
    """One rank: build, take one step on a rank-specific batch, write rank{r}.json."""
    import torch.distributed as dist

    from vq3d.config import load_config
    from vq3d.train.distributed import cleanup
    from vq3d.train.stage1 import Stage1Trainer, read_scalars

    cfg = load_config(preset, [], [f"train.device={device}", f"train.precision={precision}", "train.batch_size=2",
                                   "loss.gan_start_steps=0", "loss.novel_gan_start_steps=-1", "loss.r1_every=1"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Stage1Trainer(cfg, run_dir)
        rank, res = trainer.info.rank, cfg.data.resolution
        gen = torch.Generator().manual_seed(1234 + rank)  # each rank its own images
        data = {"image": (torch.rand(1, 3, res, res, generator=gen) * 2 - 1).to(trainer.device),
                "disparity": torch.rand(1, 1, res, res, generator=gen).to(trainer.device)}
        before = weights_digest(trainer.model)
        logs = read_scalars(trainer.train_step(data))
        digests = {name: weights_digest(module) for name, module in trainer._modules().items()}
        record = {"rank": rank, "world_size": trainer.info.world_size, "backend": dist.get_backend(),
                  "device": str(trainer.device), "digests": digests, "model_changed": digests["model"] != before,
                  "input_sum": float(data["image"].double().sum()), "skipped": logs.get("skipped"),
                  "d_skipped": logs.get("d_skipped"), "seconds": round(time.perf_counter() - t0, 2)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_step(preset: str, device: str, precision: str, timeout_s: float, adopt: Any = None) -> dict:
    """Launch the two ranks and compare them. `adopt(proc)` registers the launcher's process
    group (killed by the caller's watchdog). Raises RuntimeError with the ranks' last output on
    failure."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "vq3d.bench.ddp_check", "--out", tmp, "--preset", preset,
               "--device", device, "--precision", precision]
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        if adopt is not None:
            adopt(proc)
        try:
            output, _ = proc.communicate(timeout=max(1.0, timeout_s))
        except BaseException:  # the timeout or the budget's alarm: no rank outlives the check
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-12:])
            raise RuntimeError(f"torchrun exited {proc.returncode}:\n{tail}")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in (0, 1)]
    same = {name: ranks[0]["digests"][name] == ranks[1]["digests"][name] for name in ranks[0]["digests"]}
    return {"world_size": ranks[0]["world_size"], "backend": ranks[0]["backend"], "device": ranks[0]["device"],
            "preset": preset, "ranks_identical": all(same.values()), "identical_by_module": same,
            "model_changed": ranks[0]["model_changed"] and ranks[1]["model_changed"],
            "ranks_saw_different_data": ranks[0]["input_sum"] != ranks[1]["input_sum"],
            "skipped": [r["skipped"] for r in ranks], "seconds": round(seconds, 1),
            "rank_seconds": [r["seconds"] for r in ranks]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vq3d.bench.ddp_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for rank{r}.json")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu", help="cpu, or cuda:N to put both ranks on one GPU")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        print("run it under torchrun --nproc_per_node 2 (vq3d bench gpu does)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    worker(Path(args.out), args.preset, args.device, args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
