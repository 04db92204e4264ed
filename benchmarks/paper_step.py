"""One paper-preset Stage-1 training step at batch 1 on CPU; see vq3d/bench/paper_step.py."""

import sys

from vq3d.bench.paper_step import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
