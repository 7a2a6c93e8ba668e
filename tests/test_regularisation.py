"""Regularisation made for recurrent nets (model.Regularisation): exact under the hand-written layer.

Each rate is a config key whose 0 is the notebook's behaviour. With the masks fixed (reseeding the
generator before each call), the fast layer's forward and gradients are those of the equations
written out with plain autograd, gradcheck passes in float64, and evaluation draws no mask.
"""

import pytest
import torch
from torch.func import functional_call

from namegen.config import Config, load_config
from namegen.errors import UserError
from namegen.model import GRULanguageModel, Packing, Regularisation, gru_layer

EVERY = Regularisation(state=0.2, variational=0.3, weight_drop=0.25, embd=0.15, layer=0.2)


def _cell_step(cell, x, h, hm, w_rz, w_h):
    """One step as the equations read, with the hidden matmuls fed hm (h times the variational mask)."""
    H = h.shape[-1]
    r = torch.sigmoid(cell.Wrx(x) + hm @ w_rz[:H].t() + cell.bias_r)  # reset gate
    z = torch.sigmoid(cell.Wzx(x) + hm @ w_rz[H:].t() + cell.bias_z)  # update gate
    n = torch.tanh(cell.Wx(x) + (r * hm) @ w_h.t())  # candidate, from the reset (masked) past
    return (1 - z) * h + z * n  # the carried state interpolates the unmasked h


def _reference_forward(model, idx):
    """The whole model written out step by step, drawing the masks in the model's order: logits, h_last."""
    B, T = idx.shape
    H = model.n_hidden
    x = model.embedding(idx.t())  # (T, B, E)
    mask = model._mask((T, B, x.shape[-1]), model.reg.embd, x)
    x = x if mask is None else x * mask
    finals = []
    for i, cell in enumerate(model.layers):
        if i > 0:
            mask = model._mask((T, B, H), model.reg.layer, x)
            x = x if mask is None else x * mask
        state_mask = model._mask((T, B, H), model.reg.state, x)
        hmask = model._mask((B, H), model.reg.variational, x)
        w_rz, w_h = (model._dropped_weight(w) for w in cell.hidden_weights())
        h, outs = torch.zeros(B, H, dtype=x.dtype), []
        for t in range(T):
            h = _cell_step(cell, x[t], h, h if hmask is None else h * hmask, w_rz, w_h)
            h = h if state_mask is None else h * state_mask[t]
            outs.append(h)
        x = torch.stack(outs)  # (T, B, H)
        finals.append(x[-1])
    mask = model._mask((T, B, H), model.reg.layer, x)
    x = x if mask is None else x * mask
    return model.head(model.norm(x)).transpose(0, 1), torch.stack(finals)


def _model(reg=EVERY, layer_norm=True, **sizes):
    torch.manual_seed(0)
    dims = dict(vocab_size=11, n_layer=2, n_embd=16, n_hidden=32) | sizes
    return GRULanguageModel(**dims, layer_norm=layer_norm, reg=reg).double().train()


def test_every_regulariser_matches_the_written_out_equations():
    """Forward and every parameter's gradient, float64, all five regularisers on at once."""
    model = _model()
    idx = torch.randint(0, 11, (8, 9))
    torch.manual_seed(5)
    logits, h = model(idx)
    (logits.square().mean() + h.sum()).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(5)  # the same masks
    ref_logits, ref_h = _reference_forward(model, idx)
    torch.testing.assert_close(logits, ref_logits, atol=1e-10, rtol=0)
    (ref_logits.square().mean() + ref_h.sum()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, atol=1e-10, rtol=1e-8, msg=n)


@pytest.mark.parametrize("name", ["state", "variational", "weight_drop", "embd", "layer"])
def test_each_regulariser_acts_alone_and_matches_the_equations(name):
    reg = Regularisation(**{name: 0.3})
    model = _model(reg=reg, n_embd=6, n_hidden=8)
    idx = torch.randint(0, 11, (4, 6))
    torch.manual_seed(1)
    logits, _ = model(idx)
    torch.manual_seed(1)
    ref, _ = _reference_forward(model, idx)
    torch.testing.assert_close(logits, ref, atol=1e-10, rtol=0)
    plain = _model(reg=Regularisation(), n_embd=6, n_hidden=8)
    assert not torch.allclose(plain(idx)[0], logits)  # the regulariser really changed the forward


def test_gradcheck_whole_model_with_every_regulariser_and_padding():
    """gradcheck of every parameter and h0 through the packed (padding-free) path, masks fixed."""
    model = _model(n_embd=3, n_hidden=4, vocab_size=7)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    idx = torch.randint(0, 7, (3, 5))
    lengths = torch.tensor([3, 5, 2])
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(h, *ps):
        torch.manual_seed(123)  # the same masks on every call
        logits, h_last = functional_call(model, dict(zip(names, ps)), (idx, h), {"lengths": lengths})
        return logits, h_last

    assert torch.autograd.gradcheck(f, (h0, *params))


def test_gradcheck_layer_with_a_variational_mask_and_lengths():
    """The hand-written backward alone, packed rows, a fixed per-name mask and a state mask."""
    gen = torch.Generator().manual_seed(0)
    T, B, H = 4, 3, 5
    pack = Packing(torch.tensor([4, 2, 1]), T)
    N = sum(pack.batch_sizes)
    gates_in = torch.randn(N, 3 * H, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w_rz = (torch.randn(2 * H, H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    w_h = (torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    hmask = (torch.rand(B, H, generator=gen, dtype=torch.float64) > 0.4) / 0.6
    mask = (torch.rand(N, H, generator=gen, dtype=torch.float64) > 0.3) / 0.7
    assert 0 < (hmask == 0).sum() < hmask.numel()

    def layer(g, h, a, b):
        return gru_layer(g, h, a, b, mask, pack.batch_sizes, hmask)

    assert torch.autograd.gradcheck(layer, (gates_in, h0, w_rz, w_h))


def test_padded_and_packed_paths_drop_the_same_units():
    """With every regulariser on, skipping padding changes nothing at the real positions."""
    model = _model()
    idx = torch.randint(0, 11, (5, 7))
    lengths = torch.tensor([7, 3, 5, 1, 6])
    torch.manual_seed(9)
    packed, h_packed = model(idx, lengths=lengths)
    model.skip_padding = False
    torch.manual_seed(9)
    padded, h_padded = model(idx, lengths=lengths)
    valid = torch.arange(7)[None, :] < lengths[:, None]
    torch.testing.assert_close(packed[valid], padded[valid], atol=1e-12, rtol=0)
    torch.testing.assert_close(h_packed, h_padded, atol=1e-12, rtol=0)


def test_evaluation_draws_no_mask():
    """eval(): the same logits every call, and those of the same weights with no regulariser."""
    model = _model().eval()
    plain = _model(reg=Regularisation()).eval()
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 11, (4, 6))
    first = model(idx)[0]
    torch.testing.assert_close(model(idx)[0], first, atol=0, rtol=0)
    torch.testing.assert_close(plain(idx)[0], first, atol=0, rtol=0)


def test_variational_mask_is_one_per_name_for_all_its_steps():
    """A unit the mask drops is missing from every step's hidden matmul of that name: with W_rz and
    W_h nonzero only in that unit's column, the mask makes the hidden terms vanish at every step."""
    model = GRULanguageModel(vocab_size=5, n_layer=1, n_embd=3, n_hidden=6,
                             reg=Regularisation(variational=0.5)).double().train()
    cell = model.layers[0]
    with torch.no_grad():
        for w in (cell.Wrh.weight, cell.Wzh.weight, cell.Wh.weight):
            w.zero_()
            w[:, 2] = 1.0  # only unit 2 of h enters the hidden matmuls
    idx = torch.randint(0, 5, (64, 8))
    torch.manual_seed(4)
    hmask = model._mask((64, 6), 0.5, torch.empty(0, dtype=torch.float64))
    torch.manual_seed(4)
    logits = model(idx)[0]
    no_hidden = GRULanguageModel(vocab_size=5, n_layer=1, n_embd=3, n_hidden=6).double()
    no_hidden.load_state_dict(model.state_dict())
    with torch.no_grad():
        for w in (no_hidden.layers[0].Wrh.weight, no_hidden.layers[0].Wzh.weight, no_hidden.layers[0].Wh.weight):
            w.zero_()
    dropped = hmask[:, 2] == 0  # names whose unit 2 is dropped: for all steps, as if W_h* were zero
    assert 0 < dropped.sum() < 64
    torch.testing.assert_close(logits[dropped], no_hidden(idx[dropped])[0], atol=1e-12, rtol=0)
    assert not torch.allclose(logits[~dropped], no_hidden(idx[~dropped])[0])


def test_a_config_without_the_new_keys_is_the_notebooks_regularisation():
    """Configs and checkpoints from before these keys load with every new rate 0, and the model
    draws exactly the masks it drew before (state dropout only), so old runs resume unchanged."""
    raw = load_config("medium").to_dict()
    for key in ("variational_dropout", "weight_drop", "embd_dropout", "layer_dropout", "split_seed"):
        raw.pop(key)
    config = Config.from_dict(raw)
    assert (config.variational_dropout, config.weight_drop, config.embd_dropout, config.layer_dropout) == (0, 0, 0, 0)
    assert config.data_seed == config.seed
    new = GRULanguageModel.from_config(config.replace(n_embd=8, n_hidden=16), vocab_size=9).train()
    old = GRULanguageModel(9, n_layer=2, n_embd=8, n_hidden=16, dropout=config.dropout).train()
    old.load_state_dict(new.state_dict())
    idx = torch.randint(0, 9, (4, 5))
    torch.manual_seed(2)
    a = new(idx)[0]
    torch.manual_seed(2)
    torch.testing.assert_close(old(idx)[0], a, atol=0, rtol=0)


@pytest.mark.parametrize("key", ["variational_dropout", "weight_drop", "embd_dropout", "layer_dropout", "dropout"])
def test_rates_outside_0_to_1_are_refused(key):
    raw = load_config("small").to_dict() | {key: 1.0}
    with pytest.raises(UserError, match=f"{key} must be in"):
        Config.from_dict(raw)


@pytest.mark.parametrize("size, expected", [("small", 79_772), ("medium", 675_996), ("large", 4_155_420)])
def test_regularisers_never_change_the_parameter_count(size, expected):
    config = load_config(size).replace(dropout=0.3, variational_dropout=0.3, weight_drop=0.5, embd_dropout=0.1,
                                       layer_dropout=0.4)
    assert GRULanguageModel.from_config(config, vocab_size=28).num_parameters() == expected


def test_weight_drop_masks_the_hidden_matrices_only():
    model = _model(reg=Regularisation(weight_drop=0.5))
    w_rz, w_h = model.layers[0].hidden_weights()
    torch.manual_seed(0)
    dropped = model._dropped_weight(w_rz)
    zero = dropped == 0
    assert 0.4 < zero.double().mean() < 0.6
    torch.testing.assert_close(dropped[~zero], w_rz[~zero] * 2, atol=1e-12, rtol=0)
    assert model.eval()._dropped_weight(w_rz) is w_rz
