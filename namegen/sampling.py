"""Batched sampling: every name of a call advances together, one step per character.

The hidden state is carried from step to step, so each character costs one
forward step for the whole batch; the prefix is never re-run, and names that
have ended leave the batch, so later steps only run the names still going.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from namegen.data import END, PAD
from namegen.model import GRULanguageModel, _autocast_dtype, _layer_forward_loop


def sample_ids(model: GRULanguageModel, n: int, **kwargs) -> tuple[list[list[int]], torch.Tensor]:
    """Sample ``n`` names as lists of character ids (end token stripped), and each name's log-probability
    under the model (prefix characters included, temperature 1) as an ``(n,)`` tensor. Keywords as
    ``sample_rows``."""
    out, length, logprob = sample_rows(model, n, **kwargs)
    return [row[:L] for row, L in zip(out.tolist(), length.tolist())], logprob


@torch.no_grad()
def sample_rows(
    model: GRULanguageModel,
    n: int,
    *,
    max_len: int,
    min_len: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    prefix_ids: list[int] | None = None,
    start_token: int = END,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    scored: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sample ``n`` names: (ids (n, max_len), 0 after each name's end; lengths (n,); log-probabilities (n,),
    or None with ``scored=False``, which leaves them out: the same names, a pass over the logits less a step).

    ``min_len``/``max_len`` count characters, prefix included: the end token is
    masked out until ``min_len`` is reached, and a name that reaches
    ``max_len`` stops there. Padding is never sampled. The draws' randomness comes
    from ``generator`` (torch's default one when None): one uniform number per live name per drawn step.
    """
    prefix_ids = list(prefix_ids or [])
    was_training = model.training
    model.eval()
    step = _Steps(model)
    h = list(model.init_hidden(n, device))  # n_layer x (m, H), m = names still going
    token = torch.full((n,), start_token, dtype=torch.long, device=device)  # (m,)
    rows = torch.arange(n, device=device)  # (m,): which of the n names each live row is
    logprob = torch.zeros(n, device=device) if scored else None
    out = torch.zeros(n, max_len, dtype=torch.long, device=device)  # (n, max_len) character ids
    length = torch.zeros(n, dtype=torch.long, device=device)

    for t in range(max_len + 1):
        logits, h = step(token, h)  # logits: (m, V), h: n_layer x (m, H)
        logp = torch.log_softmax(logits.float(), dim=-1) if scored else None  # (m, V)
        m = rows.numel()
        if t < len(prefix_ids):  # forced: condition the state on the prefix
            nxt = torch.full((m,), prefix_ids[t], dtype=torch.long, device=device)
        else:
            nxt = _draw(logits, t, max_len, min_len, temperature, top_k, generator)  # (m,)
        if scored:
            logprob.index_add_(0, rows, logp.gather(1, nxt[:, None]).squeeze(1))
        going = nxt != END  # (m,)
        if t < max_len:
            out[rows, t] = torch.where(going, nxt, 0)
        length.index_add_(0, rows, going.long())
        if not going.all():  # finished names leave the batch: later steps run only the rest
            keep = going.nonzero().squeeze(1)  # (m',)
            rows, nxt = rows.index_select(0, keep), nxt.index_select(0, keep)
            h = [h_l.index_select(0, keep) for h_l in h]
            if rows.numel() == 0:
                break
        token = nxt

    model.train(was_training)
    return out.cpu(), length.cpu(), logprob.cpu() if scored else None


class _Steps:
    """One step of ``model`` for every live name: ``model(token[:, None], h)``'s arithmetic, op for op, with
    the per-step work that does not depend on the step done once per call: the layers' weights
    concatenated (and cast under autocast), and layer 0's projected embedding table. A compiled
    model (``sample --compile``) is called as it is."""

    def __init__(self, model: GRULanguageModel):
        self.model = model
        self.compiled = getattr(model, "_compiled_call_impl", None) is not None
        if self.compiled:
            return
        device_type = model.head.weight.device.type
        self.low = _autocast_dtype(device_type)  # autocast's matmul dtype, as gru_layer reads it
        first = model.layers[0]
        with torch.autocast(device_type, enabled=False):  # as GRULanguageModel._input_gates
            self.table = F.linear(model.embedding.weight, *first.input_weights())  # (V, 3H): layer 0's input terms
        self.inputs = [layer.input_weights() for layer in model.layers[1:]]  # (3H, H), (3H,) each
        self.hidden = [tuple(w if self.low is None else w.to(self.low) for w in layer.hidden_weights())
                       for layer in model.layers]  # (2H, H), (H, H) each

    def __call__(self, token: torch.Tensor, h: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """token: (m,), h: n_layer x (m, H) -> logits (m, V), the new h."""
        if self.compiled:
            logits, h_new = self.model(token[:, None], torch.stack(h))
            return logits[:, -1], list(h_new)
        m, x, h_new = token.shape[0], None, []
        for i, (h_l, (w_rz, w_h)) in enumerate(zip(h, self.hidden)):
            gates = F.embedding(token, self.table) if i == 0 else F.linear(x, *self.inputs[i - 1])  # (m, 3H)
            # one step a call: model.py's Python loop (the compiled one saves nothing on one step, and
            # sampling never waits for its first build)
            x = _layer_forward_loop(gates, h_l, w_rz, w_h, None, [m], self.low, own_gates=True)[0]  # (m, H)
            h_new.append(x)
        return self.model.head(self.model.norm(x)), h_new  # (m, V)


def _draw(logits: torch.Tensor, t: int, max_len: int, min_len: int, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """The next character of each live name at step ``t``. logits: (m, V) -> (m,) token ids."""
    # (m, V); x / 1 is x, so at temperature 1 no copy is made and scores may be logits itself: the caller
    # has taken what it needs from logits (its log-probabilities) before the draw, which overwrites them
    scores = logits.float() / temperature if temperature != 1 else logits.float()
    scores[:, PAD] = float("-inf")  # padding is never sampled
    if t < min_len:
        scores[:, END] = float("-inf")  # too short to end
    if t == max_len:  # out of room: the name ends here
        scores[:, :] = float("-inf")
        scores[:, END] = 0.0
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (m, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (m, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)  # (m, 1), in [0, 1)
    return _pick(probs, u)


def _pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: each row's first token whose running total of probability exceeds u times the
    row's total. probs: (m, V) >= 0, each row's total a normal float (softmax's: its largest entry is at
    least 1 / V); u: (m, 1) in [0, 1) -> (m,) token ids.

    One uniform number a name, where torch.multinomial's draw (argmax of p / q, q ~ Exp(1)) takes one a
    vocabulary entry. A token of probability 0 adds nothing to the running total, so it is never the
    first to exceed anything (u * total < total, so some token always does)."""
    cdf = probs.cumsum(dim=-1)  # (m, V), non-decreasing
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)  # (m,)
