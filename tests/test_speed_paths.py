"""The fast paths compute the same thing as the plain cell: hand-written backward, dropout, torch.compile."""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="needs Hypothesis: pip install -r requirements.txt")
from hypothesis import given, settings, strategies as st  # noqa: E402
from torch.func import functional_call  # noqa: E402

from namegen.model import GRUCell, GRULanguageModel, compile_model, gru_layer  # noqa: E402


def _layer_inputs(T=4, B=3, n_in=5, H=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cell = GRUCell(n_in, H).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    x = torch.randn(T, B, n_in, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    return cell, x, h0


def _reference_layer(cell, x, h0, mask=None):
    """The readable cell, one step at a time, with plain autograd: (T, B, H)."""
    outs, h = [], h0
    for t in range(x.shape[0]):
        h = cell(x[t], h)
        if mask is not None:
            h = h * mask[t]
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_layer_recurrence(with_mask):
    """float64 gradcheck of the hand-written backward w.r.t. the input, h0 and every weight."""
    cell, x, h0 = _layer_inputs()
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    mask = None
    if with_mask:  # a fixed dropout mask (p = 0.4), scaled as nn.Dropout scales
        mask = (torch.rand(T, B, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64) > 0.4) / 0.6
        assert 0 < (mask == 0).sum() < mask.numel()
    w_in, b_in = (w.detach().requires_grad_() for w in cell.input_weights())
    w_rz, w_h = (w.detach().requires_grad_() for w in cell.hidden_weights())
    x, h0 = x.requires_grad_(), h0.requires_grad_()

    def layer(x, w_in, b_in, h0, w_rz, w_h):
        return gru_layer(torch.nn.functional.linear(x, w_in, b_in), h0, w_rz, w_h, mask)

    assert torch.autograd.gradcheck(layer, (x, w_in, b_in, h0, w_rz, w_h))
    # and the forward is the plain cell stepped with the mask applied to each new state
    torch.testing.assert_close(layer(x, w_in, b_in, h0, w_rz, w_h), _reference_layer(cell, x, h0, mask),
                               atol=1e-10, rtol=0)


def test_gradcheck_whole_model_with_dropout_and_layers():
    """Every parameter of a 2-layer model with dropout and LayerNorm, masks fixed by reseeding each call."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=7, n_layer=2, n_embd=3, n_hidden=4, dropout=0.3, layer_norm=True)
    model = model.double().train()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    idx = torch.randint(0, 7, (2, 5))
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(h, *ps):
        torch.manual_seed(123)  # the same dropout masks on every call
        logits, h_last = functional_call(model, dict(zip(names, ps)), (idx, h))
        return logits, h_last

    torch.manual_seed(123)
    _, h_last = model(idx, h0.detach())
    assert (h_last == 0).any()  # dropout really acts in this configuration
    assert torch.autograd.gradcheck(f, (h0, *params))


def test_model_gradients_match_plain_autograd_at_size():
    """At a realistic width the custom backward gives the gradients plain autograd gives (float64, dropout on)."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=11, n_layer=2, n_embd=16, n_hidden=32, dropout=0.2).double().train()
    idx = torch.randint(0, 11, (8, 9))
    torch.manual_seed(5)
    logits, h = model(idx)
    (logits.square().mean() + h.sum()).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # reference: the readable GRUCell stepped with plain autograd, the same masks (same RNG draws)
    torch.manual_seed(5)
    B, T = idx.shape
    x = model.embedding(idx.t())
    finals = []
    for layer in model.layers:
        mask = model._dropout_mask(T, B, x)
        x = _reference_layer(layer, x, torch.zeros(B, 32, dtype=torch.float64), mask)
        finals.append(x[-1])
    ref_logits = model.head(model.norm(x)).transpose(0, 1)
    torch.testing.assert_close(ref_logits, logits, atol=1e-10, rtol=0)
    (ref_logits.square().mean() + torch.stack(finals).sum()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, atol=1e-10, rtol=1e-8, msg=n)


def test_dropout_mask_rate_and_scale():
    model = GRULanguageModel(vocab_size=5, n_layer=1, n_embd=2, n_hidden=100, dropout=0.25).train()
    mask = model._dropout_mask(50, 8, torch.empty(0))
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.75)
    assert abs((mask == 0).float().mean().item() - 0.25) < 0.02
    assert model.eval()._dropout_mask(50, 8, torch.empty(0)) is None


def test_eval_and_no_grad_paths_agree():
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8, dropout=0.5).eval()
    idx = torch.randint(0, 9, (3, 6))
    with_grad, h1 = model(idx)
    with torch.no_grad():
        no_grad, h2 = model(idx)
    torch.testing.assert_close(with_grad, no_grad, atol=0, rtol=0)
    torch.testing.assert_close(h1, h2, atol=0, rtol=0)


def _train_step_grads(model, idx):
    logits, h = model(idx)
    (logits.square().mean() + h.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return logits.detach(), h.detach(), grads


def _check_compiled_matches_eager(backend):
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8, layer_norm=True)
    idx = torch.randint(0, 9, (3, 6))
    ref = _train_step_grads(model, idx)
    compile_model(model, "cpu", backend=backend)
    assert model._compiled_call_impl is not None  # calls now go through torch.compile
    got = _train_step_grads(model, idx)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5, msg=name)
    with torch.no_grad():  # the sampling path: one step, hidden carried
        step, _ = model(idx[:, :1])  # compiled
        eager, _ = GRULanguageModel.forward(model, idx[:, :1])  # bypasses the compiled call
        torch.testing.assert_close(step, eager, atol=1e-5, rtol=1e-5)
    assert "embedding.weight" in model.state_dict()  # checkpoints keep their keys


def test_compiled_model_matches_eager():
    """The --compile path (dynamo tracing, aot_eager backend: no code generation, seconds on a CPU)."""
    _check_compiled_matches_eager("aot_eager")


@pytest.mark.slow  # inductor generates and compiles C++: minutes on a small CPU, so not in the inner loop
def test_compiled_model_matches_eager_inductor():
    _check_compiled_matches_eager(None)


def test_sampling_bookkeeping_when_finished_names_leave_the_batch():
    """Each sampled name's returned log-probability equals the model's score of that name plus the end token."""
    from namegen.data import END
    from namegen.sampling import sample_ids

    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=6, n_layer=2, n_embd=4, n_hidden=8).double()
    with torch.no_grad():
        model.head.bias[END] += 1.5  # names end at varied steps, so rows leave the batch at different times
    ids, logprob = sample_ids(model, 64, max_len=12, generator=torch.Generator().manual_seed(1))
    lengths = [len(r) for r in ids]
    assert len(set(lengths)) > 3 and max(lengths) <= 12 and all(0 not in r and END not in r for r in ids)
    with torch.no_grad():
        for row, lp in zip(ids, logprob.tolist()):
            seq = torch.tensor([[END] + row])  # inputs: the start token, then the name
            logp = torch.log_softmax(model(seq)[0][0], -1)  # (len + 1, V)
            targets = row + [END]
            expected = sum(logp[t, c].item() for t, c in enumerate(targets))
            assert lp == pytest.approx(expected, abs=1e-5)  # sampling sums in float32


_U_MAX = 1 - 2**-24  # the largest number torch.rand gives in float32


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1e-40, 1e-30, 1e-7, 0.5, 1.0, 3.0, 1e20]), min_size=1, max_size=30)
                .filter(lambda row: max(row) >= 1e-30), min_size=1, max_size=8),
       st.data())
def test_inverse_cdf_draw_takes_the_first_token_past_u_and_never_one_of_probability_zero(rows, data):
    """``_pick``: each row's first token whose running total (float32, as drawn) exceeds u x the row's total,
    for u anywhere in [0, 1) including torch.rand's largest number; never a token of probability 0, never
    out of range: rows of any length, entries from subnormal to 1e20, one token of mass or many (a row's
    total a normal float, as softmax's, whose largest entry is at least 1 / V)."""
    from namegen.sampling import _pick

    width = max(map(len, rows))
    probs = torch.tensor([row + [0.0] * (width - len(row)) for row in rows], dtype=torch.float32)  # (m, V)
    u = torch.tensor([[data.draw(st.sampled_from([0.0, 0.5, _U_MAX]) | st.floats(0, _U_MAX))] for _ in rows],
                     dtype=torch.float32)  # (m, 1)
    got = _pick(probs, u).tolist()
    cdf = probs.cumsum(-1)
    for i, j in enumerate(got):
        v = float(u[i, 0] * cdf[i, -1])
        assert 0 <= j < width and probs[i, j] > 0
        assert cdf[i, j] > v and (j == 0 or cdf[i, j - 1] <= v)  # the first past v


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 3), (1.6, None)])
def test_draws_follow_the_softmax_of_the_scores(temperature, top_k, device):
    """200,000 draws from one row of logits: each token's share is its probability (softmax of logits /
    temperature, top-k kept, renormalised) within 5 standard errors; padding and the masked tokens never come.
    On a GPU too, whose cumsum is a parallel scan (unmeasured: no GPU has been lent)."""
    from namegen.data import PAD
    from namegen.sampling import _draw

    logits = torch.tensor([[4.0, 0.3, -1.0, 2.0, 0.0, 1.2, -3.0]])  # (1, V); token 0 is padding
    n = 200_000
    drawn = _draw(logits.expand(n, -1).clone().to(device), t=1, max_len=12, min_len=1, temperature=temperature,
                  top_k=top_k, generator=torch.Generator(device=device).manual_seed(3)).cpu()  # (n,)
    scores = (logits[0] / temperature).double()
    scores[PAD] = float("-inf")
    if top_k is not None:
        scores[scores < scores.topk(top_k).values[-1]] = float("-inf")
    p = torch.softmax(scores, -1)  # (V,)
    share = torch.bincount(drawn, minlength=len(p)).double() / n
    assert share[p == 0].sum() == 0
    se = (p * (1 - p) / n).sqrt()
    assert ((share - p).abs() <= 5 * se + 1e-12).all(), (share, p)


# ------------------------------------------------------------------------ no compute on padding


def _padded_batch(lengths, V=9, seed=0):
    """Token ids (B, T) and targets (B, T) padded as NameBatches pads them: 0 / -100 after each row's length."""
    from namegen.data import IGNORE, PAD

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    B, T = len(lengths), int(lengths.max())
    x, y = torch.randint(1, V, (B, T), generator=gen), torch.randint(1, V, (B, T), generator=gen)
    real = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    return x.masked_fill(~real, PAD), y.masked_fill(~real, IGNORE), lengths


def _loss_and_grads(model, x, y, lengths):
    """The training loss (mean NLL per predicted character) and every parameter's gradient."""
    model.zero_grad()
    torch.manual_seed(7)  # the same dropout masks on both paths
    logits, h = model(x, lengths=lengths)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, logits.detach(), h.detach()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("lengths", [[7, 7, 5, 4, 4, 2, 1], [3, 7, 1, 5, 7, 2, 4]], ids=["sorted", "unsorted"])
def test_skipping_padding_gives_the_padded_loss_and_gradients(dtype, tol, dropout, lengths):
    """Packed (lengths given) and padded (lengths=None) batches of the same names: same loss, same grads."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8, dropout=dropout, layer_norm=True)
    model = model.to(dtype).train()
    x, y, lengths = _padded_batch(lengths)
    loss, grads, logits, _ = _loss_and_grads(model, x, y, None)
    p_loss, p_grads, p_logits, h = _loss_and_grads(model, x, y, lengths)
    torch.testing.assert_close(p_loss, loss, atol=tol, rtol=tol)
    for name in grads:
        torch.testing.assert_close(p_grads[name], grads[name], atol=tol, rtol=tol, msg=name)
    real = y != -100
    torch.testing.assert_close(p_logits[real], logits[real], atol=tol, rtol=tol)
    assert (p_logits[~real] == 0).all()  # padding: no compute, finite zeros
    # h: each row's state after its own last character, as running that row alone and unpadded gives
    if dropout == 0:
        for b, L in enumerate(lengths.tolist()):
            _, h_alone = model(x[b : b + 1, :L])
            torch.testing.assert_close(h[:, b], h_alone[:, 0], atol=tol, rtol=tol)


def test_skipping_padding_without_padding_is_the_padded_path():
    """A batch of equal lengths packs into exactly the (T, B) layout: bit-for-bit the same results."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8, dropout=0.3).train()
    x, y, lengths = _padded_batch([6, 6, 6])
    a, b = _loss_and_grads(model, x, y, None), _loss_and_grads(model, x, y, lengths)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])
    assert all(torch.equal(a[1][n], b[1][n]) for n in a[1])


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_layer_with_lengths(with_mask):
    """float64 gradcheck of the hand-written backward on packed rows (names that end at different steps)."""
    from namegen.model import Packing

    cell, x, h0 = _layer_inputs(T=5, B=4)
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    pack = Packing(torch.tensor([5, 3, 3, 1]), T)
    assert pack.batch_sizes == [4, 3, 3, 1, 1] and pack.order is None
    xp = x[pack.valid]  # (N, n_in): real positions, time-major
    mask = None
    if with_mask:
        mask = (torch.rand(T, B, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64) > 0.4) / 0.6
        mask = mask[pack.valid].double()
    w_in, b_in = (w.detach().requires_grad_() for w in cell.input_weights())
    w_rz, w_h = (w.detach().requires_grad_() for w in cell.hidden_weights())
    xp, h0 = xp.requires_grad_(), h0.requires_grad_()

    def layer(xp, w_in, b_in, h0, w_rz, w_h):
        gates_in = torch.nn.functional.linear(xp, w_in, b_in)  # (N, 3H)
        return gru_layer(gates_in, h0, w_rz, w_h, mask, pack.batch_sizes)

    assert torch.autograd.gradcheck(layer, (xp, w_in, b_in, h0, w_rz, w_h))
    # the forward is the plain cell stepped over each row's own positions only
    out = layer(xp, w_in, b_in, h0, w_rz, w_h)
    full_mask = None
    if with_mask:
        full_mask = torch.zeros(T, B, H, dtype=torch.float64).masked_scatter(pack.valid[..., None], mask)
    ref = _reference_layer(cell, x, h0, full_mask)  # (T, B, H), running through the padding too
    torch.testing.assert_close(out, ref[pack.valid], atol=1e-10, rtol=0)  # equal where the rows are real


def test_compiled_model_computes_padding_with_the_same_results():
    """compile_model turns skip_padding off (per-batch step counts would recompile); same results."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8, layer_norm=True)
    x, y, lengths = _padded_batch([6, 4, 4, 2, 1])
    ref = _loss_and_grads(model, x, y, lengths)
    compile_model(model, "cpu", backend="aot_eager")
    assert not model.skip_padding
    got = _loss_and_grads(model, x, y, lengths)
    torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[3], ref[3], atol=1e-6, rtol=1e-6)  # h at each row's last character
    for name in ref[1]:
        torch.testing.assert_close(got[1][name], ref[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_batches_come_longest_first_and_pass_lengths():
    """NameBatches sorts a batch's rows (so the model need not), and training skips the padding."""
    from namegen.config import load_config
    from namegen.data import NameBatches, Vocab, encode_names
    from namegen.module import NameGenModule

    names = ["bo", "alexandra", "eve", "christopher", "al"]
    vocab = Vocab.from_names(names)
    x, y = NameBatches(*encode_names(names, vocab))[[0, 1, 2, 3, 4]]
    lengths = (y != -100).sum(1)
    assert lengths.tolist() == [12, 10, 4, 3, 3] and x.shape == (5, 12)
    module = NameGenModule(load_config("small").replace(n_embd=4, n_hidden=8), vocab.chars)
    seen = []
    original = module.model._packed_logits

    def spy(idx, h, lengths):
        logits, h_last, pack = original(idx, h, lengths)
        seen.append((lengths, pack, logits.shape[0]))
        return logits, h_last, pack
    module.model._packed_logits = spy
    nll = module._token_nll((x, y))
    got, pack, rows = seen[0]
    assert got.tolist() == lengths.tolist()
    assert pack.order is None  # already longest first: the model sorts nothing
    assert rows == nll.numel() == int(lengths.sum())  # the head and the loss ran on the real positions only


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=9), st.integers(0, 2), st.integers(0, 1000))
def test_packing_rows_and_cells_gather_what_sorting_and_masking_give(lens, extra_t, seed):
    """Packing.rows / .cells pick, from the caller's unsorted (T, B, ...) and (B, T) tensors, exactly the values
    that sorting the rows longest first and masking with ``valid`` pick: the packed real positions."""
    from namegen.model import Packing

    T, B = max(lens) + extra_t, len(lens)
    pack = Packing(torch.tensor(lens), T)
    gen = torch.Generator().manual_seed(seed)
    tb = torch.randint(-99, 99, (T, B, 3), generator=gen)  # e.g. dropout draws, time-major
    bt = torch.randint(-99, 99, (B, T), generator=gen)  # e.g. token ids or targets
    assert torch.equal(tb.view(T * B, 3).index_select(0, pack.rows), pack.sort(tb, 1)[pack.valid])
    assert torch.equal(bt.reshape(-1).index_select(0, pack.cells), pack.sort(bt, 0).t()[pack.valid])
    assert pack.rows.numel() == sum(lens) == sum(pack.batch_sizes)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 50.0, float("nan")])
def test_clipping_of_a_fused_optimizer_is_torchs_clip_grad_norm_bit_for_bit(scale):
    """NameGenModule clips a fused optimizer's gradients itself (Lightning refuses to), leaving out the multiply
    by exactly 1.0 below the limit: the gradients are clip_grad_norm_'s, below and above it, and NaN."""
    from namegen.config import load_config
    from namegen.module import NameGenModule

    module = NameGenModule(load_config("small"), list("abcdefghijklmnopqrstuvwxyz"))
    params = list(module.parameters())
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * scale for p in params]
    optimizer = torch.optim.AdamW(params, fused=True)

    for p, g in zip(params, grads):
        p.grad = g.clone()
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    ours = [p.grad.clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for a, b in zip(ours, (p.grad for p in params)):
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all())
    if scale == 50.0:  # above the limit the gradients were scaled down
        assert not torch.equal(ours[0], grads[0])
