"""The GRU language model: plain ``nn.Module``s, no Lightning here.

The cell is the original GRU of Cho et al. (2014), as in the notebook: the
reset gate multiplies the previous state *before* the hidden matmul, which is
not the math of ``torch.nn.GRU`` (that applies it after).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from namegen import recurrence


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

    def input_weights(self, low: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_in (3H, n_in), b_in (3H,)): the input maps [reset | update | candidate], gate biases folded in.

        ``low``: W_in in that dtype (autocast's), each matrix cast before they are joined: the values
        autocast's own cast of the joined matrix gives, with less memory traffic (b_in stays as it is)."""
        weight = torch.cat([_cast(self.Wrx.weight, low), _cast(self.Wzx.weight, low), _cast(self.Wx.weight, low)])
        bias = torch.cat([self.Wrx.bias + self.bias_r, self.Wzx.bias + self.bias_z, self.Wx.bias])
        return weight, bias

    def hidden_weights(self, low: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_rz (2H, H), W_h (H, H)): the two hidden-side matmuls a step needs (``low``: cast as above)."""
        return torch.cat([_cast(self.Wrh.weight, low), _cast(self.Wzh.weight, low)]), _cast(self.Wh.weight, low)

    @staticmethod
    def fused_step(gx: torch.Tensor, h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        """One step from precomputed input terms. gx: (B, 3H), h: (B, H) -> (B, H)."""
        H = h.shape[-1]
        rz = torch.sigmoid(gx[:, : 2 * H] + h @ w_rz.t())  # (B, 2H): reset and update gates
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(gx[:, 2 * H :] + (r * h) @ w_h.t())  # (B, H): candidate
        return h + z * (n - h)  # == (1 - z) * h + z * n


def _cast(w: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
    return w if low is None else w.to(low)


# ------------------------------------------------------------------------------- one layer, all steps
#
# At these sizes on a CPU, recording every small op of every step for autograd costs
# more than the math, so a whole layer (recurrence over all steps) is one autograd
# node with a hand-written backward, checked against autograd by gradcheck in float64
# (tests/test_speed_paths.py). Per step the forward runs 2 matmuls and 4 elementwise
# ops, written in place into one preallocated buffer; the backward runs 2 matmuls and
# 5 elementwise ops, because every factor that depends only on the forward's
# activations is computed for all steps at once before the backward loop; the weight
# gradients are single matmuls over all rows after it.
#
# Layout: rows are time-major and packed as a PackedSequence's data. Step t owns the
# next batch_sizes[t] rows, which are the first batch_sizes[t] names of the batch
# (sorted longest first): the names still inside their name at step t. A name that has
# ended takes no compute, in the recurrence, the weight gradients and the matmuls
# around the layer. Without padding (every batch size B), N = T*B and the layout is
# (T, B, ...) flattened: step t is a contiguous slice either way.
#
# Mixed precision. Under autocast (Lightning's bf16-mixed, 16-mixed) only the matmuls
# run in autocast's dtype ``low``: the hidden weights are cast once per layer, each
# step's state (and r * h) for its matmul, and the backward's per-step matmuls and
# the weight gradients' likewise. Everything else stays in the parameters' dtype
# (float32): the state h, the gate buffer the matmul products are added into, the
# nonlinearities, the backward's chain-rule factors and gradient accumulators, and
# the gradients returned to the optimizer's float32 weights. (torch has no CPU matmul
# with low-precision inputs and a float32 result, so each product is rounded to
# ``low`` once before it is added; it is accumulated in float32 inside the matmul.)
# Gate inputs arriving in ``low`` (autocast's input projection) are upcast into the
# float32 gate buffer. The casts add one elementwise op per matmul; on this CPU (AVX512-
# BF16) the bf16 matmuls more than pay for them from n_hidden 256 up, and about break
# even at 128. Around the layers (GRULanguageModel.forward): the input maps of layers
# >= 1 and the head are autocast's F.linear (low-precision logits, which the loss
# upcasts), LayerNorm runs in float32 under autocast, and layer 0's projected embedding
# table (V rows) is float32.


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on this device, or None when autocast is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _addmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
    """acc += a @ b in place. With ``low``, the product runs in that dtype (b is already in it)."""
    if low is None:
        return acc.addmm_(a, b)
    return acc.add_(torch.mm(a.to(low), b))


def _mm(a: torch.Tensor, b: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
    """a @ b in a's dtype. With ``low``, the product runs in that dtype (b is already in it)."""
    return torch.mm(a, b) if low is None else torch.mm(a.to(low), b).to(a.dtype)


def _compiled(device: torch.device):
    """The compiled loops (namegen.recurrence) for tensors on ``device``, or None for the Python ones: on
    a CPU only (elsewhere unmeasured), and never inside torch.compile's tracing."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return recurrence.ops()


def _random_bits(n: int, device: torch.device) -> torch.Tensor:
    """(n,) int64: ``torch.randint(-2**63, 2**63 - 1, (n,))`` from the default generator. On a CPU
    namegen/csrc/draws.cpp makes them (the same numbers, the generator left in the same state, faster)."""
    compiled = _compiled(device)
    if compiled is not None:
        return compiled.random_bits(n)
    return torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, device=device)


def _keep_units(p: float) -> int:
    """A dropout mask keeps a unit with probability keep_units / 2^16: (1 - p) rounded to a multiple of 2^-16."""
    return round((1 - p) * 65536)


def _layer_forward(gates_in, h0, w_rz, w_h, mask, batch_sizes, low=None, hmask=None, own_gates=False):
    """``_layer_forward_loop``, run by compiled code where there is some -> out, gates, q, and hm (N, H): each
    row's previous state as the hidden matmuls saw it, from fused_f32.cpp (None elsewhere). recurrence.cpp
    replays the loop's operators (the same bits); the fused kernels run the same math with their elementwise
    work fused (float32 tolerance, not the same bits): fused_f32.cpp in float32, fused_bf16.cpp under bf16."""
    compiled = _compiled(gates_in.device)
    if compiled is None:
        return (*_layer_forward_loop(gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates), None)
    kind = _fused(low, h0)
    if kind == "f32":
        return compiled.layer_forward_f32(gates_in, h0, w_rz, w_h, mask, batch_sizes, hmask, own_gates)
    if kind == "bf16":
        return (*compiled.layer_forward_bf16(gates_in, h0, w_rz, w_h, mask, batch_sizes, hmask, own_gates), None)
    return (*compiled.layer_forward(gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates), None)


def _fused(low: torch.dtype | None, h0: torch.Tensor) -> str | None:
    """The fused kernel a compiled layer runs for a float32 state: "f32" (namegen/csrc/fused_f32.cpp, float32
    matmuls), "bf16" (fused_bf16.cpp, bf16 matmuls), or None (recurrence.cpp's replay: other dtypes)."""
    if h0.dtype != torch.float32:
        return None
    return "f32" if low is None else "bf16" if low == torch.bfloat16 else None


def _layer_forward_loop(gates_in, h0, w_rz, w_h, mask, batch_sizes, low=None, hmask=None, own_gates=False):
    """One layer over all steps. Returns out (N, H), gates (N, 3H) = [r | z | ñ], q (N, H).

    gates_in: (N, 3H) every step's input terms [reset | update | candidate], gate biases
    folded in, packed (see above; not modified); h0: (B, H), the state dtype; w_rz: (2H, H),
    w_h: (H, H), in ``low`` when given; mask: (N, H) state-dropout mask scaled by 1/(keep
    probability), or None; hmask: (B, H) variational mask, one per name for all its steps,
    on the state where it enters the hidden matmuls (the carried state keeps every unit), or
    None; batch_sizes[t]: rows of step t. out's rows are the (dropped) states the next step
    sees; q (r * h_prev, W_h's input, masked by hmask) is kept in the matmul dtype. ``own_gates``:
    gates_in is the caller's to overwrite (sampling), so it is not copied when already in h0's dtype.
    """
    H = h0.shape[-1]
    gates = gates_in.to(h0.dtype, copy=not own_gates)  # (N, 3H): each step adds its hidden terms here in place
    out = gates.new_empty(gates.shape[0], H)
    q_all = gates.new_empty(gates.shape[0], H, dtype=low or gates.dtype)  # r * h_prev, for W_h's weight gradient
    w_rz_t, w_h_t = w_rz.t(), w_h.t()
    # per-step views made once (no indexing in the loop)
    masks = mask.split(batch_sizes) if mask is not None else [None] * len(batch_sizes)
    steps = zip(gates.split(batch_sizes), q_all.split(batch_sizes), out.split(batch_sizes), masks)
    h = h0
    for g, q_t, out_t, mask_t in steps:
        h = h[: g.shape[0]]  # (n, H): the names still inside their name (all of them without padding)
        hm = h if hmask is None else h * hmask[: g.shape[0]]  # (n, H): the state as the hidden matmuls see it
        rz = _addmm_(g[:, : 2 * H], hm, w_rz_t, low).sigmoid_()  # (n, 2H): reset r | update z
        r, z = rz[:, :H], rz[:, H:]
        q = torch.mul(r, hm, out=q_t)  # (n, H): the reset past r * h
        n = _addmm_(g[:, 2 * H :], q, w_h_t, low).tanh_()  # (n, H): candidate ñ
        h = torch.lerp(h, n, z, out=out_t)  # (n, H): h + z (ñ - h) == (1 - z) h + z ñ
        if mask_t is not None:
            h.mul_(mask_t)  # state dropout inside the recurrence: the next step sees the dropped state
    return out, gates, q_all


def _previous_states(h0: torch.Tensor, out: torch.Tensor, batch_sizes: list[int]) -> torch.Tensor:
    """(N, H): the state each row's step started from: h0 at step 0, else the previous step's out."""
    blocks = out.split(batch_sizes)
    return torch.cat([h0[: batch_sizes[0]]] + [o[:n] for o, n in zip(blocks[:-1], batch_sizes[1:])])


def _chain_factors(h_prev, hm_prev, r, z, n, mask):
    """Factors of the chain rule that depend only on the forward, for all rows at once: (N, H) each.

    g = the grad of a step's undropped output h'_t = h_prev + z (ñ - h_prev); with the dropout
    mask m, g = m * (grad of the dropped h_t), so m is folded into the factors. hm_prev: the
    state as the hidden matmuls saw it (h_prev times the variational mask, or h_prev).
    (sigmoid_backward(g, y) = g y (1 - y), tanh_backward(g, y) = g (1 - y²): one fused op each)
    """
    zm = z if mask is None else z * mask
    f_n = torch.ops.aten.tanh_backward(zm, n)  # dL/da_n = g z (1 - ñ²), a_n: candidate pre-activation
    d = n - h_prev if mask is None else (n - h_prev).mul_(mask)
    f_z = torch.ops.aten.sigmoid_backward(d, z)  # dL/da_z = g (ñ - h) z (1 - z)
    f_r = torch.ops.aten.sigmoid_backward(hm_prev, r)  # dL/da_r = dq hm_prev r (1 - r), dq: grad of q = r hm
    f_h = 1 - z if mask is None else mask - zm  # direct path: dL/dh_prev += g (1 - z)
    return f_n, f_z, f_r, f_h


def _backward_loop(dgates, acc, f_n, f_z, f_r, f_h, r, w_rz, w_h, sizes, low, hmask):
    """The backward's loop, last step first: writes dgates (N, 3H), adds into acc (N, H) in place, returns
    the grad of h0 (B, H). f_*: ``_chain_factors`` (N, H); r: gates[:, :H]."""
    H = acc.shape[-1]
    dg_t, acc_t, r_t = dgates.split(sizes), acc.split(sizes), r.split(sizes)
    f_n, f_z, f_r, f_h = (f.split(sizes) for f in (f_n, f_z, f_r, f_h))
    for t in range(len(sizes) - 1, -1, -1):
        dg, dh = dg_t[t], acc_t[t]  # (n, 3H), (n, H): dh is the total grad of step t's state
        da_n = torch.mul(dh, f_n[t], out=dg[:, 2 * H :])  # (n, H): dL/da_n
        torch.mul(dh, f_z[t], out=dg[:, H : 2 * H])  # (n, H): dL/da_z
        dq = _mm(da_n, w_h, low)  # (n, H): grad of q = r * hm_prev
        torch.mul(dq, f_r[t], out=dg[:, :H])  # (n, H): dL/da_r
        # grad of h_{t-1} of the n names still going (ended ones keep just their loss term):
        # the direct path, plus the later loss terms at step t-1 ...
        dh_prev = acc_t[t - 1][: dh.shape[0]].addcmul_(dh, f_h[t]) if t > 0 else dh * f_h[t]
        if hmask is None:
            dh_prev.addcmul_(dq, r_t[t])  # ... through q = r * h_prev ...
            _addmm_(dh_prev, dg[:, : 2 * H], w_rz, low)  # ... and through both gates' W_rz h_prev
        else:  # the same two terms reach hm_prev = h_prev * hmask, then h_prev through the mask
            dhm = _addmm_(torch.mul(dq, r_t[t]), dg[:, : 2 * H], w_rz, low)  # (n, H): grad of hm_prev
            dh_prev.addcmul_(dhm, hmask[: dh.shape[0]])
    return dh_prev


class _GRULayer(torch.autograd.Function):
    """out = layer(gates_in, h0, w_rz, w_h; mask, batch_sizes, low, hmask): one autograd node per layer."""

    @staticmethod
    def forward(ctx, gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates=False):
        ctx.w_dtype = w_rz.dtype  # the weights' gradients are returned in it
        w_rz, w_h = (w if low is None else w.to(low) for w in (w_rz, w_h))  # cast once per layer (if not yet)
        out, gates, q, hm = _layer_forward(gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates)
        ctx.save_for_backward(h0, w_rz, w_h, mask, hmask, out, gates, q, hm)
        ctx.batch_sizes, ctx.low = batch_sizes, low
        return out

    @staticmethod
    def backward(ctx, dout):
        h0, w_rz, w_h, mask, hmask, out, gates, q, hm = ctx.saved_tensors
        sizes, low = ctx.batch_sizes, ctx.low
        H = out.shape[-1]
        dgates = torch.empty_like(gates)  # (N, 3H): grads of the pre-activations [a_r | a_z | a_n]
        # (N, H): grad of each step's (dropped) output; the loop adds each step's terms to the step before
        acc = dout.clone(memory_format=torch.contiguous_format)
        if hm is not None:  # fused_f32.cpp's forward ran: its backward computes the chain-rule factors in its loop
            dh0 = _compiled(out.device).layer_backward_f32(dgates, acc, gates, out, hm, h0, mask, hmask, w_rz, w_h,
                                                           sizes)
            dg = dgates
        else:
            dh0, dg, hm = _backward_steps(dgates, acc, h0, w_rz, w_h, mask, hmask, out, gates, sizes, low)
        # hidden weights' gradients, batched over all N rows (the input maps' are autograd's)
        dw_rz = torch.mm(dg[:, : 2 * H].t(), hm.to(dg.dtype)).to(ctx.w_dtype)  # (2H, H)
        dw_h = torch.mm(dg[:, 2 * H :].t(), q).to(ctx.w_dtype)  # (H, H)
        return dgates, dh0, dw_rz, dw_h, None, None, None, None, None


def _backward_steps(dgates, acc, h0, w_rz, w_h, mask, hmask, out, gates, sizes, low):
    """The backward's loop: fused_bf16.cpp (its chain-rule factors inside the loop, the same bits), else the
    Python loops or their compiled replay with the factors computed first, for all rows. Writes dgates,
    returns (the grad of h0 (B, H), dgates in the weight gradients' matmul dtype, hm_prev (N, H): each row's
    previous state as the hidden matmuls saw it, in that dtype too for fused_bf16.cpp)."""
    compiled = _compiled(out.device)
    if compiled is not None and _fused(low, h0) == "bf16":  # also writes dg, dgates rounded to bf16
        dg, hm_low = torch.empty_like(dgates, dtype=low), torch.empty_like(out, dtype=low)
        dh0 = compiled.layer_backward_bf16(dgates, dg, acc, hm_low, gates, out, h0, mask, hmask, w_rz, w_h, sizes)
        return dh0, dg, hm_low
    H = out.shape[-1]
    h_prev = _previous_states(h0, out, sizes)  # (N, H): the state each step saw
    hm_rows = None if hmask is None else torch.cat([hmask[:n] for n in sizes])  # (N, H): each row's name's mask
    hm_prev = h_prev if hmask is None else h_prev * hm_rows  # (N, H): as the hidden matmuls saw it
    factors = _chain_factors(h_prev, hm_prev, gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :], mask)
    loop = _backward_loop if compiled is None else compiled.layer_backward  # the same operators and bits
    dh0 = loop(dgates, acc, *factors, gates[:, :H], w_rz, w_h, sizes, low, hmask)  # (B, H): grad of h0
    return dh0, (dgates if low is None else dgates.to(low)), hm_prev


def gru_layer(gates_in: torch.Tensor, h0: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
              mask: torch.Tensor | None = None, batch_sizes: list[int] | None = None,
              hmask: torch.Tensor | None = None, own_gates: bool = False) -> torch.Tensor:
    """All steps of one layer. h0: (B, H); weights as ``GRUCell.hidden_weights()``.

    Without ``batch_sizes``: gates_in (T, B, 3H), mask (T, B, H) -> out (T, B, H), out[-1] the
    final state. With it: packed rows (see above), gates_in (N, 3H), mask (N, H) -> out (N, H).
    Same math as ``GRUCell.fused_step`` stepped over ``gates_in = GRUCell.input_projection(x)``,
    with each new state multiplied by the mask, and the state multiplied by ``hmask`` (B, H),
    one row per name (in h0's row order), where it enters the two hidden matmuls. Under
    autocast the matmuls run in its dtype. ``own_gates``: gates_in is a temporary of the caller's,
    which the layer may overwrite instead of copying (nothing else may read it afterwards).
    """
    shape = None
    if batch_sizes is None:  # (T, B, ...): every name runs every step
        shape, batch_sizes = (*gates_in.shape[:2], -1), [gates_in.shape[1]] * gates_in.shape[0]
        gates_in = gates_in.flatten(0, 1)
        mask = mask.flatten(0, 1) if mask is not None else None
    if not batch_sizes or batch_sizes[0] != h0.shape[0]:
        raise ValueError(f"batch_sizes {batch_sizes[:3]}...: step 0 must run all {h0.shape[0]} rows of h0")
    low = _autocast_dtype(gates_in.device.type)
    if w_rz.dtype != low:  # the state is in the parameters' dtype (weights already in autocast's: h0's own)
        h0 = h0.to(w_rz.dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (gates_in, h0, w_rz, w_h)):
        out = _GRULayer.apply(gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates)
    else:
        w_rz, w_h = (w if low is None else w.to(low) for w in (w_rz, w_h))
        out = _layer_forward(gates_in, h0, w_rz, w_h, mask, batch_sizes, low, hmask, own_gates)[0]
    return out if shape is None else out.view(shape)


class Packing:
    """Where a padded batch's real positions go when padding takes no compute (PackedSequence's layout).

    ``lengths`` (B,): real positions per row (>= 1, <= T). Rows are taken longest first
    (``order``: the sorting permutation, None when already sorted). ``batch_sizes[t]`` is the
    number of rows still inside their name at step t (trailing steps with none are dropped),
    ``valid`` (T, B) marks real positions (time-major order is the packed order),
    ``rows`` and ``cells`` (N,) give each packed position's place in the caller's unsorted
    (T, B, ...) and (B, T) layouts, and ``last`` (B,) is the packed row of each row's last real position.
    """

    def __init__(self, lengths: torch.Tensor, T: int):
        lens = lengths.tolist()
        if not lens or min(lens) < 1 or max(lens) > T:
            raise ValueError(f"lengths must be between 1 and the batch's {T} steps, got {lens[:8]}...")
        self.order = None
        if any(a < b for a, b in zip(lens, lens[1:])):
            self.order = torch.argsort(lengths, descending=True, stable=True)
            lengths, lens = lengths[self.order], sorted(lens, reverse=True)
        sizes = [0] * lens[0]  # sizes[t]: rows whose length is > t
        for n in lens:
            sizes[n - 1] += 1
        for t in range(len(sizes) - 2, -1, -1):
            sizes[t] += sizes[t + 1]
        self.batch_sizes = sizes
        self.valid = torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]  # (T, B)
        # each real position (packed order) in the caller's unsorted layouts: index_select with these
        # gathers the same values as sorting rows and masking with ``valid``, in one op
        B = lengths.shape[0]
        pos = self.valid.flatten().nonzero().squeeze(1)  # (N,): t * B + j, j a row in sorted order
        t, j = pos.div(B, rounding_mode="floor"), pos.remainder(B)
        b = j if self.order is None else self.order[j]  # (N,): the caller's row
        self.rows = t * B + b  # (N,): its row of a (T, B, ...) time-major tensor, flattened
        self.cells = b * T + t  # (N,): its element of a (B, T) batch, flattened
        starts = [0]
        for n in sizes[:-1]:
            starts.append(starts[-1] + n)  # packed row of step t's first name
        self.last = torch.tensor([starts[n - 1] + b for b, n in enumerate(lens)], device=lengths.device)  # (B,)

    def sort(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x if self.order is None else x.index_select(dim, self.order)

    def unsort(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x if self.order is None else x.index_select(dim, torch.argsort(self.order))

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, V) packed rows -> (T, B, V), zeros at padding."""
        T, B = self.valid.shape
        return packed.new_zeros(T, B, packed.shape[-1]).masked_scatter(self.valid[..., None], packed)


@dataclass(frozen=True)
class Regularisation:
    """Dropout rates, each 0 (off) to < 1. Only training draws masks; evaluation never does.

    ``state``: each step's carried hidden state, a fresh mask per step (the notebook's dropout);
    ``variational``: one mask per name and layer, for all its steps, on the state where it
    enters the hidden matmuls (W_rz h and W_h (r * h)), the carried state kept whole (Gal &
    Ghahramani 2016); ``weight_drop``: DropConnect on the hidden-to-hidden matrices W_rz and
    W_h, a fresh mask per batch (Merity et al. 2017); ``embd``: the embedding's output;
    ``layer``: each GRU layer's output where it feeds the next layer or the head (the
    non-recurrent connections, Zaremba et al. 2014).
    """

    state: float = 0.0
    variational: float = 0.0
    weight_drop: float = 0.0
    embd: float = 0.0
    layer: float = 0.0


class GRULanguageModel(nn.Module):
    """Embedding -> n_layer GRU layers -> (LayerNorm) -> linear head over the vocabulary.

    One class for every size; ``configs/*.yaml`` choose the widths and the dropout
    (``Regularisation``): by default the notebook's, on each step's hidden state inside
    the recurrence (the next step sees the dropped state).
    """

    def __init__(
        self,
        vocab_size: int,
        n_layer: int,
        n_embd: int,
        n_hidden: int,
        dropout: float = 0.0,
        layer_norm: bool = False,
        reg: Regularisation | None = None,
    ):
        super().__init__()
        self.vocab_size, self.n_layer, self.n_embd, self.n_hidden = vocab_size, n_layer, n_embd, n_hidden
        self.embedding = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList(
            GRUCell(n_embd if i == 0 else n_hidden, n_hidden) for i in range(n_layer)
        )
        self.reg = reg if reg is not None else Regularisation(state=dropout)
        self.dropout = nn.Dropout(self.reg.state)  # the state dropout's rate (no parameters)
        self.norm = nn.LayerNorm(n_hidden) if layer_norm else nn.Identity()
        self.head = nn.Linear(n_hidden, vocab_size)
        self.skip_padding = True  # forward(..., lengths) runs no step on padding (see forward)

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "GRULanguageModel":
        reg = Regularisation(state=config.dropout, variational=config.variational_dropout,
                             weight_drop=config.weight_drop, embd=config.embd_dropout, layer=config.layer_dropout)
        return cls(
            vocab_size,
            n_layer=config.n_layer,
            n_embd=config.n_embd,
            n_hidden=config.n_hidden,
            layer_norm=config.layer_norm,
            reg=reg,
        )

    def init_hidden(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(self.n_layer, batch, self.n_hidden, device=device, dtype=self.head.weight.dtype)

    def forward(self, idx: torch.Tensor, h: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """idx: (B, T) token ids, h: (n_layer, B, H) or None -> logits (B, T, V), h (n_layer, B, H).

        ``lengths`` (B,): each row's number of real positions (name + end token); later positions
        are padding and take no compute (see ``Packing``). Logits there are 0, and the returned h
        is each row's state at its last real position. The real positions' logits, and the loss
        and gradients computed from them, are the same as without ``lengths`` (which runs every
        position, as sampling and the notebook do). Rows are processed longest first: sorted
        batches (``NameBatches`` sorts them) skip a sort here. With ``skip_padding`` off
        (``compile_model`` turns it off: per-batch step counts would recompile for every batch)
        padding is computed, with the same results at real positions.
        """
        B, T = idx.shape
        logits, h_last, pack = self._packed_logits(idx, h, lengths)  # (N, V), (n_layer, B, H) in pack's order
        logits = pack.unpack(logits) if pack is not None else logits.view(T, B, -1)  # (T, B, V)
        logits = logits.transpose(0, 1).contiguous()  # (B, T, V)
        if pack is not None:
            logits, h_last = pack.unsort(logits, 0), pack.unsort(h_last, 1)
        return logits, h_last

    def nll(self, idx: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Negative log-likelihood (nats) of every real target, (n,): the training loss's terms, as
        ``char_nll(self(idx, lengths=...)[0], targets)[targets != ignore_index]`` gives them, without
        the padded (B, T, V) logits: the head's rows meet their targets where they are computed.

        targets: (B, T), ``ignore_index`` only after each row's real positions (padding), as namegen's
        batches have it. The terms come time-major (each step's names, longest first), not row by row:
        their sum and count are the same, up to the order of a float sum.
        """
        lengths = (targets != ignore_index).sum(1)  # (B,): real positions per name
        if not self.skip_padding:  # padding computed (compile_model): through the (compiled) forward
            return char_nll(self(idx, lengths=lengths)[0], targets, ignore_index)[targets != ignore_index]
        logits, _, pack = self._packed_logits(idx, None, lengths)  # (N, V): one row per real position
        return F.cross_entropy(logits.float(), targets.reshape(-1).index_select(0, pack.cells), reduction="none")

    def _packed_logits(self, idx: torch.Tensor, h: torch.Tensor | None, lengths: torch.Tensor | None):
        """The layers and the head -> (logits (N, V), h_last (n_layer, B, H), pack). With a ``Packing`` (lengths
        given, skip_padding on) rows are its packed real positions and h_last is in its (sorted) row order;
        without one (pack None) rows are every position, time-major (T*B)."""
        B, T = idx.shape
        if h is None:
            h = self.init_hidden(B, idx.device)
        pack = None
        if lengths is not None and self.skip_padding:
            pack = Packing(lengths, T)
            h = pack.sort(h, 1)
            tokens = idx.reshape(-1).index_select(0, pack.cells)  # (N,): real positions, packed
        else:
            tokens = idx.t().reshape(-1)  # (T*B,): time-major, every position
        sizes = pack.batch_sizes if pack is not None else [B] * T
        # under autocast the weights are cast to its dtype here, piece by piece (see GRUCell.input_weights);
        # the hidden ones only without weight drop, whose mask multiplies them before their cast
        low = _autocast_dtype(idx.device.type)
        low_hidden = low if not (self.training and self.reg.weight_drop > 0) else None
        h_last = []
        for i, (layer, h_l) in enumerate(zip(self.layers, h)):
            if i == 0:
                gates_in = self._input_gates(layer, tokens, T, B, pack)  # (N, 3H)
            else:  # every step at once, from the layer below's (dropped) output
                x = self._dropped(x, self.reg.layer, T, B, pack)
                gates_in = F.linear(x, *layer.input_weights(low))  # (N, 3H)
            mask = self._position_mask(T, B, self.n_hidden, self.reg.state, h_l, pack)  # (N, H) or None
            hmask = self._mask((B, self.n_hidden), self.reg.variational, h_l)  # (B, H): one mask per name
            hmask = pack.sort(hmask, 0) if pack is not None and hmask is not None else hmask
            w_rz, w_h = (self._dropped_weight(w) for w in layer.hidden_weights(low_hidden))  # (2H, H), (H, H)
            # (N, H): feeds the next layer. gates_in is this loop's own: the layer overwrites it, no copy
            x = gru_layer(gates_in, h_l, w_rz, w_h, mask, sizes, hmask, own_gates=True)
            h_last.append(self._final_states(x, B, lengths, pack))  # (B, H)
        logits = self.head(self.norm(self._dropped(x, self.reg.layer, T, B, pack)))  # (N, V)
        return logits, torch.stack(h_last), pack

    def _input_gates(self, layer: GRUCell, tokens: torch.Tensor, T: int, B: int, pack) -> torch.Tensor:
        """Layer 0's input terms (N, 3H) for the tokens (N,), in float32 even under autocast.

        Without embedding dropout they depend on the token alone: the (V, n_embd) embedding table
        is projected once and rows are looked up (the same dot products as projecting every
        embedded row). Only V rows, so float32 even under autocast: rounding them to bf16 was the
        largest error of bf16 training (max per-parameter gradient error ~2% with it, ~0.5% without).
        """
        w_in, b_in = layer.input_weights()  # (3H, n_embd), (3H,)
        with torch.autocast(tokens.device.type, enabled=False):
            if not (self.training and self.reg.embd > 0):
                return F.embedding(tokens, F.linear(self.embedding.weight, w_in, b_in))
            x = self._dropped(self.embedding(tokens), self.reg.embd, T, B, pack)  # (N, n_embd)
            return F.linear(x, w_in, b_in)

    def _dropped(self, x: torch.Tensor, p: float, T: int, B: int, pack) -> torch.Tensor:
        """x (N, width) with dropout p on every position and unit (training only)."""
        mask = self._position_mask(T, B, x.shape[-1], p, x, pack)
        return x if mask is None else x * mask.to(x.dtype)

    def _dropped_weight(self, w: torch.Tensor) -> torch.Tensor:
        """A hidden-to-hidden matrix with DropConnect (weight drop), a fresh mask per batch (training only)."""
        mask = self._mask(w.shape, self.reg.weight_drop, w)
        return w if mask is None else w * mask

    def _position_mask(self, T: int, B: int, width: int, p: float, like: torch.Tensor, pack) -> torch.Tensor | None:
        """(N, width) mask for the rows of every real position, or None (eval, or p = 0).

        Drawn as (T, B, width) in the caller's row order whether or not padding is skipped,
        so both paths drop the same units of the same names; only the real positions' draws
        are made into mask values.
        """
        rows = pack.rows if pack is not None else None  # (N,): the real positions' rows of (T*B, width)
        fused = self._fused_mask(T * B, width, p, like, rows)
        if fused is not None:
            return fused
        draws = self._draws((T, B, width), p, like)
        if draws is None:
            return None
        draws = draws.view(T * B, width)  # (T*B, width), time-major
        draws = draws.index_select(0, rows) if rows is not None else draws  # (N, width): real positions
        return self._scaled(draws, p, like)

    @staticmethod
    def _final_states(x: torch.Tensor, B: int, lengths, pack) -> torch.Tensor:
        """(B, H) from a layer's output x (N, H): the state after the last step, or after each row's last real step."""
        if pack is not None:
            return x[pack.last]
        if lengths is not None:  # padding was computed (skip_padding off): each row's last real step
            return x[(lengths - 1) * B + torch.arange(B, device=x.device)]
        return x[-B:]  # the final (dropped) state

    def _mask(self, shape: tuple, p: float, like: torch.Tensor) -> torch.Tensor | None:
        """An inverted-dropout mask of ``shape`` in like's dtype, or None in eval mode or when p = 0.

        Each entry is 0 or 1/keep. Drawn as 16-bit uniform integers, four from each 64-bit
        ``randint`` draw (several times faster on a CPU than ``bernoulli_``), so the keep
        probability is (1 - p) rounded to a multiple of 2^-16, and the scale uses that
        rounded value: E[mask] = 1 exactly.
        """
        fused = self._fused_mask(math.prod(shape[:-1]), shape[-1], p, like, None)
        if fused is not None:
            return fused.view(shape)
        draws = self._draws(shape, p, like)
        return None if draws is None else self._scaled(draws, p, like)

    def _fused_mask(self, n_rows: int, width: int, p: float, like: torch.Tensor, rows) -> torch.Tensor | None:
        """``_scaled(_draws(...))`` of an (n_rows, width) mask, its rows ``rows`` (all when None), made in one
        pass by namegen/csrc/draws.cpp: the same draws and values. None where that does not apply (eval, p = 0,
        p dropping every unit, a dtype other than float32, no compiled code): the caller makes the mask."""
        keep_units = _keep_units(p)
        if not self.training or p == 0 or keep_units == 0 or like.dtype != torch.float32:
            return None
        compiled = _compiled(like.device)
        if compiled is None:
            return None
        return compiled.dropout_mask(n_rows, width, keep_units, 65536 / keep_units, rows)

    def _draws(self, shape: tuple, p: float, like: torch.Tensor) -> torch.Tensor | None:
        """``_mask``'s random draws: int16 of ``shape``, uniform over [-2^15, 2^15), or None (eval, p = 0).
        Nothing is drawn when p rounds to dropping every unit."""
        if not self.training or p == 0:
            return None
        n = math.prod(shape)
        if _keep_units(p) == 0:
            return torch.zeros(shape, dtype=torch.int16, device=like.device)
        return _random_bits((n + 3) // 4, like.device).view(torch.int16)[:n].view(shape)

    @staticmethod
    def _scaled(draws: torch.Tensor, p: float, like: torch.Tensor) -> torch.Tensor:
        """The mask of ``_draws``: 0 or 1/keep, in like's dtype."""
        keep_units = _keep_units(p)
        if keep_units == 0:
            return like.new_zeros(draws.shape)
        if keep_units == 65536:  # p below 2^-17: every unit kept (the threshold 2^15 is out of int16's range)
            return like.new_ones(draws.shape)
        keep = draws < keep_units - 32768  # bool
        return keep.to(like.dtype).mul_(65536 / keep_units)

    def _dropout_mask(self, T: int, B: int, like: torch.Tensor) -> torch.Tensor | None:
        """(T, B, H) state-dropout mask for every step's state, or None (eval, or no state dropout)."""
        return self._mask((T, B, self.n_hidden), self.reg.state, like)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def compile_model(model: nn.Module, device_type: str = "cpu", backend: str | None = None) -> nn.Module:
    """torch.compile ``model`` in place (``nn.Module.compile``: state_dict keys do not change).

    On CUDA the mode is ``reduce-overhead`` (CUDA graphs remove the per-step launch
    overhead of the recurrence); elsewhere the default mode. The step loop is unrolled
    per sequence length, so each distinct batch length compiles once: the recompile
    limit is raised to cover every length of a names file. Padding is then computed
    (``skip_padding`` off), as the padding-free step counts differ from batch to batch. ``backend`` is for tests
    (``aot_eager`` traces without generating code).
    """
    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "recompile_limit"):
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    else:  # older torch
        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    kwargs: dict = {"dynamic": False}
    if isinstance(model, GRULanguageModel):
        model.skip_padding = False  # padding-free steps depend on each batch's lengths: one compile per batch
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
