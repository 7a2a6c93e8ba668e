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


# ------------------------------------------------------------------------------- one layer, all steps
#
# Autograd recording every small op of every step costs more than the math at these
# sizes on a CPU, so a whole layer's recurrence is one autograd node with a
# hand-written backward (checked against autograd by gradcheck in float64, see
# tests/test_speed_paths.py). Tensors are time-major, (T, B, ...), so step t is a
# contiguous slice. Per step: forward 2 matmuls, backward 2 matmuls; the weight
# gradients are 3 matmuls over all T*B rows after the backward loop.


def _recurrence(gx, h0, w_rz, w_h, mask, save: bool):
    """Run the fused cell over all steps. Returns out (T, B, H) and (rz, n, q) buffers.

    gx: (T, B, 3H) input terms [reset | update | candidate], biases folded in;
    h0: (B, H); w_rz: (2H, H); w_h: (H, H); mask: (T, B, H) dropout mask already
    scaled by 1/(1-p), or None. out[t] is the (dropped) state step t+1 sees.
    With ``save`` the buffers keep every step (for the backward), else one step.
    """
    T, B, _ = gx.shape
    H = h0.shape[-1]
    out = gx.new_empty(T, B, H)
    steps = T if save else 1
    rz_all = gx.new_empty(steps, B, 2 * H)  # sigmoid gates r | z
    n_all = gx.new_empty(steps, B, H)  # candidate ñ
    q_all = gx.new_empty(steps, B, H)  # r * h_prev, the input of W_h
    w_rz_t, w_h_t = w_rz.t(), w_h.t()
    h = h0
    for t in range(T):
        s = t if save else 0
        g = gx[t]  # (B, 3H)
        rz = torch.addmm(g[:, : 2 * H], h, w_rz_t, out=rz_all[s]).sigmoid_()  # (B, 2H): reset r | update z
        r, z = rz[:, :H], rz[:, H:]
        q = torch.mul(r, h, out=q_all[s])  # (B, H): the reset past r * h
        n = torch.addmm(g[:, 2 * H :], q, w_h_t, out=n_all[s]).tanh_()  # (B, H): candidate ñ
        h_new = torch.sub(n, h, out=out[t]).mul_(z).add_(h)  # (B, H): h + z (ñ - h) == (1 - z) h + z ñ
        if mask is not None:
            h_new.mul_(mask[t])  # dropout inside the recurrence: the next step sees the dropped state
        h = h_new
    return out, (rz_all, n_all, q_all)


class _GRURecurrence(torch.autograd.Function):
    """out = recurrence(gx, h0, w_rz, w_h; mask): one autograd node per layer."""

    @staticmethod
    def forward(ctx, gx, h0, w_rz, w_h, mask):
        out, (rz, n, q) = _recurrence(gx, h0, w_rz, w_h, mask, save=True)
        ctx.save_for_backward(gx, h0, w_rz, w_h, mask, out, rz, n, q)
        return out

    @staticmethod
    def backward(ctx, dout):
        gx, h0, w_rz, w_h, mask, out, rz_all, n_all, q_all = ctx.saved_tensors
        T, B, H = out.shape
        dgx = torch.empty_like(gx)  # (T, B, 3H): grads of the pre-activations [a_r | a_z | a_n]
        dh = torch.zeros_like(h0)  # (B, H): grad reaching h_t from step t+1
        for t in range(T - 1, -1, -1):
            h_prev = out[t - 1] if t > 0 else h0  # (B, H)
            r, z, n = rz_all[t, :, :H], rz_all[t, :, H:], n_all[t]
            dh = dh + dout[t]  # (B, H): total grad of h_t
            if mask is not None:
                dh.mul_(mask[t])  # through the dropout: grad of the undropped h_t
            da_r, da_z, da_n = dgx[t, :, :H], dgx[t, :, H : 2 * H], dgx[t, :, 2 * H :]
            # candidate: h_t = h_prev + z (ñ - h_prev), ñ = tanh(a_n)
            torch.mul(n, n, out=da_n).neg_().add_(1).mul_(z).mul_(dh)  # dL/da_n = dh z (1 - ñ²)
            # update gate: z = sigmoid(a_z)
            torch.sub(n, h_prev, out=da_z).mul_(dh).mul_(z).mul_(1 - z)  # dL/da_z = dh (ñ - h) z (1 - z)
            dq = da_n @ w_h  # (B, H): grad of q = r * h_prev
            # reset gate: r = sigmoid(a_r)
            torch.mul(dq, h_prev, out=da_r).mul_(r).mul_(1 - r)  # dL/da_r = dq h_prev r (1 - r)
            # grad of h_prev: through q, through both gates' hidden matmul, and the direct path
            dh_prev = torch.addmm(dq.mul_(r), dgx[t, :, : 2 * H], w_rz)  # dq r + da_rz @ W_rz
            dh = dh_prev.add_(dh * (1 - z))  # + dh (1 - z)
        # weight gradients, batched over all steps: dW = sum_t da_t^T @ input_t
        da_rz = dgx[:, :, : 2 * H].reshape(T * B, 2 * H)  # (T*B, 2H)
        dw_rz = torch.mm(dgx[0, :, : 2 * H].t(), h0)  # (2H, H): step 0 saw h0
        if T > 1:
            dw_rz.addmm_(da_rz[B:].t(), out[:-1].reshape((T - 1) * B, H))  # steps 1.. saw out[t-1]
        dw_h = torch.mm(dgx[:, :, 2 * H :].reshape(T * B, H).t(), q_all.reshape(T * B, H))  # (H, H)
        return dgx, dh, dw_rz, dw_h, None


def gru_layer(gx: torch.Tensor, h0: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """All T steps of one layer. gx: (T, B, 3H), h0: (B, H) -> out (T, B, H); out[-1] is the final state.

    Same math as stepping ``GRUCell.fused_step`` and multiplying each new state by ``mask[t]``.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (gx, h0, w_rz, w_h))
    if needs_grad:
        return _GRURecurrence.apply(gx, h0, w_rz, w_h, mask)
    return _recurrence(gx, h0, w_rz, w_h, mask, save=False)[0]


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
        x = self.embedding(idx.t())  # (T, B, n_embd): time-major, step t is a contiguous slice
        h_last = []
        for layer, h_l in zip(self.layers, h):
            gx = layer.input_projection(x)  # (T, B, 3H), every step at once
            w_rz, w_h = layer.hidden_weights()
            x = gru_layer(gx, h_l, w_rz, w_h, self._dropout_mask(T, B, gx))  # (T, B, H) feeds the next layer
            h_last.append(x[-1])  # (B, H): the final (dropped) state
        logits = self.head(self.norm(x))  # (T, B, V)
        return logits.transpose(0, 1).contiguous(), torch.stack(h_last)  # (B, T, V), (n_layer, B, H)

    def _dropout_mask(self, T: int, B: int, like: torch.Tensor) -> torch.Tensor | None:
        """(T, B, H) inverted-dropout mask for every step's state, or None when dropout is off."""
        p = self.dropout.p
        if not self.training or p == 0:
            return None
        if p >= 1:
            return like.new_zeros(T, B, self.n_hidden)
        return like.new_empty(T, B, self.n_hidden).bernoulli_(1 - p).div_(1 - p)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
