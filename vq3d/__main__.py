import sys

from vq3d.cli import main

sys.exit(main())
