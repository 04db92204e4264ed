"""Launch a worker script under `torchrun --nproc_per_node 2` on CPU with a hard deadline.

Each rank is a fresh interpreter started by torchrun (no fork of a process that already runs
torch threads). torchrun and its ranks get their own process group, so a deadline kills them all
(killing only torchrun would leave the ranks holding the pipes open). Ranks dump every thread's
stack to stderr before the deadline, so a hang says where it waited.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(worker: Path, args: list[str], timeout_s: float = 240.0) -> str:
    """Run `worker args...` on 2 gloo ranks; fail the test on a non-zero exit or the deadline.

    Returns torchrun's stderr. Ranks see `VQ3D_TEST_DUMP_AFTER` (seconds) for faulthandler.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               VQ3D_TEST_DUMP_AFTER=str(int(timeout_s * 0.8)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout_s:.0f} s:\n{err[-6000:]}")
    assert proc.returncode == 0, err[-6000:]
    return err


def dump_stacks_if_hung() -> None:
    """In a rank: print every thread's stack to stderr if the rank still runs near the deadline."""
    import faulthandler

    after = float(os.environ.get("VQ3D_TEST_DUMP_AFTER", "0"))
    if after > 0:
        faulthandler.dump_traceback_later(after, exit=False)
