"""Compare GRU sizes: train or take checkpoints, write reports/<date>/report.md and loss_curves.png (see --help)."""

import sys

from namegen.cli import run
from namegen.compare import compare_main

if __name__ == "__main__":
    sys.exit(run(compare_main))
