"""Evaluate a checkpoint: NLL per character, perplexity and sample statistics (see --help)."""

import sys

from namegen.cli import run
from namegen.evaluate import evaluate_main

if __name__ == "__main__":
    sys.exit(run(evaluate_main))
