"""On a CUDA GPU: a few training steps in each precision, --compile, sampling. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from cli_helpers import run
from namegen.api import NameGenerator

pytestmark = pytest.mark.gpu

TINY = ["--max-epochs", "1", "--limit-train-batches", "5", "--limit-val-batches", "2", "--accelerator", "gpu",
        "--devices", "1", "--logger", "csv"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_a_few_steps_in_each_precision(precision, names_file, tmp_path):
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    out = tmp_path / precision
    assert run("train", ["--data", names_file, "--out", out, "--precision", precision, *TINY]) == 0
    state = torch.load(out / "best.ckpt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    names = NameGenerator.from_checkpoint(out / "best.ckpt", device="cuda").sample(50, seed=0)
    assert len(names) == 50 and all(names)


def test_compile_trains_and_samples(names_file, tmp_path, capsys):
    out = tmp_path / "compiled"
    assert run("train", ["--data", names_file, "--out", out, "--compile", *TINY]) == 0
    assert run("sample", ["--ckpt", out / "best.ckpt", "--device", "cuda", "--compile", "-n", "20", "--seed", "0"]) == 0
    assert len(capsys.readouterr().out.split()) == 20
