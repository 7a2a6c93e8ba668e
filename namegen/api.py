"""``NameGenerator``: the Python API over a trained checkpoint. ``sample.py`` is a thin layer on it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from namegen.checkpoint import LoadedModel, load_checkpoint
from namegen.data import IGNORE, encode_names, read_names, sha256_of
from namegen.errors import UserError
from namegen.sampling import sample_ids


class NameGenerator:
    """Sample and score names with a trained model: a namegen ``.ckpt``, a converted
    notebook checkpoint, or the notebook's ``.pth`` itself.

    >>> from namegen import NameGenerator
    >>> gen = NameGenerator.from_checkpoint(CKPT, device="cpu")
    >>> names = gen.sample(5, temperature=0.8, top_k=10, seed=0)
    >>> len(names), all(isinstance(name, str) and name for name in names)
    (5, True)
    >>> names == gen.sample(5, temperature=0.8, top_k=10, seed=0)  # same seed, same names
    True
    >>> all(name.startswith("ka") for name in gen.sample(5, prefix="ka", seed=1))
    True
    >>> len(set(gen.sample(30, unique=True, seed=2)))  # no repeats
    30
    >>> nll = gen.score(["emma", "olivia"])  # per-name negative log-likelihood, nats
    >>> len(nll), all(value > 0 for value in nll)
    (2, True)

    (``CKPT`` is a tiny untrained checkpoint here, so the names are noise.)
    Notebook models start every name from padding (``gen.start_token == 0``),
    as the notebook did; namegen's own start from ``.`` (1).
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.model = loaded.model
        self.vocab = loaded.vocab
        self.meta = loaded.meta
        self.device = torch.device(device)
        self.start_token = loaded.start_token  # 1 ('.'), or 0 (padding) for notebook models

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
        unique: bool = False,
        exclude: set[str] | None = None,
        max_draws: int | None = None,
        batch_size: int = 8192,
    ) -> list[str]:
        """``n`` sampled names (never empty); the same ``seed`` gives the same names.

        ``prefix`` conditions the hidden state on the given letters (every name
        starts with them); ``min_len``/``max_len`` bound the length during
        generation (the end token is masked before ``min_len``, forced at
        ``max_len``), so they never loop. ``unique=True`` drops repeats and
        ``exclude`` (e.g. ``training_names()``) drops names in a set; both
        resample in bounded rounds, at most ``max_draws`` draws in all (default
        ``20 * n + 1000``), and raise ``NotEnoughNames`` (which carries what was
        found in ``.found``) when that is not enough.
        """
        return [name for name, _ in self.sample_with_logprob(
            n, temperature=temperature, top_k=top_k, prefix=prefix, seed=seed, max_len=max_len,
            min_len=min_len, unique=unique, exclude=exclude, max_draws=max_draws, batch_size=batch_size,
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
        unique: bool = False,
        exclude: set[str] | None = None,
        max_draws: int | None = None,
        batch_size: int = 8192,
    ) -> list[tuple[str, float]]:
        """Like ``sample``, with each name's log-probability under the model (nats,
        temperature 1, prefix and end token included)."""
        max_len = self.block_size if max_len is None else max_len
        self._check(n, temperature, top_k, prefix, max_len, min_len)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))

        def draw(k: int) -> list[tuple[str, float]]:
            ids, logprob = sample_ids(
                self.model,
                k,
                max_len=max_len,
                min_len=max(min_len, 1),
                temperature=temperature,
                top_k=top_k,
                prefix_ids=self.vocab.encode(prefix),
                start_token=self.start_token,
                generator=generator,
                device=self.device,
            )
            return [(self.vocab.decode(row), float(lp)) for row, lp in zip(ids, logprob)]

        if not unique and exclude is None:
            out: list[tuple[str, float]] = []
            for start in range(0, n, batch_size):
                out.extend(draw(min(batch_size, n - start)))
            return out

        limit = max_draws if max_draws is not None else 20 * n + 1000
        if limit < n:
            raise UserError(f"max_draws must be at least n ({n}), got {limit}")
        exclude = exclude or set()
        seen: set[str] = set()
        out, draws = [], 0
        while len(out) < n and draws < limit:
            k = min(batch_size, limit - draws, max(2 * (n - len(out)), 256))
            draws += k
            for name, lp in draw(k):
                if name in exclude or (unique and name in seen):
                    continue
                seen.add(name)
                out.append((name, lp))
                if len(out) == n:
                    break
        if len(out) < n:
            wanted = " and ".join(w for w, on in (("distinct", unique), ("new", bool(exclude))) if on) or "allowed"
            bound = "max_draws" if max_draws is not None else "the bound, 20 x n + 1000"
            raise NotEnoughNames(
                f"only {len(out)} of {n} {wanted} names after {draws} draws ({bound}); "
                "ask for fewer, or loosen --max-len/--min-len/--prefix/--top-k/--temperature",
                found=out,
            )
        return out

    def training_names(self, data: str | Path | None = None) -> set[str]:
        """The names of the training file, to pass as ``exclude=``.

        Reads ``data`` if given, else the file the checkpoint records
        (``meta["data"]["path"]``), which must still be there with the recorded
        sha256. Raises UserError saying which of these failed.
        """
        recorded = self.meta.get("data") or {}
        if data is not None:
            return set(read_names(data))
        path, sha = recorded.get("path"), recorded.get("sha256")
        if not path:
            raise UserError(
                "this checkpoint does not record its training file (notebook models do not); "
                "pass the file with --data PATH"
            )
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"the training file recorded in the checkpoint, {path}, is not there; pass it with --data PATH"
            )
        if sha and sha256_of(path) != sha:
            raise UserError(
                f"the training file {path} has changed since training (its sha256 differs from the one "
                "recorded in the checkpoint); pass the original with --data PATH"
            )
        return set(read_names(path))

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
        x[:, 0] = self.start_token  # '.' for namegen models, padding for notebook ones
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


class NotEnoughNames(UserError):
    """``unique``/``exclude`` could not be met within ``max_draws``; ``found`` holds what was."""

    def __init__(self, message: str, found: list[tuple[str, float]]):
        super().__init__(message)
        self.found = found


def _check_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device
