"""`python sample.py ...` is `namegen sample ...` (see `python sample.py --help`)."""

import sys

from namegen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("sample"))
