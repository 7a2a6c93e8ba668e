"""namegen.loggers: W&B follows the user's login (each case in a fresh process: W&B reads its login once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

CODE = "from namegen.loggers import wandb_mode; print(wandb_mode(None), wandb_mode('offline'))"


def _mode(tmp_path, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    base |= {"NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "cfg"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CODE], env=base | env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.slow
def test_online_when_a_key_is_configured_offline_when_none(tmp_path):
    assert _mode(tmp_path) == "offline offline"  # no login: offline (the flag can only confirm it)
    assert _mode(tmp_path, WANDB_API_KEY="x" * 40) == "online offline"  # a key: online, unless --wandb-mode says
    assert _mode(tmp_path, WANDB_API_KEY="x" * 40, WANDB_MODE="offline") == "offline offline"  # WANDB_MODE wins
