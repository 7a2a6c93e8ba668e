"""The GRU language model: plain ``nn.Module``s, no Lightning here.

The cell is the original GRU of Cho et al. (2014), as in the notebook: the
reset gate multiplies the previous state *before* the hidden matmul, which is
not the math of ``torch.nn.GRU`` (that applies it after).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GRUCell(nn.Module):
    """One GRU step with the notebook's parameters and state_dict keys.

    Input maps carry a bias, hidden maps none, and the update and reset gates
    each have one extra bias vector (``bias_z``, ``bias_r``), as the notebook.
    """

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.n_in, self.n_hidden = n_in, n_hidden
        # candidate state
        self.Wx = nn.Linear(n_in, n_hidden, bias=True)
        self.Wh = nn.Linear(n_hidden, n_hidden, bias=False)
        # update gate
        self.Wzx = nn.Linear(n_in, n_hidden, bias=True)
        self.Wzh = nn.Linear(n_hidden, n_hidden, bias=False)
        self.bias_z = nn.Parameter(torch.zeros(n_hidden))
        # reset gate
        self.Wrx = nn.Linear(n_in, n_hidden, bias=True)
        self.Wrh = nn.Linear(n_hidden, n_hidden, bias=False)
        self.bias_r = nn.Parameter(torch.zeros(n_hidden))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step, written as the equations. x: (B, n_in), h: (B, H) -> (B, H)."""
        r = torch.sigmoid(self.Wrx(x) + self.Wrh(h) + self.bias_r)  # reset gate: how much past enters ñ
        z = torch.sigmoid(self.Wzx(x) + self.Wzh(h) + self.bias_z)  # update gate: how much ñ replaces h
        n = torch.tanh(self.Wx(x) + self.Wh(r * h))  # candidate ñ, from the *reset* past
        return (1 - z) * h + z * n  # interpolate old state and candidate

    # -- the same math, fused for speed ------------------------------------------------
    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """All time steps' input-side terms in one matmul. x: (B, T, n_in) -> (B, T, 3H).

        Columns are [reset | update | candidate]; the gate biases are folded in.
        """
        weight = torch.cat([self.Wrx.weight, self.Wzx.weight, self.Wx.weight])  # (3H, n_in)
        bias = torch.cat([self.Wrx.bias + self.bias_r, self.Wzx.bias + self.bias_z, self.Wx.bias])  # (3H,)
        return F.linear(x, weight, bias)

    def hidden_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_rz (2H, H), W_h (H, H)): the two hidden-side matmuls a step needs."""
        return torch.cat([self.Wrh.weight, self.Wzh.weight]), self.Wh.weight

    @staticmethod
    def fused_step(gx: torch.Tensor, h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        """One step from precomputed input terms. gx: (B, 3H), h: (B, H) -> (B, H)."""
        H = h.shape[-1]
        rz = torch.sigmoid(gx[:, : 2 * H] + h @ w_rz.t())  # (B, 2H): reset and update gates
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(gx[:, 2 * H :] + (r * h) @ w_h.t())  # (B, H): candidate
        return h + z * (n - h)  # == (1 - z) * h + z * n


class GRULanguageModel(nn.Module):
    """Embedding -> n_layer GRU layers -> (LayerNorm) -> linear head over the vocabulary.

    One class for every size; ``configs/*.yaml`` choose the widths. Dropout acts
    on each step's hidden state inside the recurrence (the next step sees the
    dropped state), as in the notebook.
    """

    def __init__(
        self,
        vocab_size: int,
        n_layer: int,
        n_embd: int,
        n_hidden: int,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.vocab_size, self.n_layer, self.n_embd, self.n_hidden = vocab_size, n_layer, n_embd, n_hidden
        self.embedding = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList(
            GRUCell(n_embd if i == 0 else n_hidden, n_hidden) for i in range(n_layer)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(n_hidden) if layer_norm else nn.Identity()
        self.head = nn.Linear(n_hidden, vocab_size)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "GRULanguageModel":
        return cls(
            vocab_size,
            n_layer=config.n_layer,
            n_embd=config.n_embd,
            n_hidden=config.n_hidden,
            dropout=config.dropout,
            layer_norm=config.layer_norm,
        )

    def init_hidden(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(self.n_layer, batch, self.n_hidden, device=device, dtype=self.head.weight.dtype)

    def forward(self, idx: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """idx: (B, T) token ids, h: (n_layer, B, H) or None -> logits (B, T, V), h (n_layer, B, H)."""
        B, T = idx.shape
        if h is None:
            h = self.init_hidden(B, idx.device)
        x = self.embedding(idx)  # (B, T, n_embd)
        h_last = []
        for layer, h_l in zip(self.layers, h):
            gx = layer.input_projection(x)  # (B, T, 3H), every step at once
            w_rz, w_h = layer.hidden_weights()
            outputs = []
            for gx_t in gx.unbind(1):  # gx_t: (B, 3H)
                h_l = self.dropout(layer.fused_step(gx_t, h_l, w_rz, w_h))  # (B, H)
                outputs.append(h_l)
            x = torch.stack(outputs, dim=1)  # (B, T, H): this layer's states feed the next
            h_last.append(h_l)
        logits = self.head(self.norm(x))  # (B, T, V)
        return logits, torch.stack(h_last)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
