"""Processes that a test acts on at known points: their output is read as it comes, and a wait
says what it awaited when it fails. Never poll files for a process's progress: wait for its lines.

A training run reaches a known point with namegen's test hook (``namegen.callbacks.PauseForTests``):
``pause_env(1, 20)`` in its environment makes it print ``PAUSED ...`` before epoch 1's batch 20 and
wait there, until the test signals it or makes the file ``pause_env(..., until=FILE)`` names.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time

import pytest

PAUSED = "namegen test pause: "
TIMEOUT = 300  # seconds; generous: a loaded 2-core machine takes well under a minute for any of these waits


def pause_env(epoch: int, batch: int, until=None) -> dict:
    """Environment variables that pause a training run before batch ``batch`` of epoch ``epoch`` (0-based)."""
    env = {"NAMEGEN_TEST_PAUSE_AT": f"{epoch}:{batch}"}
    if until is not None:
        env["NAMEGEN_TEST_PAUSE_UNTIL"] = str(until)
    return env


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal():
    """Processes started inside get SIGINT's default handling, as from a terminal, also where this one
    ignores SIGINT: a shell without job control starts background commands so (``make stress-tests &``,
    some CI runners), and children inherit it: a Ctrl-C sent to them would do nothing."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler: exec resets it to the default
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class Watched:
    """A started process (text mode, stdout piped; stderr piped or merged into stdout) whose output
    threads read as it comes: a test can wait for a line, and a full pipe never blocks the process."""

    def __init__(self, proc: subprocess.Popen, name: str = "the process"):
        self.proc, self.name = proc, name
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        streams = [(proc.stdout, self.out)] + ([(proc.stderr, self.err)] if proc.stderr else [])
        self._readers = [threading.Thread(target=self._read, args=s, daemon=True) for s in streams]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, what: str, timeout: float = TIMEOUT) -> str:
        """The first stdout line holding ``text``; fails, saying it awaited ``what``, when the process
        ends without printing one or ``timeout`` seconds pass. A wait that fails or is interrupted
        (Ctrl-C on pytest) kills the process: a paused run would otherwise outlive the test."""
        try:
            return self._wait_for(text, what, timeout)
        except BaseException:
            self.proc.kill()
            raise

    def _wait_for(self, text: str, what: str, timeout: float) -> str:
        deadline, ended = time.monotonic() + timeout, None
        with self._changed:
            while True:
                line = next((ln for ln in self.out if text in ln), None)
                if line is not None:
                    return line
                if self.proc.poll() is not None:  # its last lines may still be in the pipe: read them first
                    ended = ended or time.monotonic()
                if ended and (not any(r.is_alive() for r in self._readers) or time.monotonic() > ended + 10):
                    pytest.fail(f"{self.name} exited ({self.proc.returncode}) before {what}:\n{self._tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name}: {what} did not happen within {timeout:.0f} s "
                                f"(awaited a line with {text!r} on stdout):\n{self._tail()}")
                self._changed.wait(1.0)

    def finish(self, what: str = "the process to exit", timeout: float = TIMEOUT) -> tuple[str, str]:
        """Wait for the exit and the end of its output: (stdout, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"{self.name}: {what} did not happen within {timeout:.0f} s:\n{self._tail()}")
        except BaseException:  # Ctrl-C on pytest: do not leave the process behind
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(timeout=60)
        return "".join(self.out), "".join(self.err)

    def _tail(self) -> str:
        with self._changed:
            return ("".join(self.out)[-2000:] + "\n--- stderr ---\n" + "".join(self.err)[-2000:]).strip()
