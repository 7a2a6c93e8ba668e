"""Sample names from a checkpoint: python sample.py --ckpt best.ckpt (see --help)."""

import sys

from namegen.cli import run, sample_main

if __name__ == "__main__":
    sys.exit(run(sample_main))
