"""A run directory belongs to one run: ``<out>/.namegen.lock`` names the process training into it.

A second ``train`` into the same ``--out`` stops with one line naming that process. The
lock never outlives a killed run: a lock whose process is gone (checked with signal 0 on
the same host) is stale and taken over. A run on another host cannot be checked from
here; its lock is honoured until it is removed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from namegen.errors import UserError, WriteFailed

LOCK_NAME = ".namegen.lock"


@dataclass
class RunLock:
    path: Path

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def check_free(out_dir: Path) -> None:
    """UserError about ``out`` when a live run holds ``out_dir``; nothing is written."""
    holder = _holder(out_dir / LOCK_NAME)
    if holder is not None and _alive(holder):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise UserError(
            f"{out_dir} is in use by a training run that is still going (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {started}); wait for it, stop it, or train into another --out DIR",
            about="out",
        )


def acquire(out_dir: Path) -> RunLock:
    """Take ``out_dir`` for this process (creating it); stale locks of dead processes are replaced.
    A directory the OS will not create or write into (a file in its way, a read-only or full
    filesystem) is a ``WriteFailed`` naming it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed(out_dir, exc) from None
    path = out_dir / LOCK_NAME
    while True:
        check_free(out_dir)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            path.unlink(missing_ok=True)  # stale (check_free found its process gone): take it over
            continue
        except OSError as exc:
            raise WriteFailed(path, exc) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise WriteFailed(path, exc) from None
        return RunLock(path)


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # no lock, or one half-written by a process killed mid-write: not a live run
    return holder if isinstance(holder, dict) else None


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False  # not a lock namegen wrote
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
