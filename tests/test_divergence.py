"""A run whose loss or weights turn inf/nan stops in one line and keeps the checkpoints from before it;
sampling and evaluation refuse a checkpoint with non-finite weights in one line."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from namegen.checkpoint import load_checkpoint
from cli_helpers import run
from namegen.errors import TrainingDiverged, UserError
from namegen.module import NameGenModule

TINY = ["--batch-size", "16", "--accelerator", "cpu", "--logger", "csv"]


def _config(tmp_path, **changes):
    """configs/small.yaml with some keys replaced, as a --model path."""
    from namegen.config import CONFIG_DIR

    text = (CONFIG_DIR / "small.yaml").read_text()
    lines = [ln for ln in text.splitlines() if ln.split(":")[0] not in changes]
    path = tmp_path / "diverging.yaml"
    path.write_text("\n".join(lines + [f"{k}: {v}" for k, v in changes.items()]) + "\n")
    return path


def _one_error_line(code, err, *needles) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_a_real_divergence_stops_train_py_in_one_line(tmp_path, names_file):
    """lr 1e6 without clipping really diverges (weight decay alone multiplies weights by -1e5 a step):
    train.py stops with one error line, exit 2, and leaves an earlier run's checkpoints byte for byte."""
    out = tmp_path / "run"
    out.mkdir()
    earlier = {name: f"earlier {name}".encode() for name in ("best.ckpt", "last.ckpt")}
    for name, payload in earlier.items():
        (out / name).write_bytes(payload)
    config = _config(tmp_path, lr="1000000.0", grad_clip="0.0")
    proc = run_cli("train.py", "--model", str(config), "--data", str(names_file), "--out", str(out), "--overwrite",
                   "--max-epochs", "3", *TINY)
    line = _one_error_line(proc.returncode, proc.stderr, "error: training diverged: train/loss is ", " at epoch 1, step ",
                           "no checkpoint had been written yet", "lower --lr")
    assert "--precision 32-true" not in line  # it already is float32
    assert {name: (out / name).read_bytes() for name in earlier} == earlier


@pytest.mark.slow
def test_a_distributed_run_that_diverges_says_so_once(tmp_path, names_file):
    """Both DDP processes stop at the same step; rank 0 prints the one line, rank 1 nothing."""
    config = _config(tmp_path, lr="1000000.0", grad_clip="0.0")
    proc = run_cli("train.py", "--model", str(config), "--data", str(names_file), "--out", str(tmp_path / "run"),
                   "--max-epochs", "3", "--devices", "2", "--strategy", "ddp", *TINY, cwd=tmp_path)
    _one_error_line(proc.returncode, proc.stderr, "error: training diverged: train/loss is ", "lower --lr")


def test_divergence_in_a_later_epoch_keeps_that_runs_checkpoints(tmp_path, names_file, monkeypatch, capsys):
    """Epoch 1 trains and saves; in epoch 2 the lr jumps to 1e6 (a real divergence follows, in a few steps):
    trainer.fit raises TrainingDiverged, train.py prints it as one line, best/last.ckpt are epoch 1's."""
    out = tmp_path / "run"
    saved = {}

    def on_train_epoch_start(self):
        if self.current_epoch == 1:
            saved.update({p.name: p.read_bytes() for p in out.glob("*.ckpt")})
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = 1e6

    monkeypatch.setattr(NameGenModule, "on_train_epoch_start", on_train_epoch_start, raising=False)
    config = _config(tmp_path, grad_clip="0.0", lr_schedule="constant")
    code = run("train", ["--model", str(config), "--data", str(names_file), "--out", str(out), "--max-epochs", "5",
                            *TINY])
    _, err = capsys.readouterr()
    _one_error_line(code, err, "error: training diverged: train/loss is ", " at epoch 2, step ",
                    "best.ckpt and last.ckpt are from before it")
    assert sorted(saved) == ["best.ckpt", "last.ckpt"]
    assert {name: (out / name).read_bytes() for name in saved} == saved  # untouched since epoch 1
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0 and _finite(out / "last.ckpt")
    load_checkpoint(out / "best.ckpt")  # and usable


def test_the_exception_propagates_out_of_fit(tmp_path, names_file, monkeypatch):
    """In-process use (not the CLI) sees the exception type itself."""
    import lightning.pytorch as pl

    from namegen.config import load_config
    from namegen.datamodule import NamesDataModule

    data = NamesDataModule(names_file, batch_size=16, seed=42)
    data.setup("fit")
    module = NameGenModule(load_config("small").replace(lr=1e6, grad_clip=0.0), data.vocab.chars)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(TrainingDiverged, match=r"train/loss is (nan|inf) at epoch 1, step \d+"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step < 20  # it stopped at the first bad step, within the first epoch


@pytest.mark.parametrize("ema_decay", [0.0, 0.999])
def test_non_finite_weights_are_never_saved(tmp_path, names_file, monkeypatch, capsys, ema_decay):
    """A weight turned inf where the validation loss does not see it (the padding token's embedding
    row; with val/loss nan Lightning saves neither best nor last anyway): the checkpoint callback
    would save it, on_save_checkpoint refuses, and the earlier checkpoints stay. With weight averaging
    the inf lands in the average (validation runs on it), which the checkpoint saves as its state_dict."""
    out = tmp_path / "run"
    saved = {}

    def on_validation_epoch_start(self):
        if self.current_epoch == 1 and not self.trainer.sanity_checking:
            saved.update({p.name: p.read_bytes() for p in out.glob("*.ckpt")})
            with torch.no_grad():
                self.model.embedding.weight[0, 0] = float("inf")

    monkeypatch.setattr(NameGenModule, "on_validation_epoch_start", on_validation_epoch_start, raising=False)
    config = _config(tmp_path, ema_decay=ema_decay)
    code = run("train", ["--model", str(config), "--data", str(names_file), "--out", str(out), "--max-epochs", "3",
                         *TINY])
    _, err = capsys.readouterr()
    _one_error_line(code, err, "error: training diverged: weight embedding.weight is not finite at epoch 2",
                    "best.ckpt and last.ckpt are from before it")
    assert sorted(saved) == ["best.ckpt", "last.ckpt"]
    assert {name: (out / name).read_bytes() for name in saved} == saved
    assert _finite(out / "best.ckpt") and _finite(out / "last.ckpt")


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, real_names):
    """A real checkpoint, then one weight set to nan (what saving a diverged run would have left)."""
    tmp = tmp_path_factory.mktemp("nan-ckpt")
    data = tmp / "names.txt"
    data.write_text("\n".join(real_names.read_text().splitlines()[:200]) + "\n")
    argv = ["--data", str(data), "--out", str(tmp / "run"), "--max-epochs", "1", "--limit-train-batches", "2",
            "--batch-size", "16", "--accelerator", "cpu", "--logger", "none"]
    assert run("train", argv) == 0
    ckpt = torch.load(tmp / "run" / "best.ckpt", weights_only=True)
    ckpt["state_dict"]["model.layers.0.Wzh.weight"][3, 1] = float("nan")
    bad = tmp / "diverged.ckpt"
    torch.save(ckpt, bad)
    return bad


@pytest.mark.parametrize("main, argv", [("sample", ["-n", "3"]), ("evaluate", ["-n", "10"])],
                         ids=["sample", "evaluate"])
def test_sampling_and_evaluation_refuse_non_finite_weights(nan_checkpoint, main, argv, capsys):
    code = run(main, ["--ckpt", str(nan_checkpoint), *argv])
    _, err = capsys.readouterr()
    _one_error_line(code, err, str(nan_checkpoint), "layers.0.Wzh.weight", "non-finite")
    with pytest.raises(UserError, match="non-finite weights"):
        load_checkpoint(nan_checkpoint)
