"""namegen.checkpoint: the format (what a checkpoint holds, old ones still load), atomic writes, safe reads."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import run
from namegen.api import NameGenerator, load_model
from namegen.checkpoint import (
    FORMAT, atomic_torch_save, build_meta, load_checkpoint, read_checkpoint, remove_stale_temporaries,
    write_checkpoint,
)
from namegen.config import load_config
from namegen.data import Vocab
from namegen.errors import UserError
from namegen.evaluate import evaluate_checkpoint
from namegen.model import GRULanguageModel

FORMAT1 = Path(__file__).parent / "fixtures" / "format1"  # written by the code of 2026-11-24


def test_meta_holds_everything_needed_to_rebuild_the_model(tmp_path):
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    vocab = Vocab(list("abc"))
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    meta = build_meta(config, vocab, model.num_parameters(), size="tiny")
    assert meta["format"] == FORMAT == 1
    assert set(meta) == {"format", "config", "vocab", "num_parameters", "size", "data"}
    path = write_checkpoint(tmp_path / "m.ckpt", meta, model.state_dict())
    loaded = load_checkpoint(path)
    assert loaded.config == config and loaded.vocab == vocab and loaded.size == "tiny"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_a_format1_checkpoint_of_yesterday_loads_samples_and_evaluates():
    loaded = load_model(FORMAT1 / "last.ckpt")
    assert loaded.config.n_layer == 2 and loaded.model.num_parameters() == loaded.meta["num_parameters"] == 3580
    gen = NameGenerator(loaded)
    assert len(gen.sample(5, seed=0)) == 5
    ev = evaluate_checkpoint(FORMAT1 / "last.ckpt", train_data=FORMAT1 / "names.txt", num_samples=20)
    assert ev.likelihood.nll == pytest.approx(3.5017, abs=1e-4)  # the best val/loss its run printed


def test_a_format1_checkpoint_of_yesterday_resumes(tmp_path, capsys):
    shutil.copy(FORMAT1 / "last.ckpt", tmp_path / "last.ckpt")
    argv = ["--resume", tmp_path / "last.ckpt", "--data", FORMAT1 / "names.txt", "--max-epochs", "2",
            "--logger", "csv", "--accelerator", "cpu"]
    assert run("train", argv) == 0
    assert "after epoch 1 of 2" in capsys.readouterr().out
    assert int(torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"]) == 1


def test_non_finite_weights_are_refused_in_one_line(tmp_path):
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=5)
    state = model.state_dict()
    state["layers.0.Wh.weight"][0, 0] = float("nan")
    path = write_checkpoint(tmp_path / "diverged.ckpt", build_meta(config, Vocab(list("abc")), model.num_parameters()), state)
    with pytest.raises(UserError, match=r"non-finite weights \(layers.0.Wh.weight") as exc:
        load_checkpoint(path)
    assert exc.value.about == "ckpt" and str(path) in str(exc.value)


def test_reading_refuses_what_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(text)
    with pytest.raises(UserError, match="is a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not found") as exc:
        read_checkpoint(tmp_path / "missing.ckpt", about="resume")
    assert exc.value.about == "resume"


# ------------------------------------------------------------------------------ atomic writes


def _save_then_stop_inside_a_save(path: str, completed: int, stopped) -> None:
    """Save versions 2, 3, ... into ``path``: ``completed`` saves in full, then stop inside the next one,
    its temporary written but not yet moved over ``path``; say so through ``stopped`` and wait to be killed."""
    real_replace, calls = os.replace, []

    def replace(src, dst):  # this process only: it is a fork of the test's
        if len(calls) == completed:
            stopped.set()
            time.sleep(600)
        calls.append(dst)
        real_replace(src, dst)

    os.replace = replace
    for version in range(2, completed + 3):
        atomic_torch_save({"version": version, "weights": torch.full((1000,), float(version))}, path)


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"version": 1, "weights": torch.zeros(3)}, path)
    forked = multiprocessing.get_context("fork")
    for completed in range(3):  # killed inside the first save, then after one and two complete saves
        stopped = forked.Event()
        child = forked.Process(target=_save_then_stop_inside_a_save, args=(str(path), completed, stopped))
        child.start()
        if not stopped.wait(timeout=300):
            child.kill()
            pytest.fail(f"the child did not stop inside save {completed + 1} within 300 s")
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        ckpt = torch.load(path, weights_only=True)  # whole, never partial
        assert ckpt["version"] == completed + 1  # the last complete save: the test's, then the child's
        assert ckpt["weights"].numel() == (1000 if completed else 3)
        stale = list(tmp_path.glob(".last.ckpt.*.tmp"))
        assert len(stale) == 1  # the kill did land mid-save
        assert remove_stale_temporaries(tmp_path) == stale and not list(tmp_path.glob(".*.tmp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "best.ckpt"
    atomic_torch_save({"version": 1}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # torch.save cannot pickle a lambda
        atomic_torch_save({"version": 2, "bad": lambda: None}, path)  # cannot be pickled
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
