"""`python compare.py ...` is `namegen compare ...` (see `python compare.py --help`)."""

import sys

from namegen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("compare"))
