"""namegen.cli: one command line, python -m namegen COMMAND; library errors become one line naming the flag."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cli_helpers import run
from conftest import ROOT
from namegen.checkpoint import build_meta, write_checkpoint
from namegen.cli import COMMANDS, error_line
from namegen.config import load_config
from namegen.data import Vocab
from namegen.errors import DeviceUnavailable, UserError
from namegen.model import GRULanguageModel


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=28)
    meta = build_meta(config, Vocab(list("abcdefghijklmnopqrstuvwxyz")), model.num_parameters(), size="tiny")
    return write_checkpoint(tmp_path / "tiny.ckpt", meta, model.state_dict())


@pytest.mark.slow
def test_python_m_namegen_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "namegen", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "sample", "evaluate", "compare", "convert", "export"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        run(command, ["--help"])
    assert exc.value.code == 0 and "usage: namegen " + command in capsys.readouterr().out


@pytest.mark.parametrize("exc, command, line", [
    (UserError("x.txt does not exist", about="data"), "train", "error: --data: x.txt does not exist"),
    (UserError("gone.txt is not there", about="train_data"), "sample", "error: --data: gone.txt is not there"),
    (UserError("gone.txt is not there", about="train_data"), "evaluate", "error: --train-data: gone.txt is not there"),
    (UserError("out.onnx exists", about="force"), "export", "error: out.onnx exists; pass --force to replace it"),
    (UserError("max_len 3 must be at least min_len 5", about="max_len"), "sample",
     "error: --max-len 3 must be at least --min-len 5"),
    (DeviceUnavailable("no CUDA GPU", about="device"), "sample", "error: --device cuda: no CUDA GPU; use --device cpu"),
    (UserError("plain message"), "train", "error: plain message"),
])
def test_library_errors_get_their_flag_here(exc, command, line):
    assert error_line(exc, command, None) == line


def test_export_through_the_command_line(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert run("export", ["--ckpt", tiny_ckpt, "--out", out]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.stat().st_size > 0
    assert run("export", ["--ckpt", tiny_ckpt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --force to replace it" in err


FREED_MEMORY_STEPS = """
import os, resource, sys, torch
from namegen.cli import keep_freed_memory
kept = keep_freed_memory()
def step():  # a training step's temporaries: four 1.4 MB gate buffers, freed together
    buffers = [torch.ones(462, 768) for _ in range(4)]
    del buffers
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator: Linux only")
def test_the_command_line_reuses_freed_memory_without_page_faults():
    """keep_freed_memory (called for every command): a step's freed buffers come back for the next step
    without a page fault (glibc's defaults hand them back to the system, and a step refaults thousands of
    pages); where the user set glibc's MALLOC_* variables it leaves the allocator alone."""
    done = subprocess.run([sys.executable, "-c", FREED_MEMORY_STEPS], capture_output=True, text=True, timeout=120)
    kept, faults = done.stdout.split()
    assert kept == "True" and int(faults) < 50, done.stdout + done.stderr
    env = {**os.environ, "MALLOC_CHECK_": "0"}
    done = subprocess.run([sys.executable, "-c", FREED_MEMORY_STEPS], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.stdout.split()[0] == "False", done.stdout + done.stderr


COLLECTOR_STATES = """
import gc, sys
if sys.argv[1] == "off":
    gc.disable()
import namegen  # torch with the collector paused
after_import = gc.isenabled(), gc.get_freeze_count()
from namegen.cli import freeze_imports, importing
freeze_imports()
frozen = gc.get_freeze_count()
with importing():  # a first import of the training stack
    import namegen.training
stack = gc.get_freeze_count()
junk = [[] for _ in range(1000)]  # objects made after the imports
with importing():  # nothing new is imported: nothing more is frozen
    import namegen.training
print(after_import[0], after_import[1], frozen > 100_000, stack > frozen, gc.get_freeze_count() == stack,
      gc.isenabled())
"""


@pytest.mark.parametrize("state", ["on", "off"])
def test_imports_leave_the_collector_as_found_and_the_command_line_freezes_what_they_made(state):
    """``import namegen`` pauses the cyclic collector while torch imports and leaves it as it found it
    (freezing nothing: a library import); the command line freezes the imports' objects once, and
    ``importing()`` pauses for and freezes the training stack's, then restores the collector."""
    done = subprocess.run([sys.executable, "-c", COLLECTOR_STATES, state], capture_output=True, text=True,
                          timeout=120)
    on = str(state == "on")
    assert done.stdout.split() == [on, "0", "True", "True", "True", on], done.stdout + done.stderr
