"""The Python API: ``load_model`` reads any model file, ``NameGenerator`` samples and scores names.

``sample.py`` (``namegen sample``) is a thin layer on it. Importing it loads no
Lightning, W&B or scikit-learn: a model can be used with torch alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from namegen.checkpoint import LoadedModel, from_checkpoint_dict, read_checkpoint
from namegen.config import LIMITS
from namegen.data import IGNORE, TITLE, encode_names, find_training_file, read_names, shown_all
from namegen.errors import DeviceUnavailable, UserError
from namegen.model import char_nll
from namegen.notebook import from_notebook, is_notebook_checkpoint
from namegen.sampling import sample_rows


def check_device(device: str | torch.device, about: str = "device") -> torch.device:
    """``device`` as a torch.device; DeviceUnavailable when it is CUDA and this machine has none.
    The one CUDA check of namegen (sampling, evaluation, training's accelerator)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("no CUDA GPU is available on this machine", about=about)
    return device


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a namegen checkpoint, or of the notebook's ``.pth`` (recognised by
    its keys, see ``namegen.notebook``), with nothing else needed."""
    path, device = Path(path), check_device(device)
    obj = read_checkpoint(path)
    if is_notebook_checkpoint(obj):
        return from_notebook(obj, path, device)[0]
    return from_checkpoint_dict(obj, path, device)


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
        self.case = loaded.case  # "title": learned in lower case, shown capitalised

    def learned_form(self, text: str) -> str:
        """``text`` as the model writes it: lower case where the model learned lower case ("title"), or
        where the vocabulary has the lower-case letter but not the one given (``Ka`` on a lowercase model)."""
        chars = self.vocab.stoi
        return "".join(c.lower() if len(c.lower()) == 1 and (self.case == TITLE or c not in chars)
                       and c.lower() in chars else c for c in text)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "NameGenerator":
        device = check_device(device)
        return cls(load_model(path, device), device)

    @property
    def block_size(self) -> int:
        return self.loaded.config.block_size

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
        found in ``.found``, as ``(name, None)`` pairs) when that is not enough.
        """
        return self._sample(
            n, False, temperature=temperature, top_k=top_k, prefix=prefix, seed=seed, max_len=max_len,
            min_len=min_len, unique=unique, exclude=exclude, max_draws=max_draws, batch_size=batch_size,
        )[0]

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
        names, logprobs = self._sample(
            n, True, temperature=temperature, top_k=top_k, prefix=prefix, seed=seed, max_len=max_len,
            min_len=min_len, unique=unique, exclude=exclude, max_draws=max_draws, batch_size=batch_size,
        )
        return list(zip(names, logprobs))

    def _sample(self, n: int, scored: bool, *, temperature, top_k, prefix, seed, max_len, min_len, unique, exclude,
                max_draws, batch_size) -> tuple[list[str], list[float] | None]:
        """The names and their log-probabilities; with ``scored=False`` the same names and None: no
        log-probabilities are computed (``sample`` needs none)."""
        max_len = self.block_size if max_len is None else max_len
        typed, prefix = prefix, self.learned_form(prefix)
        self._check(n, temperature, top_k, prefix, max_len, min_len)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))

        def draw(k: int) -> tuple[list[str], list[float] | None]:
            ids, _, logprob = sample_rows(
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
                scored=scored,
            )
            names = shown_all(self.vocab.decode_rows(ids), self.case)
            if typed != prefix:  # names start with the prefix as it was typed
                names = [typed + name[len(typed):] for name in names]
            return names, logprob.tolist() if scored else None

        if not unique and exclude is None:
            names, logprobs = [], [] if scored else None
            for start in range(0, n, batch_size):
                got, scores = draw(min(batch_size, n - start))
                names += got
                if scored:
                    logprobs += scores
            return names, logprobs
        return _draw_filtered(draw, n, unique, exclude or set(), max_draws, batch_size, scored)

    def training_names(self, data: str | Path | None = None) -> set[str]:
        """The names of the training file, to pass as ``exclude=``: ``data`` if given (any file),
        else the file the checkpoint records, which must still be there with the recorded sha256.
        Raises UserError saying which of these failed."""
        if data is not None:
            return set(read_names(data))
        return set(read_names(find_training_file(self.meta.get("data"), owner=str(self.loaded.path or "this checkpoint"))))

    @torch.no_grad()
    def score(self, names: list[str]) -> list[float]:
        """Per-name negative log-likelihood (nats), end token included."""
        if not names:
            return []
        names = [self.learned_form(name) for name in names]
        for name in names:
            unknown = self.vocab.unknown_chars(name)
            if unknown or not name:
                raise UserError(f"cannot score {name!r}: characters not in the vocabulary: {''.join(unknown)!r}",
                                about="names")
        x, y, _ = encode_names(names, self.vocab)
        x, y = x.to(self.device), y.to(self.device)
        x[:, 0] = self.start_token  # '.' for namegen models, padding for notebook ones
        logits, _ = self.model(x)  # (N, T, V)
        return char_nll(logits, y, IGNORE).sum(dim=1).tolist()

    def _check(self, n, temperature, top_k, prefix, max_len, min_len) -> None:
        """Messages name the argument (``top_k``); the command line says its flag (``--top-k``) instead."""
        if n <= 0:
            raise UserError(f"n must be a positive integer, got {n}", about="n")
        if not temperature > 0:
            raise UserError(f"temperature must be greater than 0, got {temperature}", about="temperature")
        n_chars = len(self.vocab) - 1  # every token but padding can be sampled
        if top_k is not None and not 1 <= top_k <= n_chars:
            raise UserError(f"top_k must be between 1 and {n_chars} (this model's vocabulary), got {top_k}",
                            about="top_k")
        unknown = self.vocab.unknown_chars(prefix)
        if unknown:
            raise UserError(f"prefix: {''.join(unknown)!r} not in this model's vocabulary "
                            f"({''.join(self.vocab.chars)!r})", about="prefix")
        if min_len < 0 or max_len < 1 or max_len < max(min_len, len(prefix), 1):
            raise UserError(
                f"max_len {max_len} must be at least 1, min_len {min_len} and the prefix length {len(prefix)}",
                about="max_len",
            )
        if max_len > LIMITS["block_size"]:  # a buffer of n x max_len ids is made up front
            raise UserError(f"max_len is at most {LIMITS['block_size']}, got {max_len}", about="max_len")


def _draw_filtered(draw, n: int, unique: bool, exclude: set[str], max_draws: int | None, batch_size: int,
                   scored: bool) -> tuple[list[str], list[float] | None]:
    """``n`` names (and log-probabilities, ``scored``) from ``draw(k)``, dropping repeats (``unique``) and
    names in ``exclude``, in bounded rounds: at most ``max_draws`` draws (default ``20 * n + 1000``), else
    NotEnoughNames, whose ``found`` holds (name, log-probability or None) pairs."""
    limit = max_draws if max_draws is not None else 20 * n + 1000
    if limit < n:
        raise UserError(f"max_draws must be at least n ({n}), got {limit}", about="max_draws")
    seen: set[str] = set()
    out, draws = [], 0
    while len(out) < n and draws < limit:
        k = min(batch_size, limit - draws, max(2 * (n - len(out)), 256))
        draws += k
        names, logprobs = draw(k)
        for name, lp in zip(names, logprobs if scored else [None] * len(names)):
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
            "ask for fewer, or loosen max_len/min_len/prefix/top_k/temperature",
            found=out,
        )
    names = [name for name, _ in out]
    return names, [lp for _, lp in out] if scored else None


class NotEnoughNames(UserError):
    """``unique``/``exclude`` could not be met within ``max_draws``; ``found`` holds what was."""

    def __init__(self, message: str, found: list[tuple[str, float]]):
        super().__init__(message, about="sampling")
        self.found = found
