"""The exceptions a user sees as one line, never as a traceback.

Library code names the file or value a message is about, not a command-line
flag: ``UserError("names.txt does not exist; ...", about="data")``. The command
line (``namegen.cli``) is the only code that knows flags; it prints
``error: --data: names.txt does not exist; ...`` and exits with status 2.
"""

from __future__ import annotations

import errno
import os
import reprlib


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


class PeerStopped(Exception):
    """Another process of a distributed run stopped first (rank 0 after a write failure, say) and
    says why itself; this process stops without a word of its own."""


class TrainingDiverged(UserError):
    """The training loss (or the weights) turned inf/nan; raised before anything non-finite is saved."""


class WriteFailed(UserError):
    """The OS refused to write a file: a full disk or quota, a read-only filesystem, a directory
    that is a file. The message names the file (relative to the current directory when it lies
    below it) and the OS's reason: ``cannot write checkpoints/small/last.ckpt: No space left on
    device``; ``about`` says which input chose the place (``"out"``, ``"reports_dir"``, ...), so a
    command line can say where else to write."""

    def __init__(self, path: str | os.PathLike, exc: OSError, about: str | None = "out"):
        self.path, self.errno = shown_path(path), exc.errno
        self.reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_in_the_way(path)):
            self.reason = f"Not a directory ({shown_path(blocker)} is a file)"
        super().__init__(f"cannot write {self.path}: {self.reason}", about=about)

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)

    @property
    def read_only(self) -> bool:
        return self.errno == errno.EROFS


def _file_in_the_way(path: str | os.PathLike) -> str | None:
    """The nearest of ``path`` and its parents that exists as something other than a directory."""
    current = os.path.abspath(path)
    while True:
        if os.path.lexists(current):
            return None if os.path.isdir(current) else current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a user should read it: relative to the current directory when it lies below it
    (Lightning hands over absolute paths), else as given."""
    text = os.fspath(path)
    if os.path.isabs(text):
        try:
            rel = os.path.relpath(text)
        except ValueError:  # another drive (Windows)
            return text
        if not rel.startswith(os.pardir):
            return rel
    return text


_BRIEF = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 2, 40, 40, 40
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxarray = _BRIEF.maxdict = _BRIEF.maxset = _BRIEF.maxfrozenset = 4


def brief(value) -> str:
    """``repr(value)`` cut to a few dozen characters, whatever ``value`` is: an error message quotes what a
    file holds, and a file can hold a string of a gigabyte, lists nested ten thousand deep or shared a
    million times, or an integer too long for ``repr``."""
    try:
        return _BRIEF.repr(value)
    except (ValueError, RecursionError):  # an int beyond sys.get_int_max_str_digits(), say
        bits = value.bit_length() if isinstance(value, int) else None
        return f"<an integer of {bits} bits>" if bits is not None else f"<a {type(value).__name__}>"
