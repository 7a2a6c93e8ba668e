"""The compiled recurrence: recurrence.cpp gives the Python loops' results bit for bit, and the fused
kernels (fused_f32.cpp in float32, fused_bf16.cpp under bf16 autocast) give them to float32 tolerance, as
accurately as the loops they replace.

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


@pytest.fixture
def unfused(monkeypatch):
    """Run recurrence.cpp's replay of the Python loops instead of fused_f32.cpp and fused_bf16.cpp."""
    monkeypatch.setattr(model_module, "_fused", lambda low, h0: None)


def _run_layer(gates_in, h0, w_rz, w_h, mask, sizes, hmask, low):
    """out and the gradients of (gates_in, h0, w_rz, w_h) for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (gates_in, h0, w_rz, w_h)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
        out = gru_layer(*leaves, mask=mask, batch_sizes=sizes, hmask=hmask)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.dtype)
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
def test_compiled_layer_equals_the_python_loops_bit_for_bit(compiled, python_loops, unfused, case):
    tensors, mask, sizes, hmask, low = case
    assert model_module._compiled(torch.device("cpu")) is compiled
    fast = _run_layer(*tensors, mask, sizes, hmask, low)
    python_loops(True)
    slow = _run_layer(*tensors, mask, sizes, hmask, low)
    python_loops(False)
    for name, a, b in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fast, slow):
        assert torch.equal(a, b), name


def _training_step(size: str, python: bool, python_loops) -> list[torch.Tensor]:
    """Loss, final states and every gradient of one step of a shipped config (dropout masks and all), on a
    short batch; in bf16 autocast for large, as it trains on a CPU with native bf16."""
    config = load_config(size)
    lengths = torch.tensor([9, 7, 7, 4, 2, 2])
    x = torch.randint(2, 28, (6, 9), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, 1).masked_fill(torch.arange(9)[None] >= lengths[:, None], IGNORE)
    python_loops(python)
    torch.manual_seed(3)
    model = GRULanguageModel.from_config(config, vocab_size=28).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=size == "large"):
        logits, h = model(x, lengths=lengths)
    loss = char_nll(logits.float(), y, IGNORE)[y != IGNORE].mean()
    loss.backward()
    return [loss.detach(), h.detach()] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_a_training_step_of_each_size_is_the_same_bits_compiled(compiled, python_loops, unfused, size):
    """Forward and backward of a shipped config, shrunk to a short batch: recurrence.cpp's replay."""
    fast, slow = (_training_step(size, python, python_loops) for python in (False, True))
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


@pytest.mark.parametrize("size, loss_tol, grad_tol", [("small", 1e-6, 1e-4), ("medium", 1e-6, 1e-4),
                                                     ("large", 1e-4, 0.02)])
def test_a_training_step_fused_tracks_the_python_loops(compiled, python_loops, size, loss_tol, grad_tol):
    """Each size's step through its fused kernel (small and medium: fused_f32.cpp; large: fused_bf16.cpp):
    the loss, and each gradient to a fraction of its norm (bf16's products make large's looser)."""
    fast, slow = (_training_step(size, python, python_loops) for python in (False, True))
    assert abs(float(fast[0]) - float(slow[0])) < loss_tol
    for a, b in zip(fast[1:], slow[1:]):
        assert (a - b).norm() <= grad_tol * b.norm() + 1e-6


def _fused_loops_and_exact(case, python_loops, low=True):
    """(float64 result, the Python loops' result, the fused kernel's result) of one layer case; under bf16
    autocast (fused_bf16.cpp) or in float32 (fused_f32.cpp)."""
    tensors, mask, sizes, hmask = case
    python_loops(False)
    fused = _run_layer(*tensors, mask, sizes, hmask, low)
    python_loops(True)
    loops = _run_layer(*tensors, mask, sizes, hmask, low)
    exact = _run_layer(*(t.double() for t in tensors), mask if mask is None else mask.double(), sizes,
                       hmask if hmask is None else hmask.double(), False)
    python_loops(False)
    return exact, loops, fused


@settings(max_examples=60, deadline=None)
@given(case=layers())
def test_fused_f32_layer_follows_the_math_on_any_packing(compiled, python_loops, case):
    """Every row, step and mask where it belongs, and the chain rule computed inside the backward's loop:
    within float32's rounding of the float64 result."""
    tensors, mask, sizes, hmask, _ = case
    exact, _, fused = _fused_loops_and_exact((tensors, mask, sizes, hmask), python_loops, low=False)
    for name, a, b in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fused, exact):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6, name


@pytest.mark.parametrize("masks", ["none", "state", "variational", "both"])
def test_fused_f32_layer_is_as_accurate_as_the_loops_it_replaces(compiled, python_loops, masks):
    """Against float64, fused_f32.cpp's error is the Python loops' (its sigmoid and tanh are as accurate as
    ATen's), and the two agree on every element to float32 rounding of the tensor's scale."""
    exact, loops, fused = _fused_loops_and_exact(_accuracy_case(masks), python_loops, low=False)
    for name, a, b, c in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fused, loops, exact):
        error_fused, error_loops = ((x.double() - c).norm() / c.norm() for x in (a, b))
        assert 0 < error_loops < 1e-6, name  # float32 throughout
        assert error_fused <= 1.5 * error_loops, name
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), name


def _accuracy_case(masks: str):
    """A layer of 16 names over 9 steps, 64 units, with the masks asked for."""
    gen = torch.Generator().manual_seed(11)
    B, H, sizes = 16, 64, [16, 16, 16, 14, 11, 9, 6, 3, 1]
    N = sum(sizes)
    tensors = [torch.randn(N, 3 * H, generator=gen), torch.randn(B, H, generator=gen),
               torch.randn(2 * H, H, generator=gen) / 8, torch.randn(H, H, generator=gen) / 8]
    mask = (torch.rand(N, H, generator=gen) > 0.2) / 0.8 if masks in ("state", "both") else None
    hmask = (torch.rand(B, H, generator=gen) > 0.4) / 0.6 if masks in ("variational", "both") else None
    return tensors, mask, sizes, hmask


@settings(max_examples=60, deadline=None)
@given(case=layers())
def test_fused_bf16_layer_follows_the_math_on_any_packing(compiled, python_loops, case):
    """Every row, step and mask where it belongs: within bf16's rounding of the float64 result."""
    tensors, mask, sizes, hmask, _ = case
    exact, _, fused = _fused_loops_and_exact((tensors, mask, sizes, hmask), python_loops)
    for name, a, b in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fused, exact):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        assert (a.double() - b).abs().max() <= 0.05 * b.abs().max() + 1e-3, name


@pytest.mark.parametrize("masks", ["none", "state", "variational", "both"])
def test_fused_bf16_layer_is_as_accurate_as_the_loops_it_replaces(compiled, python_loops, masks):
    """Against float64, the fused kernels' error is the Python loops' (both round each product to bf16), and
    the two agree to float32 rounding on most elements. They differ only in sigmoid's and tanh's last
    bits; now and then one tips a product's bf16 rounding, which moves the rest of that one name (names
    never mix) by up to 1e-3, so the agreement is asked of three elements in four, names and units alike.
    (A 1% error in the reset gate's gradient breaks it on every tensor but out.)"""
    exact, loops, fused = _fused_loops_and_exact(_accuracy_case(masks), python_loops)
    for name, a, b, c in zip(["out", "d gates_in", "d h0", "d w_rz", "d w_h"], fused, loops, exact):
        error_fused, error_loops = ((x.double() - c).norm() / c.norm() for x in (a, b))
        assert 0 < error_loops < 0.02, name  # bf16 products: an error well above float32's
        assert error_fused <= 1.5 * error_loops, name
        if name in ("out", "d gates_in", "d h0"):  # one row per name and step (the weights' sum them all)
            relative = (a - b).abs() / (b.abs() + 1e-3)
            assert torch.quantile(relative.flatten(), 0.75) <= 1e-5, name


@pytest.mark.parametrize("low", [True, False], ids=["bf16", "f32"])
def test_fused_elementwise_math_is_float32_exact_without_hidden_products(compiled, low):
    """With zero hidden weights no product is rounded, so a fused step is float32 arithmetic alone:
    h' = lerp(h, tanh(a_n), sigmoid(a_z)) * mask, and its gradients, to a few float32 ulps."""
    gen = torch.Generator().manual_seed(2)
    B, H, sizes = 5, 48, [5, 4, 4, 2]
    N = sum(sizes)
    gates_in, h0 = torch.randn(N, 3 * H, generator=gen) * 3, torch.randn(B, H, generator=gen)
    mask = (torch.rand(N, H, generator=gen) > 0.3) / 0.7
    zeros = [torch.zeros(2 * H, H), torch.zeros(H, H)]
    fused = _run_layer(gates_in, h0, *zeros, mask, sizes, None, low)
    exact = _run_layer(gates_in.double(), h0.double(), *(w.double() for w in zeros), mask.double(), sizes, None,
                       False)
    for name, a, b in zip(["out", "d gates_in", "d h0"], fused, exact):
        assert torch.allclose(a.double(), b, rtol=2e-6, atol=2e-6), name


def test_without_a_compiler_the_python_loops_run_and_say_why(tmp_path):
    """A machine that cannot build it trains on the Python loops (the same bits), and ``why`` says so."""
    code = ("from namegen import recurrence; print(recurrence.ops() is None, '|', recurrence.why())")
    env = {**os.environ, "NAMEGEN_CACHE_DIR": str(tmp_path), "PATH": str(tmp_path), "CXX": "no-such-compiler"}
    env.pop("NAMEGEN_COMPILED", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    none, why = done.stdout.strip().split(" | ")
    assert none == "True" and why.startswith("could not build recurrence.cpp"), done.stdout


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 700), st.integers(0, 2000), st.booleans())
def test_random_bits_are_torch_randints_numbers_and_leave_the_generator_where_it_would(compiled, seed, before, n,
                                                                                        normal):
    """draws.cpp's random_bits(n) is torch.randint(-2**63, 2**63 - 1, (n,)) from the default generator,
    wherever in mt19937's 624-word blocks the generator stands, and torch's next numbers (uniform, and a
    cached normal sample) are the same afterwards."""
    def run(draw):
        torch.manual_seed(seed)
        torch.randint(0, 2**31, (before,))  # somewhere inside a block of the state
        first = torch.randn(1) if normal else None  # a scalar randn leaves a normal sample cached
        bits = draw(n)
        return bits, torch.rand(7), torch.randn(1), first

    ours = run(compiled.random_bits)
    torch_s = run(lambda k: torch.randint(-(2**63), 2**63 - 1, (k,), dtype=torch.int64))
    assert ours[0].dtype == torch.int64 and ours[0].shape == (n,)
    for a, b in zip(ours, torch_s):
        assert (a is None and b is None) or torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3), st.sampled_from([1e-6, 0.02389, 0.5, 0.99, 0.99999]),
       st.integers(0, 2**31), st.booleans(), st.data())
def test_dropout_mask_is_the_three_operators_mask(compiled, shape, p, seed, position, data):
    """draws.cpp's dropout_mask gives _mask's and _position_mask's values (every p: one that keeps every unit,
    one that keeps 1 in 2^16), from the same draws, with the generator left in the same state."""
    from types import SimpleNamespace

    model = GRULanguageModel(vocab_size=5, n_layer=1, n_embd=2, n_hidden=3).train()
    like = torch.empty(0)
    if position:  # (T, B, width) drawn, the rows of real positions picked, in any order
        T, B, width = (shape + [2, 3])[:3]
        rows = data.draw(st.lists(st.integers(0, T * B - 1), unique=True, max_size=T * B))
        pack = SimpleNamespace(rows=torch.tensor(rows, dtype=torch.long))
        make = lambda: model._position_mask(T, B, width, p, like, pack)  # noqa: E731
    else:
        make = lambda: model._mask(tuple(shape), p, like)  # noqa: E731

    def masks():
        torch.manual_seed(seed)
        return make(), torch.rand(3)

    assert model._fused_mask(2, 3, p, like, None) is not None  # the compiled mask, not the operators
    fused = masks()
    original = model_module._compiled
    model_module._compiled = lambda device: None  # the Python operators
    try:
        plain = masks()
    finally:
        model_module._compiled = original
    assert fused[0].dtype == torch.float32 and torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    if p < 2**-17:
        assert bool((plain[0] == 1).all())  # every unit kept, unscaled


def test_dropout_masks_are_the_same_with_and_without_the_compiled_bits(compiled, python_loops):
    """A training step of medium (five kinds of dropout) draws the same masks, so the same loss and gradients,
    whether draws.cpp or torch.randint makes the bits."""
    config = load_config("medium")
    x = torch.randint(2, 28, (16, 9), generator=torch.Generator().manual_seed(1))
    y = x.roll(-1, 1)
    y[8:, 6:] = IGNORE  # names of two lengths

    def step():
        torch.manual_seed(0)
        model = GRULanguageModel.from_config(config, vocab_size=28).train()
        loss = model.nll(x, y, IGNORE).mean()
        loss.backward()
        return loss, [p.grad for p in model.parameters()], torch.rand(3)

    with_bits = step()
    python_loops(True)  # the Python layer and torch.randint
    without = step()
    assert torch.equal(with_bits[2], without[2])  # the generator advanced alike
    torch.testing.assert_close(with_bits[0], without[0], rtol=1e-5, atol=1e-6)  # fused vs loop: float tolerance
    for a, b in zip(with_bits[1], without[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(2, 8), st.integers(8, 48), st.booleans(), st.booleans(), st.integers(0, 999))
def test_fused_bf16_backward_computes_the_chain_rule_as_atens_operators(compiled, steps, names, H, with_mask,
                                                                       with_hmask, seed):
    """fused_bf16.cpp computes the chain rule's factors inside its loop (model._chain_factors' ATen operators
    outside it for the Python loops). At the last step nothing has been accumulated yet, so its rows of
    dgates must be the loops' bit for bit: the factors' arithmetic is ATen's, fused multiply-add included."""
    g = torch.Generator().manual_seed(seed)
    sizes = [names] * steps  # every name runs every step: the last step has all of them
    N = names * steps
    gates = torch.rand(N, 3 * H, generator=g)  # r | z | n in the ranges the forward leaves them
    gates[:, 2 * H :] = gates[:, 2 * H :] * 2 - 1
    out, h0, dout = (torch.randn(n, H, generator=g) for n in (N, names, N))
    mask = (torch.rand(N, H, generator=g) > 0.3).float() / 0.7 if with_mask else None
    hmask = (torch.rand(names, H, generator=g) > 0.4).float() / 0.6 if with_hmask else None
    w_rz, w_h = torch.randn(2 * H, H, generator=g).bfloat16(), torch.randn(H, H, generator=g).bfloat16()

    def last_rows(use_compiled):
        original = model_module._compiled
        try:
            if not use_compiled:
                model_module._compiled = lambda device: None
            dgates = torch.empty(N, 3 * H)
            model_module._backward_steps(dgates, dout.clone(), h0, w_rz, w_h, mask, hmask, out, gates, sizes,
                                         torch.bfloat16)
        finally:
            model_module._compiled = original
        return dgates[N - names :]

    assert torch.equal(last_rows(True), last_rows(False))
