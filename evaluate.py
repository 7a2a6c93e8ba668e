"""`python evaluate.py ...` is `namegen evaluate ...` (see `python evaluate.py --help`)."""

import sys

from namegen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("evaluate"))
