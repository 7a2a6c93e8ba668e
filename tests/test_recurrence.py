"""The compiled recurrence (namegen/csrc/recurrence.cpp) gives the Python loops' results bit for bit.

Forward (out, gates, q) and backward (every gradient) of one layer, over random packings, widths, dropout
masks, variational masks and bf16 autocast, drawn by Hypothesis; and a whole training step of each
shipped size. The compiled loops are what every CPU run uses, so the Python loops stay the reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from namegen import model as model_module
from namegen import recurrence
from namegen.config import load_config
from namegen.data import IGNORE
from namegen.model import GRULanguageModel, char_nll, gru_layer

hypothesis = pytest.importorskip("hypothesis", reason="needs Hypothesis: pip install -r requirements.txt")
from hypothesis import given, settings, strategies as st  # noqa: E402

HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(scope="module")
def compiled():
    """The compiled operators; a build failure on a machine with a compiler fails the tests."""
    if os.environ.get("NAMEGEN_COMPILED") == "0":
        pytest.skip("NAMEGEN_COMPILED=0")
    ops = recurrence.ops()
    if ops is None and not HAS_COMPILER:
        pytest.skip(f"no C++ compiler: {recurrence.why()}")
    assert ops is not None, recurrence.why()
    return ops


@pytest.fixture
def python_loops(monkeypatch):
    """Run model.py's Python loops instead of the compiled ones, for this test only."""
    original = model_module._compiled

    def use(on: bool):
        monkeypatch.setattr(model_module, "_compiled", (lambda device: None) if on else original)
    return use


def _run_layer(gates_in, h0, w_rz, w_h, mask, sizes, hmask, low):
    """out and the gradients of (gates_in, h0, w_rz, w_h) for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (gates_in, h0, w_rz, w_h)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
        out = gru_layer(*leaves, mask=mask, batch_sizes=sizes, hmask=hmask)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    out.backward(upstream)
    return [out.detach()] + [leaf.grad for leaf in leaves]


@st.composite
def layers(draw):
    B = draw(st.integers(1, 9))
    H = draw(st.sampled_from([1, 3, 8, 16]))
    sizes = sorted(draw(st.lists(st.integers(1, B), min_size=1, max_size=7)), reverse=True)
    sizes[0] = B  # step 0 runs every row
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    N = sum(sizes)
    tensors = [torch.randn(N, 3 * H, generator=gen), torch.randn(B, H, generator=gen),
               torch.randn(2 * H, H, generator=gen) * 0.5, torch.randn(H, H, generator=gen) * 0.5]
    mask = (torch.rand(N, H, generator=gen) > 0.3) / 0.7 if draw(st.booleans()) else None
    hmask = (torch.rand(B, H, generator=gen) > 0.4) / 0.6 if draw(st.booleans()) else None
    return tensors, mask, sizes, hmask, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(case=layers())
def test_compiled_layer_equals_the_python_loops_bit_for_bit(compiled, python_loops, case):
    tensors, mask, sizes, hmask, low = case
    assert model_module._compiled(torch.device("cpu")) is compiled
    fast = _run_layer(*tensors, mask, sizes, hmask, low)
    python_loops(True)
    slow = _run_layer(*tensors, mask, sizes, hmask, low)
    python_loops(False)
    for name, a, b in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fast, slow):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_a_training_step_of_each_size_is_the_same_bits_compiled(compiled, python_loops, size):
    """Forward and backward of a shipped config (dropout masks and all), shrunk to a short batch."""
    config = load_config(size)
    precision = size == "large"  # large trains in bf16-mixed on a CPU with native bf16
    lengths = torch.tensor([9, 7, 7, 4, 2, 2])
    x = torch.randint(2, 28, (6, 9), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, 1).masked_fill(torch.arange(9)[None] >= lengths[:, None], IGNORE)
    results = []
    for python in (False, True):
        python_loops(python)
        torch.manual_seed(3)
        model = GRULanguageModel.from_config(config, vocab_size=28).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision):
            logits, h = model(x, lengths=lengths)
        loss = char_nll(logits.float(), y, IGNORE)[y != IGNORE].mean()
        loss.backward()
        results.append([loss.detach(), h.detach()] + [p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_without_a_compiler_the_python_loops_run_and_say_why(tmp_path):
    """A machine that cannot build it trains on the Python loops (the same bits), and ``why`` says so."""
    code = ("from namegen import recurrence; print(recurrence.ops() is None, '|', recurrence.why())")
    env = {**os.environ, "NAMEGEN_CACHE_DIR": str(tmp_path), "PATH": str(tmp_path), "CXX": "no-such-compiler"}
    env.pop("NAMEGEN_COMPILED", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    none, why = done.stdout.strip().split(" | ")
    assert none == "True" and why.startswith("could not build recurrence.cpp"), done.stdout
