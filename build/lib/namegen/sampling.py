"""Batched sampling: every name of a call advances together, one step per character.

The hidden state is carried from step to step, so each character costs one
forward step for the whole batch; the prefix is never re-run, and names that
have ended leave the batch, so later steps only run the names still going.
"""

from __future__ import annotations

import torch

from namegen.data import END, PAD
from namegen.model import GRULanguageModel


@torch.no_grad()
def sample_ids(
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
) -> tuple[list[list[int]], torch.Tensor]:
    """Sample ``n`` names as lists of character ids (end token stripped).

    Returns the id lists and each name's log-probability under the model
    (prefix characters included, temperature 1) as an ``(n,)`` tensor.
    ``min_len``/``max_len`` count characters, prefix included: the end token is
    masked out until ``min_len`` is reached, and a name that reaches
    ``max_len`` stops there. Padding is never sampled.
    """
    prefix_ids = list(prefix_ids or [])
    was_training = model.training
    model.eval()
    h = model.init_hidden(n, device)
    token = torch.full((n, 1), start_token, dtype=torch.long, device=device)  # (m, 1), m = names still going
    rows = torch.arange(n, device=device)  # (m,): which of the n names each live row is
    logprob = torch.zeros(n, device=device)
    out = torch.zeros(n, max_len, dtype=torch.long, device=device)  # (n, max_len) character ids
    length = torch.zeros(n, dtype=torch.long, device=device)

    for t in range(max_len + 1):
        logits, h = model(token, h)  # logits: (m, 1, V), h: (n_layer, m, H)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (m, V)
        m = rows.numel()
        if t < len(prefix_ids):  # forced: condition the state on the prefix
            nxt = torch.full((m,), prefix_ids[t], dtype=torch.long, device=device)
        else:
            nxt = _draw(logits[:, -1], t, max_len, min_len, temperature, top_k, generator)  # (m,)
        logprob.index_add_(0, rows, logp.gather(1, nxt[:, None]).squeeze(1))
        going = nxt != END  # (m,)
        if t < max_len:
            out[rows, t] = torch.where(going, nxt, 0)
        length.index_add_(0, rows, going.long())
        if not going.all():  # finished names leave the batch: later steps run only the rest
            rows, h, nxt = rows[going], h[:, going], nxt[going]
            if rows.numel() == 0:
                break
        token = nxt[:, None]

    model.train(was_training)
    lengths = length.tolist()
    rows = out.tolist()
    return [row[:L] for row, L in zip(rows, lengths)], logprob.cpu()


def _draw(logits: torch.Tensor, t: int, max_len: int, min_len: int, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """The next character of each live name at step ``t``. logits: (m, V) -> (m,) token ids."""
    scores = logits.float() / temperature  # (m, V)
    scores[:, PAD] = float("-inf")  # padding is never sampled
    if t < min_len:
        scores[:, END] = float("-inf")  # too short to end
    if t == max_len:  # out of room: the name ends here
        scores[:, :] = float("-inf")
        scores[:, END] = 0.0
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (m, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
