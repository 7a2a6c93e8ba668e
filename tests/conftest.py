"""Shared fixtures: tiny data in tmp_path, the real names.txt, and a way to run the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models on a small CPU: one thread is faster than torch's default and far
# steadier on a shared machine. Subprocesses inherit it through run_cli.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_NAMES = ROOT / "namegen" / "assets" / "names.txt"  # makemore's names.txt, as the package ships it


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """Never talk to W&B servers from tests, and keep its files in tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def real_names() -> Path:
    """The real names.txt: the copy that ships in the package, so every test runs in a bare clone."""
    return SHIPPED_NAMES


@pytest.fixture
def names_file(tmp_path, real_names) -> Path:
    """The first 400 names of names.txt: enough for a few batches, fast on CPU."""
    path = tmp_path / "names.txt"
    path.write_text("\n".join(real_names.read_text().splitlines()[:400]) + "\n", encoding="utf-8")
    return path


def run_cli(script: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train.py / sample.py in a fresh Python process, as a user would."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is available (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Hypothesis profiles (tests/test_fuzz.py): "fast", derandomised, in every run of the suite (CI stays stable);
# "long", random and many more examples, on demand: `make fuzz` (HYPOTHESIS_PROFILE=long).
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the fuzz tests skip themselves; the rest of the suite needs no Hypothesis
    pass
else:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
    settings.register_profile("fast", derandomize=True, max_examples=12, deadline=None, database=None,
                              suppress_health_check=_SLOW_OK, print_blob=True)
    settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=_SLOW_OK,
                              print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
