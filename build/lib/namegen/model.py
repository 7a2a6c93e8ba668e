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
        return F.linear(x, *self.input_weights())

    def input_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_in (3H, n_in), b_in (3H,)): the input maps [reset | update | candidate], gate biases folded in."""
        weight = torch.cat([self.Wrx.weight, self.Wzx.weight, self.Wx.weight])
        bias = torch.cat([self.Wrx.bias + self.bias_r, self.Wzx.bias + self.bias_z, self.Wx.bias])
        return weight, bias

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
# At these sizes on a CPU, recording every small op of every step for autograd costs
# more than the math, so a whole layer (input projection + recurrence) is one autograd
# node with a hand-written backward, checked against autograd by gradcheck in float64
# (tests/test_speed_paths.py). Tensors are time-major, (T, B, ...), so step t is a
# contiguous slice. Per step the forward runs 2 matmuls and 4 elementwise ops, written
# in place into one preallocated buffer; the backward runs 2 matmuls and 5 elementwise
# ops, because every factor that depends only on the forward's activations is computed
# for all steps at once before the backward loop; the weight gradients are single
# matmuls over all T*B rows after it.


def _layer_forward(gates_in, h0, w_rz, w_h, mask):
    """One layer over all steps. Returns out (T, B, H), gates (T, B, 3H) = [r | z | ñ], q (T, B, H).

    gates_in: (T, B, 3H) every step's input terms [reset | update | candidate], gate biases
    folded in (not modified); h0: (B, H); w_rz: (2H, H); w_h: (H, H); mask: (T, B, H) dropout
    mask scaled by 1/(keep probability), or None. out[t] is the (dropped) state step t+1 sees.
    """
    T, B, _ = gates_in.shape
    H = h0.shape[-1]
    gates = gates_in.clone()  # (T, B, 3H): each step adds its hidden terms here in place
    out = gates_in.new_empty(T, B, H)
    q_all = gates_in.new_empty(T, B, H)  # r * h_prev: the input of W_h, kept for its weight gradient
    w_rz_t, w_h_t = w_rz.t(), w_h.t()
    # per-step views made once (no indexing in the loop)
    steps = zip(gates[..., : 2 * H].unbind(0), gates[..., 2 * H :].unbind(0), q_all.unbind(0), out.unbind(0),
                mask.unbind(0) if mask is not None else [None] * T)
    h = h0
    for g_rz, g_n, q_t, out_t, mask_t in steps:
        rz = g_rz.addmm_(h, w_rz_t).sigmoid_()  # (B, 2H): reset r | update z
        r, z = rz[:, :H], rz[:, H:]
        q = torch.mul(r, h, out=q_t)  # (B, H): the reset past r * h
        n = g_n.addmm_(q, w_h_t).tanh_()  # (B, H): candidate ñ
        h = torch.lerp(h, n, z, out=out_t)  # (B, H): h + z (ñ - h) == (1 - z) h + z ñ
        if mask_t is not None:
            h.mul_(mask_t)  # dropout inside the recurrence: the next step sees the dropped state
    return out, gates, q_all


class _GRULayer(torch.autograd.Function):
    """out = layer(x, w_in, b_in, h0, w_rz, w_h; mask): one autograd node per layer."""

    @staticmethod
    def forward(ctx, gates_in, h0, w_rz, w_h, mask):
        out, gates, q = _layer_forward(gates_in, h0, w_rz, w_h, mask)
        ctx.save_for_backward(h0, w_rz, w_h, mask, out, gates, q)
        return out

    @staticmethod
    def backward(ctx, dout):
        h0, w_rz, w_h, mask, out, gates, q = ctx.saved_tensors
        T, B, H = out.shape
        r, z, n = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]  # (T, B, H) each
        h_prev = torch.cat([h0[None], out[:-1]])  # (T, B, H): the state each step saw
        # Factors of the chain rule that depend only on the forward, for all steps at once.
        # g = the grad of a step's undropped output h'_t = h_prev + z (ñ - h_prev); with the
        # dropout mask m, g = m * (grad of the dropped h_t), so m is folded into the factors.
        # (sigmoid_backward(g, y) = g y (1 - y), tanh_backward(g, y) = g (1 - y²): one fused op each)
        zm = z if mask is None else z * mask
        f_n = torch.ops.aten.tanh_backward(zm, n)  # dL/da_n = g z (1 - ñ²), a_n: candidate pre-activation
        d = n - h_prev if mask is None else (n - h_prev).mul_(mask)
        f_z = torch.ops.aten.sigmoid_backward(d, z)  # dL/da_z = g (ñ - h) z (1 - z)
        f_r = torch.ops.aten.sigmoid_backward(h_prev, r)  # dL/da_r = dq h_prev r (1 - r), dq: grad of q = r h
        f_h = 1 - z if mask is None else mask - zm  # direct path: dL/dh_prev += g (1 - z)
        dgates = torch.empty_like(gates)  # (T, B, 3H): grads of the pre-activations [a_r | a_z | a_n]
        dout = dout.contiguous()
        dh = dout[T - 1].clone()  # (B, H): total grad of the dropped h_t
        da_r, da_z, da_n = dgates[..., :H].unbind(0), dgates[..., H : 2 * H].unbind(0), dgates[..., 2 * H :].unbind(0)
        da_rz = dgates[..., : 2 * H].unbind(0)
        f_n, f_z, f_r, f_h, r_t, dout_t = (v.unbind(0) for v in (f_n, f_z, f_r, f_h, r, dout))
        for t in range(T - 1, -1, -1):
            torch.mul(dh, f_n[t], out=da_n[t])  # (B, H): dL/da_n
            torch.mul(dh, f_z[t], out=da_z[t])  # (B, H): dL/da_z
            dq = da_n[t] @ w_h  # (B, H): grad of q = r * h_prev
            torch.mul(dq, f_r[t], out=da_r[t])  # (B, H): dL/da_r
            # grad of h_{t-1}: the direct path, plus the later loss terms at step t-1 ...
            dh_prev = torch.addcmul(dout_t[t - 1], dh, f_h[t]) if t > 0 else dh * f_h[t]
            dh_prev.addcmul_(dq, r_t[t])  # ... through q = r * h_prev ...
            dh = dh_prev.addmm_(da_rz[t], w_rz)  # ... and through both gates' W_rz h_prev
        # hidden weights' gradients, batched over all T*B rows (the input maps' are autograd's)
        dg = dgates.view(T * B, 3 * H)
        dw_rz = torch.mm(dg[:, : 2 * H].t(), h_prev.view(T * B, H))  # (2H, H)
        dw_h = torch.mm(dg[:, 2 * H :].t(), q.view(T * B, H))  # (H, H)
        return dgates, dh, dw_rz, dw_h, None


def gru_layer(gates_in: torch.Tensor, h0: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """All T steps of one layer. gates_in: (T, B, 3H), h0: (B, H) -> out (T, B, H); out[-1] is the final state.

    Same math as ``GRUCell.fused_step`` stepped over ``gates_in = GRUCell.input_projection(x)``,
    with each new state multiplied by ``mask[t]``; weights as ``GRUCell.hidden_weights()``.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (gates_in, h0, w_rz, w_h)):
        return _GRULayer.apply(gates_in, h0, w_rz, w_h, mask)
    return _layer_forward(gates_in, h0, w_rz, w_h, mask)[0]


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
        h_last = []
        for i, (layer, h_l) in enumerate(zip(self.layers, h)):
            w_in, b_in = layer.input_weights()  # (3H, n_in), (3H,)
            if i == 0:
                # Layer 0's input terms depend on the token alone: project the (V, n_embd) embedding
                # table once and look rows up (the same dot products as projecting every embedded row).
                gates_in = F.embedding(idx.t(), F.linear(self.embedding.weight, w_in, b_in))  # (T, B, 3H)
            else:
                gates_in = F.linear(x, w_in, b_in)  # (T, B, 3H), every step at once
            mask = self._dropout_mask(T, B, gates_in)  # (T, B, H) or None
            x = gru_layer(gates_in, h_l, *layer.hidden_weights(), mask)  # (T, B, H), time-major, feeds the next layer
            h_last.append(x[-1])  # (B, H): the final (dropped) state
        logits = self.head(self.norm(x))  # (T, B, V)
        return logits.transpose(0, 1).contiguous(), torch.stack(h_last)  # (B, T, V), (n_layer, B, H)

    def _dropout_mask(self, T: int, B: int, like: torch.Tensor) -> torch.Tensor | None:
        """(T, B, H) inverted-dropout mask for every step's state, or None when dropout is off.

        Each entry is 0 or 1/keep. Drawn as 16-bit uniform integers, four from each 64-bit
        ``randint`` draw (several times faster on a CPU than ``bernoulli_``), so the keep
        probability is (1 - p) rounded to a multiple of 2^-16, and the scale uses that
        rounded value: E[mask] = 1 exactly.
        """
        p = self.dropout.p
        if not self.training or p == 0:
            return None
        H = self.n_hidden
        keep_units = round((1 - p) * 65536)  # keep with probability keep_units / 2^16
        if keep_units == 0:
            return like.new_zeros(T, B, H)
        n = T * B * H
        bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=like.device)
        u16 = bits.view(torch.int16)[:n].view(T, B, H)  # uniform over [-2^15, 2^15)
        keep = u16 < keep_units - 32768  # (T, B, H) bool
        return keep.to(like.dtype).mul_(65536 / keep_units)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def compile_model(model: nn.Module, device_type: str = "cpu", backend: str | None = None) -> nn.Module:
    """torch.compile ``model`` in place (``nn.Module.compile``: state_dict keys do not change).

    On CUDA the mode is ``reduce-overhead`` (CUDA graphs remove the per-step launch
    overhead of the recurrence); elsewhere the default mode. The step loop is unrolled
    per sequence length, so each distinct batch length compiles once: the recompile
    limit is raised to cover every length of a names file. ``backend`` is for tests
    (``aot_eager`` traces without generating code).
    """
    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "recompile_limit"):
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    else:  # older torch
        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    kwargs: dict = {"dynamic": False}
    if backend is not None:
        kwargs["backend"] = backend
    elif device_type == "cuda":
        kwargs["mode"] = "reduce-overhead"
    model.compile(**kwargs)
    return model


def char_nll(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Negative log-likelihood (nats) of every target character: the one loss of namegen.

    logits: (B, T, V), targets: (B, T) with ``ignore_index`` at padding -> (B, T), 0 where
    ignored. Computed in float32 whatever the logits' precision. ``val/loss``, ``score``
    and evaluation are all the sum of this over the real targets, divided (or not) by
    their count.
    """
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=ignore_index, reduction="none")
