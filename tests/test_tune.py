"""namegen tune: real Optuna studies (SQLite and journal storages) over real, tiny training runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import ROOT
from namegen.config import CONFIG_DIR, load_config
from namegen.errors import UserError
from namegen.tune import load_search_space, open_study, search_space_path, suggest
from process_helpers import PAUSED, TIMEOUT, Watched, pause_env

SMOKE = ("--max-epochs", "2", "--limit-train-batches", "2", "--limit-val-batches", "1")


def tune(tmp: Path, *args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m namegen tune ...`` in tmp, as a user runs it."""
    return subprocess.run(_command(*args), cwd=tmp, env=_env(), capture_output=True, text=True, timeout=timeout)


def start_tune(tmp: Path, *args: str, env: dict | None = None, name: str = "namegen tune") -> Watched:
    """``tune`` started and watched (stderr merged into stdout), with extra environment variables ``env``."""
    proc = subprocess.Popen(_command(*args), cwd=tmp, env=_env() | (env or {}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return Watched(proc, name)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "namegen", "tune", *args]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def write_space(path: Path, params: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"base": "small", "params": params, **extra}), encoding="utf-8")
    return path


def trials_of(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    if storage.endswith(".journal"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        storage = JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


# ----------------------------------------------------------------------------- the search space, in process


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_shipped_search_spaces_load_and_keep_the_architecture(size):
    space = load_search_space(search_space_path(size, None))
    assert space.path == CONFIG_DIR / "search" / f"{size}.yaml"
    assert space.base == load_config(size)
    assert {"lr", "lr_schedule", "max_epochs", "batch_size", "weight_decay", "dropout", "variational_dropout",
            "weight_drop", "embd_dropout", "layer_dropout"} <= set(space.params)
    for point in space.enqueue:  # every starting point is a valid config of the same architecture
        config = space.config_for(point)
        assert (config.n_layer, config.n_embd, config.n_hidden) == (space.base.n_layer, space.base.n_embd,
                                                                      space.base.n_hidden)


@pytest.mark.parametrize("params, match", [
    ({"n_hidden": {"type": "int", "low": 64, "high": 512}}, "n_hidden is an architecture key"),
    ({"layer_norm": {"type": "categorical", "choices": [True, False]}}, "layer_norm is an architecture key"),
    ({"momentum": {"type": "float", "low": 0.1, "high": 0.9}}, "momentum is not a recipe key"),
    ({"lr": {"type": "float", "low": 0.1}}, "lr: low and high must be numbers"),
    ({"lr": {"type": "float", "low": 0.1, "high": "1.0e6"}}, "YAML reads 1.0e6 as text"),
    ({"lr": {"type": "float", "low": 0.2, "high": 0.1}}, "lr: needs low <= high"),
    ({"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "lr: expected"),
    ({"batch_size": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
])
def test_bad_search_spaces_are_one_line(tmp_path, params, match):
    with pytest.raises(UserError, match=match) as exc:
        load_search_space(write_space(tmp_path / "space.yaml", params))
    assert exc.value.about == "space" and "space.yaml" in str(exc.value)


def test_a_space_edited_in_a_way_optuna_cannot_continue_is_refused(tmp_path):
    """Ranges may change between sessions of one study; categorical choices may not (Optuna refuses them
    mid-trial with a traceback), so opening the study says which key, and what to do, first."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lr = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}
    first = load_search_space(write_space(tmp_path / "a.yaml", {
        "lr": lr, "batch_size": {"type": "categorical", "choices": [64, 128]}}))
    study = open_study(storage, "edited", first, sampler_seed=0)
    study.optimize(lambda trial: suggest(trial, first)["lr"], n_trials=2)
    widened = load_search_space(write_space(tmp_path / "b.yaml", {
        "lr": {**lr, "low": 1e-4}, "batch_size": {"type": "categorical", "choices": [64, 128]}}))
    open_study(storage, "edited", widened, sampler_seed=1).optimize(lambda t: suggest(t, widened)["lr"], n_trials=1)
    edited = load_search_space(write_space(tmp_path / "c.yaml", {
        "lr": lr, "batch_size": {"type": "categorical", "choices": [64, 128, 256]}}))
    with pytest.raises(UserError, match=r"batch_size is searched as one of 64, 128, 256, but study 'edited' "
                                        r"searched it as one of 64, 128; .* --study NAME"):
        open_study(storage, "edited", edited, sampler_seed=2)
    unlogged = load_search_space(write_space(tmp_path / "d.yaml", {
        "lr": {**lr, "log": False}, "batch_size": {"type": "categorical", "choices": [64, 128]}}))
    with pytest.raises(UserError, match=r"lr is searched as float 0.001 to 0.01, but .* \(log scale\)"):
        open_study(storage, "edited", unlogged, sampler_seed=3)
    assert len(study.get_trials()) == 3


# ----------------------------------------------------------------------------- studies, as processes


@pytest.mark.slow
def test_a_study_runs_continues_and_reports(tmp_path, names_file):
    """Default SQLite storage; the same command continues the study; report, plots and best config."""
    space = write_space(tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                                  "weight_drop": {"type": "float", "low": 0.0, "high": 0.3}})
    args = ("--space", str(space), "--model", "small", "--data", str(names_file), "--date", "d", *SMOKE)
    first = tune(tmp_path, *args, "--trials", "2")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "0 finished trial(s), target 2" in first.stdout
    # a point added to the space's enqueue list runs first when the study is next opened, and only once
    write_space(space, yaml.safe_load(space.read_text())["params"], enqueue=[{"lr": 0.00321, "weight_drop": 0.123}])
    again = tune(tmp_path, *args, "--trials", "3")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "2 finished trial(s), target 3" in again.stdout
    trials = trials_of(f"sqlite:///{tmp_path / 'runs/tune/optuna.db'}", "small")
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[2].params == {"lr": 0.00321, "weight_drop": 0.123}
    assert tune(tmp_path, *args, "--trials", "3").returncode == 0  # the study is complete: nothing runs
    assert len(trials_of(f"sqlite:///{tmp_path / 'runs/tune/optuna.db'}", "small")) == 3
    (tmp_path / "reports/d/tune-small.md").unlink()
    only_report = tune(tmp_path, *args, "--trials", "0")  # 0: no trial, the report of the study as it stands
    assert only_report.returncode == 0 and "trial 3" not in only_report.stdout
    assert (tmp_path / "reports/d/tune-small.md").is_file()
    for t in trials:  # every trial is a normal run with its own config file
        run = tmp_path / t.user_attrs["run_dir"]
        assert (run / "best.ckpt").is_file() and (run / "metrics.csv").is_file()
        assert yaml.safe_load((run / f"trial-{t.number:04d}.yaml").read_text())["lr"] == t.params["lr"]
    report = (tmp_path / "reports/d/tune-small.md").read_text()
    best = min(trials, key=lambda t: t.value)
    assert f"| {best.number} | complete | {best.value:.4f} |" in report
    assert "/" + str(tmp_path).strip("/") not in report  # paths relative to where the command ran
    for png in ("history", "importances", "intermediate"):
        assert (tmp_path / f"reports/d/tune-small-{png}.png").stat().st_size > 1000
    config = load_config(str(tmp_path / "reports/d/tune-small-best.yaml"))
    assert config.lr == best.params["lr"] and config.n_hidden == 128  # a ready config of the same size


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_through_the_lightning_callback(tmp_path, names_file):
    """A learning rate that cannot learn falls behind the median at epoch 1 and stops there."""
    space = write_space(tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}},
                        pruner={"n_startup_trials": 1, "n_warmup_steps": 0},
                        enqueue=[{"lr": 8e-3}, {"lr": 1e-7}])
    result = tune(tmp_path, "--space", str(space), "--data", str(names_file), "--trials", "2", "--max-epochs", "4",
                  "--limit-train-batches", "3", "--limit-val-batches", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    good, hopeless = trials_of(f"sqlite:///{tmp_path / 'runs/tune/optuna.db'}", "small")
    assert good.state.name == "COMPLETE" and len(good.intermediate_values) == 4
    assert hopeless.state.name == "PRUNED" and list(hopeless.intermediate_values) == [0]
    assert "trial 1 pruned" in result.stdout


@pytest.mark.slow
def test_a_diverged_trial_fails_and_the_study_goes_on(tmp_path, names_file):
    # lr 1e6 without clipping really diverges (see test_divergence): weight decay alone flips and grows the weights
    space = write_space(tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-3, "high": 1e6, "log": True},
                                                  "grad_clip": {"type": "categorical", "choices": [0.0, 1.0]},
                                                  "batch_size": {"type": "categorical", "choices": [16]}},
                        enqueue=[{"lr": 1e6, "grad_clip": 0.0}, {"lr": 5e-3, "grad_clip": 1.0}])
    result = tune(tmp_path, "--space", str(space), "--data", str(names_file), "--trials", "1", "--max-epochs", "3",
                  "--limit-train-batches", "5", "--limit-val-batches", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "trial 0 fail (" in result.stdout and "training diverged" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    states = [t.state.name for t in trials_of(f"sqlite:///{tmp_path / 'runs/tune/optuna.db'}", "small")]
    assert states == ["FAIL", "COMPLETE"]


@pytest.mark.slow
def test_a_killed_trial_is_marked_failed_and_the_study_goes_on(tmp_path, names_file):
    space = write_space(tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    args = ("--space", str(space), "--data", str(names_file), "--limit-val-batches", "1")
    proc = start_tune(tmp_path, *args, "--trials", "1", "--max-epochs", "2", env=pause_env(0, 1))
    proc.wait_for(PAUSED, "trial 0 training (paused before its batch 1)")
    proc.proc.send_signal(signal.SIGKILL)
    proc.finish("namegen tune's exit after SIGKILL")
    again = tune(tmp_path, *args, "--trials", "1", "--max-epochs", "2", "--limit-train-batches", "2")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "trial 0 was running in a process that is gone; marked failed" in again.stdout
    states = [t.state.name for t in trials_of(f"sqlite:///{tmp_path / 'runs/tune/optuna.db'}", "small")]
    assert states == ["FAIL", "COMPLETE"]
    assert "1 failed" in (tmp_path / "reports").glob("*/tune-small.md").__next__().read_text()


@pytest.mark.slow
def test_two_processes_share_one_study_through_a_journal_file(tmp_path, names_file):
    """Two processes, as on two machines sharing a disk: one study, distinct trials, both contribute.
    Each waits in its first trial until both have one under way, so neither can run the whole study alone."""
    space = write_space(tmp_path / "space.yaml", {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}})
    journal = str(tmp_path / "shared/study.journal")
    args = ("--space", str(space), "--data", str(names_file), "--storage", journal, "--study", "together",
            "--trials", "6", "--max-epochs", "3", "--limit-train-batches", "3", "--limit-val-batches", "1")
    both_started = tmp_path / "both-started"
    procs = [start_tune(tmp_path, *args, "--sampler-seed", str(seed), "--runs-dir", f"runs-{seed}",
                        env=pause_env(0, 0, until=both_started), name=f"namegen tune (seed {seed})")
             for seed in (1, 2)]
    for proc in procs:
        proc.wait_for(PAUSED, "a trial under way")
    both_started.touch()
    outputs = [proc.finish("the study's end", timeout=600) for proc in procs]
    assert [p.proc.returncode for p in procs] == [0, 0], outputs
    trials = trials_of(journal, "together")
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 6 and len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both processes ran trials of the one study


@pytest.mark.slow
def test_tune_input_errors_are_one_line(tmp_path, names_file):
    space = write_space(tmp_path / "space.yaml", {"n_layer": {"type": "int", "low": 1, "high": 3}})
    bad = tune(tmp_path, "--space", str(space), "--data", str(names_file))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: --space: ") and "n_layer is an architecture key" in bad.stderr
    storage = tune(tmp_path, "--storage", "nosuchdb://x/y", "--data", str(names_file))
    assert storage.returncode == 2 and storage.stderr.startswith("error: --storage: cannot open Optuna storage")
    assert storage.stderr.count("\n") == 1, storage.stderr
