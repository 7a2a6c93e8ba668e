import pytest
import torch

from namegen.config import load_config
from namegen.model import GRUCell, GRULanguageModel


@pytest.mark.parametrize("size, expected", [("small", 79_772), ("medium", 675_996), ("large", 4_155_420)])
def test_parameter_counts_match_the_notebook(size, expected):
    model = GRULanguageModel.from_config(load_config(size), vocab_size=28)
    assert model.num_parameters() == expected


def test_state_dict_keeps_the_notebook_cell_layout():
    cell = GRUCell(5, 7)
    assert set(cell.state_dict()) == {
        "Wx.weight", "Wx.bias", "Wh.weight", "Wzx.weight", "Wzx.bias", "Wzh.weight", "bias_z",
        "Wrx.weight", "Wrx.bias", "Wrh.weight", "bias_r",
    }


def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)


def _equations(cell, x, h):
    """The four equations, transcribed directly from the paper/notebook with raw weights."""
    sig = torch.sigmoid
    r = sig(x @ cell.Wrx.weight.T + cell.Wrx.bias + h @ cell.Wrh.weight.T + cell.bias_r)
    z = sig(x @ cell.Wzx.weight.T + cell.Wzx.bias + h @ cell.Wzh.weight.T + cell.bias_z)
    n = torch.tanh(x @ cell.Wx.weight.T + cell.Wx.bias + (r * h) @ cell.Wh.weight.T)
    return (1 - z) * h + z * n


def test_cell_matches_the_equations():
    cell = GRUCell(6, 9).double()
    _randomize(cell)
    x, h = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    expected = _equations(cell, x, h)
    torch.testing.assert_close(cell(x, h), expected, atol=1e-6, rtol=0)
    gx = cell.input_projection(x[:, None])[:, 0]
    torch.testing.assert_close(cell.fused_step(gx, h, *cell.hidden_weights()), expected, atol=1e-6, rtol=0)


def test_cell_is_not_torch_gru_math():
    """Same weights in nn.GRUCell's layout give different results: the reset gate sits elsewhere."""
    cell = GRUCell(3, 4).double()
    _randomize(cell)
    ref = torch.nn.GRUCell(3, 4).double()
    with torch.no_grad():
        ref.weight_ih.copy_(torch.cat([cell.Wrx.weight, cell.Wzx.weight, cell.Wx.weight]))
        ref.weight_hh.copy_(torch.cat([cell.Wrh.weight, cell.Wzh.weight, cell.Wh.weight]))
        ref.bias_ih.copy_(torch.cat([cell.Wrx.bias + cell.bias_r, cell.Wzx.bias + cell.bias_z, cell.Wx.bias]))
        ref.bias_hh.zero_()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    # torch's own equations (its documentation): the reset gate multiplies the hidden matmul's
    # *output*, and z keeps the old state: n = tanh(W_n x + b_n + r * (W_hn h)), h' = (1 - z) n + z h
    gi, gh = x @ ref.weight_ih.T + ref.bias_ih, h @ ref.weight_hh.T
    r, z = torch.sigmoid(gi[:, :4] + gh[:, :4]), torch.sigmoid(gi[:, 4:8] + gh[:, 4:8])
    torch_math = (1 - z) * torch.tanh(gi[:, 8:] + r * gh[:, 8:]) + z * h
    torch.testing.assert_close(ref(x, h), torch_math, atol=1e-12, rtol=0)
    # namegen's cell is Cho et al.'s, which differs from torch's on the same weights by far more than rounding
    torch.testing.assert_close(cell(x, h), _equations(cell, x, h), atol=1e-12, rtol=0)
    assert (cell(x, h) - torch_math).abs().max() > 0.05


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_sequence_forward_matches_stepping_the_cell(size):
    torch.manual_seed(0)
    model = GRULanguageModel.from_config(load_config(size), vocab_size=11).double().eval()
    idx = torch.randint(0, 11, (3, 5))
    logits, h = model(idx)
    # reference: the plain cell, one step at a time, layer by layer
    x = model.embedding(idx)
    states = []
    for layer in model.layers:
        h_l = torch.zeros(3, model.n_hidden, dtype=torch.float64)
        outs = []
        for t in range(idx.shape[1]):
            h_l = layer(x[:, t], h_l)
            outs.append(h_l)
        x = torch.stack(outs, 1)
        states.append(h_l)
    torch.testing.assert_close(logits, model.head(model.norm(x)), atol=1e-6, rtol=0)
    torch.testing.assert_close(h, torch.stack(states), atol=1e-6, rtol=0)


def test_carrying_the_hidden_state_equals_one_long_forward():
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=2, n_embd=4, n_hidden=8).double().eval()
    idx = torch.randint(0, 9, (2, 6))
    full, _ = model(idx)
    h, parts = None, []
    for t in range(6):
        step, h = model(idx[:, t : t + 1], h)
        parts.append(step)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-9, rtol=0)


def test_dropout_acts_inside_the_recurrence():
    """With dropout, the *next step* sees the dropped state: masks change later steps' inputs."""
    torch.manual_seed(0)
    model = GRULanguageModel(vocab_size=9, n_layer=1, n_embd=4, n_hidden=64, dropout=0.5).train()
    idx = torch.randint(0, 9, (1, 3))
    torch.manual_seed(1)
    logits, h = model(idx)
    # The returned final state is the dropped one: about half its entries are exactly 0.
    zeros = (h == 0).float().mean().item()
    assert 0.2 < zeros < 0.8
