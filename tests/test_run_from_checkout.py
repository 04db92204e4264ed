"""vq3d runs from a checkout with only its core packages importable, as on a GPU node with no
network: `python -m vq3d bench gpu`, `python -m vq3d train stage1` and `torchrun -m vq3d train
stage1` from the repository's root, with every other installed package made unimportable (a
`sitecustomize` in the subprocesses' PYTHONPATH, inherited by torchrun's ranks). A command that
needs a missing package says so in one line naming it."""

import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("torch", "numpy", "pillow", "pyyaml", "tqdm", "safetensors", "huggingface_hub")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_closure() -> set[str]:
    """The distributions the core packages need (their requirements, recursively, no extras)."""
    dists = {_norm(d.metadata["Name"]): d for d in metadata.distributions()}
    closure, todo = set(), [_norm(n) for n in CORE]
    while todo:
        name = todo.pop()
        if name in closure or name not in dists:
            continue
        closure.add(name)
        for req in dists[name].requires or []:
            if "extra ==" not in req:
                todo.append(_norm(re.match(r"[A-Za-z0-9_.-]+", req).group(0)))
    return closure


def blocked_modules() -> list[str]:
    """Top-level modules of every installed distribution outside the core closure (vq3d aside)."""
    closure = core_closure()
    return sorted(m for m, ds in metadata.packages_distributions().items()
                  if not any(_norm(d) in closure for d in ds) and m != "vq3d" and not m.startswith("_"))


SITECUSTOMIZE = '''import sys
BLOCKED = set({blocked!r})
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (made unimportable by the test)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture(scope="module")
def core_only_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("core-only")
    blocked = blocked_modules()
    assert {"transformers", "trimesh", "skimage", "imageio", "scipy"} <= set(blocked)  # what must be absent
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(folder), OMP_NUM_THREADS="1")
    return env


def _run(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_really_blocks_and_vq3d_comes_from_the_checkout(core_only_env):
    code = ("import importlib.util, vq3d\n"
            "for m in ('transformers', 'trimesh', 'skimage', 'imageio', 'scipy'):\n"
            "    try:\n        __import__(m)\n    except ModuleNotFoundError:\n        pass\n"
            "    else:\n        raise SystemExit(m + ' imported')\n"
            "print(vq3d.__file__)")
    proc = _run(core_only_env, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == ROOT / "vq3d" / "__init__.py"


def test_bench_gpu_runs_from_the_checkout_with_core_packages_only(core_only_env, tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run(core_only_env, "-m", "vq3d", "bench", "gpu", "--json", "--out", str(out), "--max-batch", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["status"] == "finished"
    assert report["checks"]["ddp_two_ranks"]["ranks_identical"]  # torchrun's ranks ran core-only too


def test_train_and_torchrun_train_run_from_the_checkout_with_core_packages_only(core_only_env, tmp_path):
    data = tmp_path / "data"
    proc = _run(core_only_env, "-m", "vq3d", "synth", "--out", str(data), "--n", "8", "--res", "16", "--views", "1",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(core_only_env, "-m", "vq3d", "train", "stage1", "--preset", "tiny", "--data", str(data),
                "--out", str(tmp_path / "run"), "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
    proc = _run(core_only_env, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                "--master_port", "0", "-m", "vq3d", "train", "stage1", "--preset", "tiny", "--data", str(data),
                "--out", str(tmp_path / "run_torchrun"), "--steps", "2", "--set", "train.device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run_torchrun" / "checkpoints" / "latest").exists()


def test_a_command_that_needs_a_missing_package_says_which_in_one_line(core_only_env, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (24, 24), (40 * i, 90, 200)).save(photos / f"{i}.png")
    proc = _run(core_only_env, "-m", "vq3d", "depth", "--data", str(photos), "--out", str(tmp_path / "cache"),
                "--model", str(tmp_path / "no-such-model"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vq3d depth: error:") and "'transformers'" in lines[0] and "pip install" in lines[0]
