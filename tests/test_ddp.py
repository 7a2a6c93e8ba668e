"""Two processes on the CPU: `train.py --devices 2 --strategy ddp --accelerator cpu`.

DDP re-launches the script for rank 1, so it runs as a real subprocess.
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from namegen.checkpoint import load_checkpoint
from namegen.data import IGNORE, NameBatches, encode_names, read_names, split_names
from test_train_sample import read_wandb_history

pytestmark = pytest.mark.slow  # two training processes

EPOCHS, BATCH = 2, 8


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, real_names):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "names.txt").write_text("\n".join(real_names.read_text().splitlines()[:200]) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--data", "names.txt", "--out", "run", "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp", "--max-epochs", str(EPOCHS), "--batch-size", str(BATCH)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, tmp / "run", proc


def test_ddp_trains_both_ranks_with_one_checkpoint_dir_and_one_wandb_run(ddp_run):
    tmp, out, proc = ddp_run
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in proc.stderr and "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    assert proc.stdout.count("namegen: training small") == 1  # printed by rank 0 only
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.csv", "wandb"]
    assert sorted(p.name for p in tmp.iterdir()) == ["names.txt", "run"]  # no stray lightning_logs/ etc.
    assert len(glob.glob(str(out / "wandb" / "offline-run-*"))) == 1
    last = torch.load(out / "last.ckpt", weights_only=True)
    n_batches = -(-160 // BATCH)
    assert last["global_step"] == EPOCHS * (n_batches // 2)  # each rank took half the batches per epoch


def _val_nll(model, names, vocab) -> float:
    batches = NameBatches(*encode_names(names, vocab))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(names), BATCH):
            x, y = batches[list(range(start, min(start + BATCH, len(names))))]
            logits, _ = model(x)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE,
                                  reduction="sum")
            total, count = total + nll.item(), count + int((y != IGNORE).sum())
    return total / count


def test_val_loss_is_synced_over_both_ranks(ddp_run):
    tmp, out, _ = ddp_run
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    logged = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert len(logged) == EPOCHS
    loaded = load_checkpoint(out / "last.ckpt")  # the weights of the last validation
    _, val = split_names(read_names(tmp / "names.txt"), seed=42)
    full = _val_nll(loaded.model, val, loaded.vocab)
    # rank 0's shard alone (every other batch) gives a different number: the logged one covers both
    shard0 = [n for i in range(0, len(val), 2 * BATCH) for n in val[i : i + BATCH]]
    rank0_only = _val_nll(loaded.model, shard0, loaded.vocab)
    assert logged[-1] == pytest.approx(full, abs=1e-4)
    assert abs(rank0_only - full) > 1e-3


def test_samples_logged_once_per_epoch_from_rank_zero(ddp_run):
    _, out, _ = ddp_run
    (run_dir,) = glob.glob(str(out / "wandb" / "offline-run-*"))
    rows = read_wandb_history(run_dir)
    tables = [r for r in rows if r.get("samples/_type") == "table-file"]
    assert [t["samples/nrows"] for t in tables] == [10 * (e + 1) for e in range(EPOCHS)]
    assert len([r for r in rows if "val/loss" in r]) == EPOCHS
