"""Checkpoint writes that a kill cannot corrupt.

Lightning's ``TorchCheckpointIO`` saves through ``fsspec``'s transaction, which
writes the file under the *system* temporary directory and then
``shutil.move``\\ s it into place. When that directory is on another filesystem
than the checkpoint directory (a tmpfs ``/tmp``, a mounted data volume), the
move is a copy straight into ``best.ckpt`` / ``last.ckpt``: a kill during it
leaves a truncated checkpoint in place of a good one, and a kill before it
leaves a full-size file behind in ``/tmp``.

``AtomicCheckpointIO`` writes to a temporary file in the checkpoint's own
directory, fsyncs it, then ``os.replace``\\ s it over the old one (one atomic
rename). A kill at any moment leaves either the old checkpoint or the new one,
never a partial file; ``remove_stale_temporaries`` clears what a kill left.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".tmp"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``.<name>.<random>.tmp`` beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary behind
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete ``.*.ckpt.*.tmp`` files a killed save left in ``directory``; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(f".*.ckpt.*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with same-directory temporary file + ``os.replace`` for local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not _is_local_file_protocol(path):  # s3://, gs://: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
