"""Synthetic dataset generation speed: `python benchmarks/synth.py --json` (see vq3d/bench/synth.py)."""

import sys

from vq3d.bench.synth import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
