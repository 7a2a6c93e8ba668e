"""Weight averaging (``ema_decay``): Lightning's EMAWeightAveraging in a namegen run.

Validation measures the average, best.ckpt and last.ckpt hold it (the trained weights ride along
for --resume), sampling and evaluation read it, and a resumed run continues the same average.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from namegen.checkpoint import STATE_PREFIX
from namegen.config import load_config
from namegen.errors import UserError
from namegen.evaluate import evaluate_checkpoint
from cli_helpers import run


def write_config(tmp_path, **overrides) -> str:
    """configs/small.yaml, shrunk to run in seconds, with ``overrides``."""
    cfg = load_config("small").replace(n_embd=16, n_hidden=32, max_epochs=3, batch_size=32, lr=3e-3, **overrides)
    path = tmp_path / "averaged.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def train(names_file, out, config, *extra) -> None:
    argv = ["--model", config, "--data", names_file, "--out", out, "--limit-train-batches", "8",
            "--accelerator", "cpu", "--logger", "csv", *extra]
    assert run("train", argv) == 0


def best_score(ckpt: dict) -> float:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"].item()


def test_best_ckpt_holds_the_average_that_validation_measured(names_file, tmp_path):
    out = tmp_path / "run"
    train(names_file, out, write_config(tmp_path, ema_decay=0.9))
    ckpt = torch.load(out / "best.ckpt", weights_only=True)
    average, trained = ckpt["state_dict"], ckpt["current_model_state"]
    assert set(average) == set(trained) and any(k.startswith(STATE_PREFIX) for k in average)
    assert any(not torch.equal(average[k], trained[k]) for k in average)  # two different sets of weights
    ev = evaluate_checkpoint(out / "best.ckpt", num_samples=20)  # what evaluate.py, sample and export read
    assert ev.likelihood.nll == pytest.approx(best_score(ckpt), abs=2e-4)


def test_without_ema_decay_the_checkpoint_holds_the_trained_weights(names_file, tmp_path):
    out = tmp_path / "run"
    train(names_file, out, write_config(tmp_path, ema_decay=0.0))
    ckpt = torch.load(out / "best.ckpt", weights_only=True)
    assert "current_model_state" not in ckpt
    assert not any(k.startswith("EMAWeightAveraging") for k in ckpt["callbacks"])


def test_a_resumed_run_continues_the_same_average(names_file, tmp_path):
    """Two epochs, then --resume to three, ends with the weights and average of three epochs at once
    (a constant learning rate: the cosine schedule's length follows --max-epochs; and a decay of 0.7, whose
    horizon fits both runs, so RunLengthEMA caps neither)."""
    config = write_config(tmp_path, ema_decay=0.7, lr_schedule="constant")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(names_file, straight, config)
    train(names_file, split, config, "--max-epochs", "2")
    train(names_file, split, config, "--resume", "--max-epochs", "3")
    a = torch.load(straight / "last.ckpt", weights_only=True)
    b = torch.load(split / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("state_dict", "current_model_state"):
        for name, value in a[key].items():
            assert torch.allclose(value, b[key][name], atol=1e-6), (key, name)


def test_a_resumed_run_keeps_the_decay_it_started_with(names_file, tmp_path):
    """0.9 spans 10 steps: capped to 1 - 1/(0.25 x 16) = 0.75 for 2 epochs of 8 steps, 0.8333 for 3. A run of 2
    resumed to 3 keeps averaging with 0.75: the average is the same average throughout."""
    config = write_config(tmp_path, ema_decay=0.9)
    train(names_file, tmp_path / "straight", config)
    train(names_file, tmp_path / "split", config, "--max-epochs", "2")
    train(names_file, tmp_path / "split", config, "--resume", "--max-epochs", "3")
    decay = {run: torch.load(tmp_path / run / "last.ckpt", weights_only=True)["callbacks"]["EMAWeightAveraging"]
             ["decay_used"] for run in ("straight", "split")}
    assert decay == {"straight": pytest.approx(1 - 1 / 6), "split": pytest.approx(0.75)}


def test_the_average_updated_from_lists_gathered_once_is_lightnings_bit_for_bit(names_file, tmp_path, monkeypatch):
    """RunLengthEMA's own per-step update (the tensor lists gathered once) against Lightning's (every step
    through AveragedModel.update_parameters): the same average and weights, bit for bit, in a real run."""
    from torch.optim.swa_utils import AveragedModel

    from namegen.callbacks import RunLengthEMA

    calls = []
    original = AveragedModel.update_parameters
    monkeypatch.setattr(AveragedModel, "update_parameters", lambda self, model: calls.append(1) or original(self, model))
    config = write_config(tmp_path, ema_decay=0.9)
    train(names_file, tmp_path / "own", config)
    own_calls = len(calls)
    monkeypatch.setattr(RunLengthEMA, "_tensor_lists", lambda self, pl_module: None)  # Lightning's every step
    train(names_file, tmp_path / "lightning", config)
    assert own_calls == 1 and len(calls) - own_calls == 24  # the first update (a copy); then 3 epochs x 8 steps
    a, b = (torch.load(tmp_path / run / "last.ckpt", weights_only=True) for run in ("own", "lightning"))
    for key in ("state_dict", "current_model_state", "averaging_state"):  # the last: n_averaged
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_ema_decay_outside_0_to_1_is_refused(value):
    with pytest.raises(UserError, match="ema_decay must be in"):
        load_config("small").replace(ema_decay=value)


def test_the_average_is_updated_by_torchs_multi_tensor_ema_within_rounding_of_the_formula():
    """RunLengthEMA updates every tensor at once (torch's foreach lerp) with the decay it uses, and the result
    is ``decay * average + (1 - decay) * weight`` up to float rounding."""
    from namegen.callbacks import RunLengthEMA

    gen = torch.Generator().manual_seed(0)
    averages = [torch.randn(shape, generator=gen) for shape in ((384, 64), (384,), (128, 128), (28,))]
    weights = [torch.randn(a.shape, generator=gen) for a in averages]
    for decay in (0.999, 0.9995, 0.96):
        got = [a.clone() for a in averages]
        RunLengthEMA(decay, steps=10**6)._kwargs["multi_avg_fn"](got, weights, 1)
        expected = [decay * a.double() + (1 - decay) * w.double() for a, w in zip(averages, weights)]
        assert all(torch.allclose(g.double(), e, rtol=0, atol=1e-6) for g, e in zip(got, expected)), decay
        assert not any(torch.equal(g, a) for g, a in zip(got, averages))  # every tensor moved


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_the_fused_cpu_optimizer_steps_like_the_per_tensor_loop_within_rounding(optimizer):
    """On a CPU configure_optimizers takes torch's fused AdamW/Adam: after 20 steps the weights are the
    per-tensor loop's up to float rounding."""
    from namegen.data import Vocab
    from namegen.module import NameGenModule

    config = load_config("medium").replace(optimizer=optimizer, lr_schedule="constant")
    modules = [NameGenModule(config, Vocab.from_names(["abc"]).chars) for _ in range(2)]
    modules[1].load_state_dict(modules[0].state_dict())
    start = [p.detach().clone() for p in modules[0].parameters()]
    fast, slow = (m.configure_optimizers() for m in modules)
    assert all(group["fused"] is True for group in fast.param_groups)
    for group in slow.param_groups:  # the same groups, stepped by torch's per-tensor loop
        group["fused"], group["foreach"] = False, False
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        for p, q in zip(modules[0].parameters(), modules[1].parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fast.step()
        slow.step()
    pairs = list(zip(modules[0].parameters(), modules[1].parameters()))
    assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in pairs)
    assert all(not torch.equal(p, s) for p, s in zip(modules[0].parameters(), start))  # 20 steps moved them

