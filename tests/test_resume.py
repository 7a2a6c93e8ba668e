"""Interruption and resume with real processes and real signals.

One scenario, three train.py processes, shared by the tests below:
  A  trains toward 3 epochs and is SIGKILLed in the middle of epoch 2 (after epoch 1's last.ckpt);
  B  --resume continues it and gets Ctrl-C (SIGINT to its process group, as a terminal sends) in epoch 3;
  C  runs the resume command that B printed, and finishes.
A and B are signalled where they stand paused by namegen's test hook (tests/process_helpers.py), at batch
20 of the epoch: never where a file on disk suggests they might be, so the speed of the machine does not matter.
"""

from __future__ import annotations

import csv
import glob
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import ROOT
from namegen.config import load_config
from namegen.api import NameGenerator
from namegen.callbacks import PauseForTests
from cli_helpers import run
from process_helpers import PAUSED, TIMEOUT, Watched, ctrl_c_as_in_a_terminal, pause_env

EPOCHS = 3
STEPS_PER_EPOCH = 40  # 160 training names in batches of 4


def _env() -> dict:
    # one thread per process: on a shared CPU, torch's thread pools otherwise spin against each other
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _start(cwd: Path, name: str, pause_at: tuple[int, int], *args: str) -> Watched:
    with ctrl_c_as_in_a_terminal():
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                                env=_env() | pause_env(*pause_at), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return Watched(proc, name)


def _last_epoch(out: Path):
    """The epoch of <out>/last.ckpt; None while there is none."""
    last = out / "last.ckpt"
    return torch.load(last, weights_only=True)["epoch"] if last.exists() else None  # atomic writes: never partial


def _csv_rows(out: Path) -> list[dict]:
    try:
        with open(out / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, real_names):
    tmp = tmp_path_factory.mktemp("resume")
    (tmp / "names.txt").write_text("\n".join(real_names.read_text().splitlines()[:200]) + "\n")
    out = tmp / "run"
    args = ["--data", "names.txt", "--out", "run", "--accelerator", "cpu", "--max-epochs", str(EPOCHS),
            "--batch-size", "4"]
    s = {"tmp": tmp, "out": out}

    # A: SIGKILL in the middle of epoch index 1 (its batch 20), after epoch 0's checkpoint
    a = _start(tmp, "run A", (1, 20), *args)
    a.wait_for(PAUSED, "run A reaching batch 20 of epoch index 1")
    a.proc.send_signal(signal.SIGKILL)
    a.finish("run A's exit after SIGKILL")
    s["a_rc"], s["a_last_epoch"], s["a_rows"] = a.proc.returncode, _last_epoch(out), _csv_rows(out)

    # B: resume; Ctrl-C in the middle of epoch index 2 (its batch 20)
    b = _start(tmp, "run B", (2, 20), *args, "--resume")
    b.wait_for(PAUSED, "run B (resumed) reaching batch 20 of epoch index 2")
    os.killpg(b.proc.pid, signal.SIGINT)
    b_out, b_err = b.finish("run B's exit after Ctrl-C")
    s["b_rc"], s["b_out"], s["b_err"], s["b_last_epoch"] = b.proc.returncode, b_out, b_err, _last_epoch(out)

    # C: the resume command B printed, as printed (no pause: it runs to the end)
    line = next((ln for ln in b_err.splitlines() if "resume with: " in ln), None)
    assert line is not None, f"run B printed no 'resume with:' line (exit {b.proc.returncode}):\n{b_err[-3000:]}"
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "python"
    c = subprocess.run([sys.executable, *command[1:]], cwd=tmp, env=_env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    s["c_command"], s["c_rc"], s["c_out"], s["c_err"] = command, c.returncode, c.stdout, c.stderr
    return s


@pytest.mark.slow
def test_sigkill_landed_mid_epoch_and_left_good_checkpoints(scenario):
    assert scenario["a_rc"] == -signal.SIGKILL
    assert scenario["a_last_epoch"] == 0  # killed before epoch 1's checkpoint...
    assert any(r["epoch"] == "1" for r in scenario["a_rows"])  # ...after epoch 1 had logged steps


@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_last_ckpt_and_prints_the_resume_command(scenario):
    assert scenario["b_rc"] == 130, scenario["b_err"][-3000:]
    # the loop state was restored, not just the weights: B's first epoch line is epoch 2's, not epoch 1's
    assert "epoch 1/3" not in scenario["b_out"] and "epoch 2/3: val/loss" in scenario["b_out"]
    assert "resuming small from run/last.ckpt after epoch 1 of 3" in scenario["b_out"]
    assert "interrupted: run/last.ckpt (after epoch 2) is kept; resume with: python" in scenario["b_err"]
    assert scenario["b_last_epoch"] == 1
    assert "Traceback" not in scenario["b_err"]
    assert scenario["c_command"][-1] == "--resume" and "--overwrite" not in scenario["c_command"]


@pytest.mark.slow
def test_resumed_run_reaches_its_epochs_with_history_kept(scenario):
    out = scenario["out"]
    assert scenario["c_rc"] == 0, scenario["c_err"][-3000:]
    assert f"finished in" in scenario["c_out"] and f"after {EPOCHS} epoch(s)" in scenario["c_out"]
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert last["epoch"] == EPOCHS - 1 and last["global_step"] == EPOCHS * STEPS_PER_EPOCH
    rows = _csv_rows(out)
    val = [(int(r["epoch"]), float(r["val/loss"])) for r in rows if r["val/loss"]]
    assert [e for e, _ in val] == list(range(EPOCHS))  # every epoch once: none lost, none repeated
    assert [e for e, _ in val] and val[-1][1] < val[0][1]
    assert [int(r["epoch"]) for r in rows if r["train/loss"]] == list(range(EPOCHS))
    steps = [int(r["step"]) for r in rows if r["train/loss_step"]]
    assert steps == sorted(set(steps)) and steps[-1] == EPOCHS * STEPS_PER_EPOCH - 1  # no step logged twice
    # the optimizer and schedule carried on: the last logged lr follows the cosine to its end, not a restart
    (lr_key,) = [k for k in rows[0] if k.startswith("lr-") and k.endswith("/pg1")]  # lr-Adam or lr-AdamW
    lrs = [float(r[lr_key]) for r in rows if r.get(lr_key)]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * lrs[0]


@pytest.mark.slow
def test_best_ckpt_is_loadable_and_samples(scenario):
    out = scenario["out"]
    best = torch.load(out / "best.ckpt", weights_only=True)
    rows = _csv_rows(out)
    assert best["namegen"]["data"]["n_names"] == 200
    assert min(float(r["val/loss"]) for r in rows if r["val/loss"]) == pytest.approx(
        next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"].item(),
        abs=1e-5)
    names = NameGenerator.from_checkpoint(out / "best.ckpt").sample(10, seed=0)
    assert len(names) == 10 and all(names)


@pytest.mark.slow
def test_one_wandb_run_across_the_three_processes(scenario):
    out = scenario["out"]
    dirs = sorted(glob.glob(str(out / "wandb" / "offline-run-*")))
    assert len(dirs) == 3  # one offline directory per process...
    ids = {d.rsplit("-", 1)[1] for d in dirs}
    assert len(ids) == 1  # ...all of the same run id
    (run_id,) = ids
    assert torch.load(out / "last.ckpt", weights_only=True)["namegen"]["wandb_run_id"] == run_id
    assert f"(W&B run {run_id})" in scenario["c_out"]
    assert f"in 3 parts; upload it with: wandb sync run/wandb/offline-run-*-{run_id}" in scenario["c_out"]


def test_the_test_pause_says_where_it_stopped_and_waits(tmp_path, monkeypatch, capsys):
    """The hook the scenario above relies on: nothing without its variable; with it, one line, then a wait
    that its file ends (and that is an error when nothing ends it)."""
    monkeypatch.delenv("NAMEGEN_TEST_PAUSE_AT", raising=False)
    assert PauseForTests.from_env() is None
    release = tmp_path / "go"
    monkeypatch.setenv("NAMEGEN_TEST_PAUSE_AT", "1:3")
    monkeypatch.setenv("NAMEGEN_TEST_PAUSE_UNTIL", str(release))
    pause = PauseForTests.from_env()
    pause.limit_s = 0.2
    trainer = SimpleNamespace(current_epoch=1, is_global_zero=True)
    pause.on_train_batch_start(trainer, None, None, 2)  # another batch: on at once
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError, match="not ended within"):
        pause.on_train_batch_start(trainer, None, None, 3)
    assert capsys.readouterr().out == f"{PAUSED}epoch 1 batch 3\n"
    release.touch()
    pause.on_train_batch_start(trainer, None, None, 3)  # the file exists: on at once


# ------------------------------------------------------------------ resume errors (in-process)

def _call(argv, capsys):
    try:
        code = run("train", [str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, real_names):
    tmp = tmp_path_factory.mktemp("finished")
    data = tmp / "names.txt"
    data.write_text("\n".join(real_names.read_text().splitlines()[:200]) + "\n")
    out = tmp / "run"
    argv = ["--data", data, "--out", out, "--max-epochs", "1", "--batch-size", "16", "--limit-train-batches", "2",
            "--accelerator", "cpu", "--logger", "csv"]
    assert run("train", [str(a) for a in argv]) == 0
    return data, out, argv


def test_resume_errors_are_one_line(finished_run, tmp_path, capsys):
    data, out, argv = finished_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cases = [
        (argv + ["--resume"], "already finished 1 of 1 epochs; pass --max-epochs N"),
        (argv + ["--resume", "--max-epochs", "3", "--batch-size", "8"], "--batch-size 8: the run being resumed used 16"),
        (argv + ["--resume", "--max-epochs", "3", "--lr", "0.1"], f"--lr 0.1: the run being resumed used {load_config('small').lr}"),
        (argv + ["--resume", "--max-epochs", "3", "--model", "large"], "--model large"),
        (["--data", data, "--out", tmp_path / "empty", "--resume"], "nothing to resume"),
        (argv, "pass --resume to continue it, --overwrite to replace it"),
    ]
    other = tmp_path / "other.txt"
    other.write_text("emma\nava\nmia\nnoah\nliam\n")
    cases.append((argv[2:] + ["--data", other, "--resume", "--max-epochs", "3"], "not the file the run being resumed"))
    for args, needle in cases:
        code, err = _call(args, capsys)
        assert code == 2 and "Traceback" not in err, err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert needle in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_last_ckpt_is_written_every_epoch_also_when_val_loss_gets_worse(names_file, tmp_path):
    """--resume continues the last epoch, not the best one (Lightning 2.6's save_last skips epochs
    that do not improve; namegen keeps a last.ckpt of its own)."""
    few = tmp_path / "few.txt"  # 48 training names: memorised within a few epochs, then val/loss rises
    few.write_text("\n".join(names_file.read_text().splitlines()[:60]) + "\n")
    out = tmp_path / "run"
    plain = tmp_path / "plain.yaml"  # no weight averaging: the average of 30 steps would barely move
    plain.write_text(yaml.safe_dump(load_config("small").replace(ema_decay=0.0).to_dict()))
    argv = ["--model", plain, "--data", few, "--out", out, "--max-epochs", "30", "--limit-train-batches", "1",
            "--limit-val-batches", "1", "--lr", "0.05", "--accelerator", "cpu", "--logger", "none"]
    assert run("train", argv) == 0
    best = torch.load(out / "best.ckpt", weights_only=True)["epoch"]
    assert best < 29, "precondition: this recipe overfits, so the best epoch is not the last"
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 29
