"""namegen: character-level name generators built on a hand-written GRU cell."""

import gc

# Importing torch makes about a million Python objects, none of them garbage; with the cyclic collector on,
# its passes over them while they are made cost a third of the import (0.5 s of every command's start-up on
# a 2-core VM). It is paused for the import only, and left as it was found.
_collecting = gc.isenabled()
gc.disable()
try:
    from namegen.api import NameGenerator
finally:
    if _collecting:
        gc.enable()
    del _collecting

__all__ = ["NameGenerator"]
__version__ = "0.1.0"
