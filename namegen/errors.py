"""The exceptions a user sees as one line, never as a traceback.

Library code names the file or value a message is about, not a command-line
flag: ``UserError("names.txt does not exist; ...", about="data")``. The command
line (``namegen.cli``) is the only code that knows flags; it prints
``error: --data: names.txt does not exist; ...`` and exits with status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what and how to fix it.

    ``about`` names the input it concerns (``"data"``, ``"ckpt"``, ``"resume"``,
    ``"model"``, ...), so that a command line can name its flag for it.
    """

    def __init__(self, message: str, about: str | None = None):
        super().__init__(message)
        self.about = about


class DeviceUnavailable(UserError):
    """A device or precision this machine cannot run (CUDA without a GPU, bf16 without support)."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C after a graceful shutdown.

    ``last``: the checkpoint kept (None before the first epoch ended), ``shown``: its path as
    printed, ``epoch``: the epochs it holds; ``quiet``: a process other than rank 0, which says nothing.
    """

    def __init__(self, last=None, epoch: int | None = None, shown: str | None = None, quiet: bool = False):
        super().__init__("interrupted")
        self.last, self.epoch, self.shown, self.quiet = last, epoch, shown, quiet


class TrainingDiverged(UserError):
    """The training loss (or the weights) turned inf/nan; raised before anything non-finite is saved."""
