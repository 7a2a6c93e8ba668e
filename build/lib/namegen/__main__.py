"""``python -m namegen COMMAND``: the same command line as the ``namegen`` command."""

import sys

from namegen.cli import main

sys.exit(main())
