"""Train a GRU name generator: python train.py --model small (see --help)."""

import sys

from namegen.cli import run, train_main

if __name__ == "__main__":
    sys.exit(run(train_main))
