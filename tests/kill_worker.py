"""`vq3d ...` as a process for tests/test_resume_kill.py to SIGKILL. With VQ3D_PAUSE_SAVE_STEP=N
the checkpoint of step N pauses halfway through its write (weights and optimizer written, the
state not yet) and touches VQ3D_PAUSE_MARKER, so the test can kill it mid-write."""

import os
import sys
import time
from pathlib import Path

if os.environ.get("VQ3D_PAUSE_SAVE_STEP"):
    import vq3d.train.checkpoint as checkpoint

    write_tree = checkpoint._save_tree
    folder = f"step_{int(os.environ['VQ3D_PAUSE_SAVE_STEP']):08d}"

    def write_then_pause(path_stem: Path, obj) -> None:
        write_tree(path_stem, obj)
        if folder in path_stem.parent.name:
            Path(os.environ["VQ3D_PAUSE_MARKER"]).touch()
            time.sleep(120)

    checkpoint._save_tree = write_then_pause

from vq3d.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
