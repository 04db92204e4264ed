"""Loader throughput vs a plain PIL loop; depth-cache throughput (same as `vq3d bench loader`)."""

import sys

from vq3d.bench.loader import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
