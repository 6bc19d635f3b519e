"""`python -m sightbeyond`, which is what `accelerate launch -m sightbeyond ...` runs in each process."""

import sys

from sightbeyond.cli import main

sys.exit(main())
