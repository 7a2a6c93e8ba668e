"""The recurrence's loops compiled for this machine, once: ``namegen/csrc/*.cpp``.

model.py's layer runs its steps in Python loops of small ATen operators; on a CPU the interpreter around
them is a large share of a step (most of small's). The C++ file runs the same operators in the same
order (the same bits, tests/test_recurrence.py), so ``namegen.model`` uses it wherever it is available
and the Python loops otherwise: where no C++ compiler is found, or ``NAMEGEN_COMPILED=0`` is set.
``fused_f32.cpp`` (float32) and ``fused_bf16.cpp`` (bf16 autocast) run a step with its elementwise work
fused between its two matmuls (and the backward's chain rule inside its loop): the same math
to float32 tolerance, not the same bits. They are what training runs on a CPU; the replay is kept for
other dtypes and as the bit-exact check of the Python loops. ``draws.cpp`` makes dropout's random bits and
masks: torch.randint's numbers from the same generator, faster.

It is built by torch's C++-extension builder (a C++ compiler and ninja) the first time it is needed,
into namegen's cache, ``~/.cache/namegen/recurrence-<hash>`` (``NAMEGEN_CACHE_DIR`` moves it; the hash
covers the source and the versions of torch and Python); later processes load the built library in
milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from namegen.config import default_cache_dir

SOURCE = Path(__file__).parent / "csrc" / "recurrence.cpp"
# one library: the replayed loops, the fused steps in float32 and under bf16 (sharing fused_math.h), and
# dropout's random numbers and masks
SOURCES = (SOURCE, SOURCE.with_name("fused_f32.cpp"), SOURCE.with_name("fused_bf16.cpp"),
           SOURCE.with_name("draws.cpp"))
HEADERS = (SOURCE.with_name("fused_math.h"),)
# vectorised, with no fused multiply-adds (each vector clone rounds as the plain one) and no trap-preserving
# branches (the bits are the same; only floating-point exception flags could differ); OpenMP for
# at::parallel_for (at run time the process's libgomp, the one torch loaded, serves it)
FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
NAME = "namegen_recurrence"

_state: dict = {}  # "ops": the loaded operators or None; "why": why the Python loops run instead


def build_dir() -> Path:
    """Where this source, built for this torch and Python, lives."""
    text = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(FLAGS).encode()
    key = hashlib.sha256(text + torch.__version__.encode() + sys.version.encode()).hexdigest()[:16]
    return default_cache_dir() / f"recurrence-{key}"


def _load():
    """The compiled operators (``torch.ops.namegen_recurrence``), built first when this machine has none."""
    where = build_dir()
    if (where / f"{NAME}.so").exists():
        torch.ops.load_library(str(where / f"{NAME}.so"))
    else:
        _build(where)  # and loads it
    return torch.ops.namegen_recurrence


def _build(where: Path) -> None:
    """Build into a private directory, then rename it into place: a concurrent process (DDP's ranks,
    parallel tests) never sees half a library, and a build that fails leaves nothing behind."""
    from torch.utils.cpp_extension import load  # imports setuptools: only when building

    print(f"namegen: compiling its recurrence for this machine, once (under a minute): {where}",
          file=sys.stderr, flush=True)
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}."))
    path = os.environ.get("PATH", "")
    try:
        if shutil.which("ninja") is None:  # the ninja wheel (a dependency) when the system has none
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
        # builds and loads the library (a loaded library stays loaded when its file is renamed or removed)
        load(name=NAME, sources=[str(p) for p in SOURCES], build_directory=str(tmp), is_python_module=False,
             extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
        os.rename(tmp, where)  # fails when another process got there first: its build is the same
    except OSError:
        if not (where / f"{NAME}.so").exists():
            raise
    finally:
        os.environ["PATH"] = path
        shutil.rmtree(tmp, ignore_errors=True)


def ops():
    """The compiled loops, or None (off, or not buildable here: ``why()`` says which)."""
    if "ops" not in _state:
        if os.environ.get("NAMEGEN_COMPILED", "1") == "0":
            _state.update(ops=None, why="NAMEGEN_COMPILED=0")
        else:
            try:
                _state.update(ops=_load(), why=None)
            except Exception as e:  # no compiler, no ninja, a failed build: the Python loops give the same bits
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                _state.update(ops=None, why=f"could not build {SOURCE.name} ({first[:200]})")
    return _state["ops"]


def why() -> str | None:
    """Why the Python loops run instead, or None when the compiled ones do (after ``ops()``)."""
    return _state.get("why")
