"""namegen: character-level name generators built on a hand-written GRU cell."""

from namegen.api import NameGenerator

__all__ = ["NameGenerator"]
__version__ = "0.1.0"
