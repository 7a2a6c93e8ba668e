"""`python train.py ...` is `namegen train ...` (see `python train.py --help`)."""

import sys

from namegen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("train"))
