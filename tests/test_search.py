"""experiments/search.py: the grid, refusals, the results table, and resumption (skip finished
trials, continue a killed one). The trainings are tiny: 300 names, a 1,932-parameter config,
2 batches an epoch."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import sys

import pytest
import yaml

from conftest import ROOT
from namegen import callbacks
from namegen.config import load_config
from namegen.errors import UserError


def _load_search():
    spec = importlib.util.spec_from_file_location("experiments_search", ROOT / "experiments" / "search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


search = _load_search()


@pytest.fixture
def setup(tmp_path, real_names, monkeypatch):
    """A tiny names file and config in tmp_path (the current directory), and the flags every call shares."""
    monkeypatch.chdir(tmp_path)
    names = real_names.read_text(encoding="utf-8").splitlines()[:300]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    config = load_config("small").replace(n_embd=8, n_hidden=16, batch_size=32)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    return ["--size", "small", "--config", "tiny.yaml", "--data", "names.txt", "--runs-dir", "runs",
            "--results", "rep/search.md", "--limit-train-batches", "2"]


def _table(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]  # without the header row
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


# ----------------------------------------------------------------------------- the plan (no training)


@pytest.mark.parametrize("key", ["n_layer", "n_embd", "n_hidden", "layer_norm"])
def test_architecture_keys_are_refused(key):
    with pytest.raises(UserError, match="parameter count"):
        search.parse_grid(["lr=1e-3,2e-3", f"{key}=1,2"])


def test_architecture_refusal_is_one_line_and_exit_2(setup, capsys):
    assert search.main([*setup, "--grid", "n_hidden=32,64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --grid: n_hidden is architecture"), err


@pytest.mark.parametrize("item, message", [
    ("seed=1,2", "split"), ("optimizer=adam", "cannot be searched"), ("lr", "KEY=V1,V2"),
    ("lr=1e-3,0.001", "more than once"), ("batch_size=1.5", "not an integer"), ("dropout=1.2", "dropout must be"),
])
def test_bad_grids_are_refused(item, message):
    with pytest.raises(UserError, match=message):
        search.plan_trials(load_config("small"), search.parse_grid([item]), {}, ROOT / "unused", "small", {})


def test_grid_is_the_product_in_order_with_exact_tags():
    grid = search.parse_grid(["lr=1e-3,3e-4", "dropout=0.3,0.4", "weight_decay=0.1"])
    trials = search.plan_trials(load_config("large"), grid, {"max_epochs": 30}, ROOT / "runs", "large", {})
    assert [t.tag for t in trials] == [
        "lr=0.001_dropout=0.3_weight_decay=0.1", "lr=0.001_dropout=0.4_weight_decay=0.1",
        "lr=0.0003_dropout=0.3_weight_decay=0.1", "lr=0.0003_dropout=0.4_weight_decay=0.1",
    ]
    large = load_config("large")
    for t in trials:
        assert t.config.max_epochs == 30 and t.out.parent == ROOT / "runs" / "large"
        assert (t.config.n_layer, t.config.n_embd, t.config.n_hidden) == (large.n_layer, large.n_embd, large.n_hidden)


def test_dry_run_plans_and_writes_nothing(setup, tmp_path, capsys):
    assert search.main([*setup, "--grid", "lr=1e-3,3e-3", "--max-epochs", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] lr=0.001: trains from scratch" in out and "[2/2] lr=0.003: trains from scratch" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rep").exists()


# ----------------------------------------------------------------------------- trainings (tiny)


@pytest.mark.slow
def test_search_writes_a_sorted_table_and_a_rerun_skips_finished_trials(setup, tmp_path, capsys):
    args = [*setup, "--grid", "lr=1e-3,3e-3", "dropout=0.1", "--max-epochs", "1"]
    assert search.main(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("search [")]
    assert len(printed) == 2 and all("(trained)" in line for line in printed)
    md = (tmp_path / "rep" / "search.md").read_text()
    rows = _table(md)
    assert len(rows) == 2
    losses = [float(row[6]) for row in rows]
    assert losses == sorted(losses) and rows[0][0] == "**best**" and rows[1][0] == ""
    assert "python experiments/search.py --size small" in md and "Smoke run" in md and "logical cores" in md
    doc = json.loads((tmp_path / "rep" / "search.json").read_text())
    assert [round(t["best_val_loss"], 4) for t in doc["trials"]] == losses and doc["best"] == doc["trials"][0]["tag"]
    assert all(len(t["load_before"]) == 3 and t["epochs"] == 1 for t in doc["trials"])

    ckpts = sorted((tmp_path / "runs" / "small").glob("*/best.ckpt"))
    mtimes = [p.stat().st_mtime_ns for p in ckpts]
    assert search.main(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("search [")]
    assert len(printed) == 2 and all("reused, not retrained" in line for line in printed)
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes
    assert _table((tmp_path / "rep" / "search.md").read_text()) == rows  # same table, same order

    (ckpts[0].parent / "result.json").unlink()  # as if killed after training, before its result was written
    assert search.main(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("search [")]
    assert sum("recovered from last.ckpt, not retrained" in line for line in printed) == 1
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes and (ckpts[0].parent / "result.json").is_file()

    assert search.main([*args[:-1], "2"]) == 2  # another --max-epochs: refused, not mixed in
    assert "records a different trial (config.max_epochs 1 (now 2))" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_trial_resumes_from_last_ckpt(setup, tmp_path, monkeypatch, capsys):
    args = [*setup, "--grid", "lr=3e-3", "--max-epochs", "2"]
    start = callbacks.RunClock.on_train_epoch_start

    def ctrl_c_in_epoch_2(self, trainer, pl_module):
        if trainer.current_epoch == 1:  # epoch 1's last.ckpt is written
            raise KeyboardInterrupt
        start(self, trainer, pl_module)

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(callbacks.RunClock, "on_train_epoch_start", ctrl_c_in_epoch_2)
    try:
        assert search.main(args) == search.INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    run = tmp_path / "runs" / "small" / "lr=0.003"
    assert (run / "last.ckpt").is_file() and not (run / "result.json").exists()
    assert "Run the same command again" in capsys.readouterr().err
    assert "Not finished yet: `lr=0.003`" in (tmp_path / "rep" / "search.md").read_text()

    monkeypatch.setattr(callbacks.RunClock, "on_train_epoch_start", start)
    assert search.main([*args, "--dry-run"]) == 0
    assert "resumes from last.ckpt after epoch 1" in capsys.readouterr().out
    assert search.main(args) == 0
    assert "(resumed from last.ckpt)" in capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 2 and result["how"] == "resumed"
    assert re.search(r"\| \*\*best\*\* \| `lr=0\.003` \|", (tmp_path / "rep" / "search.md").read_text())
