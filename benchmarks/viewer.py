"""Camera updates per second of the interactive viewer; see vq3d/bench/viewer.py."""

import sys

from vq3d.bench.viewer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
