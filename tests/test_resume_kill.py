"""Resume that survives any kill: a tiny Stage-1 run, always started with --resume, is killed
with SIGKILL at 10 random moments (one of them halfway through a checkpoint write) and restarted
each time. No checkpoint is ever corrupt, and the finished run's loss curve and weights equal an
uninterrupted run's."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vq3d.cli import main
from vq3d.train.checkpoint import latest_checkpoint

WORKER = Path(__file__).with_name("kill_worker.py")
STEPS, CKPT_EVERY = 36, 4


def _command(data: Path, run: Path) -> list[str]:
    return [sys.executable, str(WORKER), "train", "stage1", "--preset", "tiny", "--data", str(data), "--out",
            str(run), "--resume", "--set", f"train.steps={STEPS}", "--set", f"train.ckpt_every={CKPT_EVERY}",
            "--set", "loss.gan_start_steps=20", "--set", "train.ema_decay=0.9"]


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def _logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL `proc` as soon as `ready()`; False when it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait(timeout=timeout)
    return False


def _check_checkpoints(run: Path) -> None:
    """Every complete checkpoint folder loads; `latest` resolves to one of them."""
    root = run / "checkpoints"
    complete = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file()) if root.is_dir() else []
    for ckpt in complete:
        assert json.loads((ckpt / "state.json").read_text())["step"] == int(ckpt.name.split("_")[1])
        for file in ckpt.glob("*.safetensors"):
            load_file(str(file))
    if complete:
        assert latest_checkpoint(run) in complete


def _curve(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "a stretch of the curve is logged twice"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "data"
    assert main(["synth", "--out", str(out), "--n", "24", "--res", "16", "--views", "1", "--no-progress"]) == 0
    return out


def test_a_run_killed_at_ten_random_moments_ends_as_an_uninterrupted_one(data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_command(data, reference), env=_env(), check=True, capture_output=True)

    run, rng, kills = tmp_path / "killed", random.Random(0), 0
    marker = tmp_path / "paused"
    # the moments: after a random logged step (before the first checkpoint too), and once while
    # a checkpoint is half written
    moments = sorted(rng.sample(range(1, STEPS), 9))
    plan = moments[:3] + ["mid-write"] + moments[3:]
    for moment in plan:
        if moment == "mid-write":  # the next checkpoint this run will write
            done = latest_checkpoint(run)
            step = (0 if done is None else json.loads((done / "state.json").read_text())["step"]) + CKPT_EVERY
            proc = subprocess.Popen(_command(data, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=_env(VQ3D_PAUSE_SAVE_STEP=str(step), VQ3D_PAUSE_MARKER=str(marker)))
            killed = _kill_when(proc, marker.exists)
            assert killed and any((run / "checkpoints").glob(f".tmp_step_{step:08d}_*"))  # half written
            assert latest_checkpoint(run) == done  # the previous checkpoint is still the one to resume
        else:
            proc = subprocess.Popen(_command(data, run), env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            killed = _kill_when(proc, lambda m=moment: _logged_step(run) >= m)
        kills += killed
        _check_checkpoints(run)
    assert kills == 10
    subprocess.run(_command(data, run), env=_env(), check=True, capture_output=True)  # the last restart finishes
    _check_checkpoints(run)

    assert _curve(run) == _curve(reference)
    modules = ("model", "d_main", "d_novel", "logit_laplace", "ema")
    done, ref = latest_checkpoint(run), latest_checkpoint(reference)
    assert json.loads((done / "state.json").read_text())["step"] == STEPS
    for name in modules:
        a, b = load_file(str(done / f"{name}.safetensors")), load_file(str(ref / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not list((run / "checkpoints").glob(".tmp_*"))  # the half-written folder was cleaned up


def test_resume_without_a_checkpoint_starts_the_run_and_says_so(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "stage1", "--preset", "tiny", "--data", str(data), "--out", str(run), "--resume",
            "--set", "train.steps=2", "--set", "train.ckpt_every=100"]
    assert main(args) == 0  # nothing there: a new run
    assert "no checkpoint or config to resume; starting a new run" in capsys.readouterr().err
    assert latest_checkpoint(run).name == "step_00000002"
    for ckpt in (run / "checkpoints").glob("step_*"):  # as if killed before its first checkpoint
        shutil.rmtree(ckpt)
    (run / "checkpoints" / "latest").unlink()
    assert main(["train", "stage1", "--out", str(run), "--resume"]) == 0  # the saved config: no --data needed
    assert "no checkpoint to resume yet; starting the run at step 0 with its saved config" in capsys.readouterr().err
    assert latest_checkpoint(run).name == "step_00000002" and _curve(run).keys() == {1, 2}
