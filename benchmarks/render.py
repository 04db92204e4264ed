"""Renderer speed and memory against a plain EG3D-style reference; see vq3d/bench/render.py."""

import sys

from vq3d.bench.render import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
