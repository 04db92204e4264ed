"""Stage-2 sampling throughput with and without the KV cache; see vq3d/bench/sample.py."""

import sys

from vq3d.bench.sample import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
