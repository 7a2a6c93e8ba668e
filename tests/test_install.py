"""An installed namegen works from any directory: the wheel carries the size configs (configs/ at the
top of the repository becomes namegen/configs in the package) and the names file.

The wheel is built from a copy of the sources (the build writes build/ and *.egg-info beside them), then
installed with ``pip install --target`` into a directory that alone is on PYTHONPATH; the commands
run from an empty directory elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and trains in fresh processes

SOURCES = ("pyproject.toml", "README.md", "namegen", "configs")


def pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--no-input", "-q"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(an empty working directory, the environment whose PYTHONPATH is the installed namegen alone)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip("wheel", "--wheel-dir", str(tmp / "wheel"), str(src), cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("namegen-*.whl")
    pip("install", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp / "site"), OMP_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true")
    return work, env


def namegen(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "namegen", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_installed_package_is_the_one_that_runs(installed):
    work, env = installed
    proc = subprocess.run([sys.executable, "-c", "import namegen.config as c; print(c.__file__); print(c.CONFIG_DIR)"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    module, config_dir = proc.stdout.split()
    site = env["PYTHONPATH"]
    assert module.startswith(site), module  # not the checkout's copy
    assert config_dir == f"{site}/namegen/configs"
    assert sorted(p.name for p in Path(config_dir).glob("*.yaml")) == ["finetune.yaml", "large.yaml", "medium.yaml",
                                                                       "small.yaml"]
    assert (Path(site) / "namegen" / "assets" / "names.txt").is_file()


def test_an_installed_namegen_trains_large_from_another_directory(installed):
    work, env = installed
    proc = namegen(work, env, "train", "--model", "large", "--max-epochs", "1", "--limit-train-batches", "2",
                   "--limit-val-batches", "2", "--logger", "csv", "--accelerator", "cpu")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    site = env["PYTHONPATH"]
    assert f"config ({site}/namegen/configs/large.yaml): " in proc.stdout
    assert "trainable parameters: 4,155,420" in proc.stdout  # large: 3 layers of 512, LayerNorm
    assert f"training large on {site}/namegen/assets/names.txt (25,626 train / 6,407 validation" in proc.stdout
    assert (work / "checkpoints" / "large" / "best.ckpt").is_file()


def test_an_installed_namegen_trains_a_config_of_ones_own(installed):
    """--model path/to/my.yaml: a copy of the shipped small config, narrowed."""
    work, env = installed
    shipped = (Path(env["PYTHONPATH"]) / "namegen" / "configs" / "small.yaml").read_text()
    (work / "mine").mkdir()
    (work / "mine" / "narrow.yaml").write_text(re.sub(r"(?m)^n_hidden: \d+", "n_hidden: 32", shipped))
    proc = namegen(work, env, "train", "--model", "mine/narrow.yaml", "--max-epochs", "1", "--limit-train-batches",
                   "2", "--limit-val-batches", "2", "--logger", "csv", "--accelerator", "cpu")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "config (mine/narrow.yaml): " in proc.stdout and '"n_hidden": 32' in proc.stdout
    assert (work / "checkpoints" / "narrow" / "last.ckpt").is_file()
    missing = namegen(work, env, "train", "--model", "mine/other.yaml")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: --model: config file mine/other.yaml not found"
