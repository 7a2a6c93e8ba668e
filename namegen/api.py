"""``NameGenerator``: the Python API over a trained checkpoint. ``sample.py`` is a thin layer on it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from namegen.checkpoint import LoadedModel, load_checkpoint
from namegen.data import END, IGNORE, encode_names
from namegen.errors import UserError
from namegen.sampling import sample_ids


class NameGenerator:
    """Sample and score names with a trained model.

    >>> gen = NameGenerator.from_checkpoint(CKPT)      # doctest: +SKIP
    >>> names = gen.sample(5, temperature=0.8, seed=0)  # doctest: +SKIP
    >>> len(names)                                      # doctest: +SKIP
    5
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.model = loaded.model
        self.vocab = loaded.vocab
        self.meta = loaded.meta
        self.device = torch.device(device)
        self.start_token = END

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "NameGenerator":
        device = _check_device(device)
        return cls(load_checkpoint(path, device), device)

    @property
    def block_size(self) -> int:
        return int(self.meta["config"]["block_size"])

    def sample(
        self,
        n: int = 20,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        prefix: str = "",
        seed: int | None = None,
        max_len: int | None = None,
        min_len: int = 1,
        batch_size: int = 8192,
    ) -> list[str]:
        """``n`` sampled names (never empty); same ``seed`` -> same names."""
        return [name for name, _ in self.sample_with_logprob(
            n, temperature=temperature, top_k=top_k, prefix=prefix, seed=seed,
            max_len=max_len, min_len=min_len, batch_size=batch_size,
        )]

    def sample_with_logprob(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        prefix: str = "",
        seed: int | None = None,
        max_len: int | None = None,
        min_len: int = 1,
        batch_size: int = 8192,
    ) -> list[tuple[str, float]]:
        """Like ``sample``, with each name's log-probability under the model (nats)."""
        max_len = self.block_size if max_len is None else max_len
        self._check(n, temperature, top_k, prefix, max_len, min_len)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))
        out: list[tuple[str, float]] = []
        for start in range(0, n, batch_size):
            ids, logprob = sample_ids(
                self.model,
                min(batch_size, n - start),
                max_len=max_len,
                min_len=max(min_len, 1),
                temperature=temperature,
                top_k=top_k,
                prefix_ids=self.vocab.encode(prefix),
                start_token=self.start_token,
                generator=generator,
                device=self.device,
            )
            out.extend((self.vocab.decode(row), float(lp)) for row, lp in zip(ids, logprob))
        return out

    @torch.no_grad()
    def score(self, names: list[str]) -> list[float]:
        """Per-name negative log-likelihood (nats), end token included."""
        if not names:
            return []
        for name in names:
            unknown = self.vocab.unknown_chars(name)
            if unknown or not name:
                raise UserError(f"cannot score {name!r}: characters not in the vocabulary: {''.join(unknown)!r}")
        x, y, _ = encode_names(names, self.vocab)
        x, y = x.to(self.device), y.to(self.device)
        if self.start_token != END:
            x[:, 0] = self.start_token
        logits, _ = self.model(x)  # (N, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2).float(), y, ignore_index=IGNORE, reduction="none")  # (N, T)
        return nll.sum(dim=1).tolist()

    def _check(self, n, temperature, top_k, prefix, max_len, min_len) -> None:
        if n <= 0:
            raise UserError(f"--num must be a positive integer, got {n}")
        if not temperature > 0:
            raise UserError(f"--temperature must be greater than 0, got {temperature}")
        n_chars = len(self.vocab) - 1  # every token but padding can be sampled
        if top_k is not None and not 1 <= top_k <= n_chars:
            raise UserError(f"--top-k must be between 1 and {n_chars} (this model's vocabulary), got {top_k}")
        unknown = self.vocab.unknown_chars(prefix)
        if unknown:
            raise UserError(
                f"--prefix: {''.join(unknown)!r} not in this model's vocabulary "
                f"({''.join(self.vocab.chars)!r})"
            )
        if min_len < 0 or max_len < 1 or max_len < max(min_len, len(prefix), 1):
            raise UserError(
                f"--max-len {max_len} must be at least 1, --min-len {min_len} and the prefix length {len(prefix)}"
            )


def _check_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device
