"""Evaluate a checkpoint: NLL per character and perplexity on names, and statistics of its samples.

``mean NLL per character`` has the definition of ``val/loss`` in training: the
negative log-likelihood (nats) of every predicted character, the end token
included, summed over all names and divided by the number of predicted
characters (a character-weighted mean, not a mean of batch means). With the
checkpoint's own data file and seed, the validation split is rebuilt exactly as
training split it, so evaluating ``best.ckpt`` gives back its best ``val/loss``.

Sample statistics compare ``N`` seeded samples with the data:

- ``new``: share of samples found nowhere in the data file (neither split);
- ``train_copy``: share that reproduce a name of the training split (memorized);
- ``val_only``: share that match a validation name the model never trained on;
  (``new + train_copy + val_only == 1``);
- ``duplicate``: share of samples that repeat an earlier sample (1 - distinct/N);
- ``empty``: share of empty samples (sampling never returns one; checked anyway);
- ``mean_len`` against ``data_mean_len`` (characters, over the data file);
- ``first_letter_tv``: total-variation distance between the first-letter
  distribution of the samples and that of the data file,
  ``0.5 * sum_c |p_samples(c) - p_data(c)|``, in [0, 1];
- ``first_letter_tv_noise``: the same distance for ``N`` names drawn from the
  data file itself (mean of 20 draws): sampling noise alone. With N = 1,000 it
  is about 0.06 on names.txt, so only a larger N resolves differences below it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from namegen.api import NameGenerator, check_device, load_model
from namegen.checkpoint import LoadedModel, resolve_checkpoint
from namegen.data import DEFAULT_DATA, IGNORE, encode_names, find_training_file, fold, read_names, split_names
from namegen.errors import UserError, shown_path
from namegen.model import char_nll

PROGRESS_MIN = 5_000  # show a progress bar from this many names (evaluation) or samples


# ---------------------------------------------------------------------------- likelihood


@dataclass
class Likelihood:
    nll: float  # mean negative log-likelihood per predicted character (nats)
    ppl: float  # exp(nll)
    n_names: int
    n_chars: int  # predicted characters, end tokens included


@torch.no_grad()
def evaluate_nll(
    loaded: LoadedModel,
    names: list[str],
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> Likelihood:
    """Mean NLL per character and perplexity of ``names`` under the model (eval mode, no dropout)."""
    if not names:
        raise UserError("nothing to evaluate: the list of names is empty")
    names = fold(names, loaded.case)  # as the model learned them
    unknown = loaded.vocab.unknown_chars("".join(names))
    if unknown:
        raise UserError(f"characters not in the model's vocabulary: {''.join(unknown)!r}", about="data")
    model = loaded.model.to(device)
    was_training = model.training
    model.eval()
    order = sorted(range(len(names)), key=lambda i: len(names[i]))  # batches of similar length: less padding
    x_all, y_all, lengths = encode_names([names[i] for i in order], loaded.vocab)
    x_all[:, 0] = loaded.start_token  # '.', or padding for notebook models
    show = len(names) >= PROGRESS_MIN if progress is None else progress
    total = 0.0  # float64 sum of every character's NLL
    for start in tqdm(range(0, len(names), batch_size), desc="evaluating", unit="batch", disable=not show,
                      leave=False):
        stop = start + batch_size
        T = int(lengths[start:stop].max())
        x, y = x_all[start:stop, :T].to(device), y_all[start:stop, :T].to(device)
        logits, _ = model(x)  # (B, T, V)
        total += char_nll(logits, y, IGNORE).double().sum().item()
    model.train(was_training)
    n_chars = int(lengths.sum())
    nll = total / n_chars
    return Likelihood(nll=nll, ppl=math.exp(nll), n_names=len(names), n_chars=n_chars)


# ---------------------------------------------------------------------------- data of a checkpoint


@dataclass
class CheckpointData:
    """The names a checkpoint was trained with: the whole file and its split."""

    path: Path
    names: list[str]
    train: list[str]
    val: list[str]


def shown_data(path: str | Path) -> str:
    """A data file as a report names it: relative to the current directory when below it, the
    shipped names.txt by that name wherever namegen is installed, else as recorded."""
    shown = shown_path(path)
    if Path(shown).is_absolute() and Path(path).resolve() == DEFAULT_DATA.resolve():
        return "namegen/assets/names.txt (shipped with namegen)"
    return shown


def checkpoint_data(loaded: LoadedModel, data: str | Path | None = None) -> CheckpointData:
    """Rebuild the training file's train/validation split from the checkpoint's record.

    ``data`` replaces the recorded path (for a file that moved); its sha256 must
    match the record, else the split would silently differ.
    """
    path = find_training_file(loaded.meta.get("data"), data, owner=str(loaded.path or "this checkpoint"))
    names = read_names(path)
    train, val = split_names(names, loaded.config.data_seed)
    return CheckpointData(path=path, names=names, train=train, val=val)


# ---------------------------------------------------------------------------- samples


@dataclass
class SampleStats:
    n: int
    new: float
    train_copy: float
    val_only: float
    duplicate: float
    empty: float
    mean_len: float
    data_mean_len: float
    first_letter_tv: float
    first_letter_tv_noise: float  # mean TV of n names drawn from the data itself: the noise floor at this n
    copy_excess: float  # (train_copy / val_only) / (|train| / |val|): 1.0 = no more copying than generalising


def first_letter_distribution(names: list[str]) -> dict[str, float]:
    counts = Counter(name[0] for name in names if name)
    total = sum(counts.values())
    return {c: k / total for c, k in counts.items()} if total else {}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """0.5 * sum |p - q| over the union of outcomes."""
    return 0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in set(p) | set(q))


def tv_noise_floor(data: list[str], n: int, draws: int = 20, seed: int = 0) -> float:
    """Mean first-letter TV between ``n`` names drawn (with replacement) from ``data`` and ``data`` itself:
    what sampling noise alone gives, the floor a perfect model would sit at with ``n`` samples."""
    rng = random.Random(seed)
    q = first_letter_distribution(data)
    return sum(total_variation(first_letter_distribution(rng.choices(data, k=n)), q) for _ in range(draws)) / draws


def sample_stats(samples: list[str], train: list[str], val: list[str]) -> SampleStats:
    """Statistics of ``samples`` against a training split and a validation split (see module doc)."""
    if not samples:
        raise UserError("no samples to describe")
    train_set, val_set = set(train), set(val)
    data = list(train) + list(val)
    n = len(samples)
    in_train = sum(s in train_set for s in samples)
    in_val_only = sum(s in val_set and s not in train_set for s in samples)
    return SampleStats(
        n=n,
        new=(n - in_train - in_val_only) / n,
        train_copy=in_train / n,
        val_only=in_val_only / n,
        duplicate=1 - len(set(samples)) / n,
        empty=sum(not s for s in samples) / n,
        mean_len=sum(map(len, samples)) / n,
        data_mean_len=sum(map(len, data)) / len(data) if data else float("nan"),
        first_letter_tv=total_variation(first_letter_distribution(samples), first_letter_distribution(data)),
        first_letter_tv_noise=tv_noise_floor(data, n) if data else float("nan"),
        copy_excess=(in_train / in_val_only) / (len(train) / len(val)) if in_val_only and val else float("nan"),
    )


def draw_samples(
    loaded: LoadedModel,
    n: int,
    seed: int = 0,
    max_len: int | None = None,
    temperature: float = 1.0,
    chunk: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> list[str]:
    """``n`` names sampled at ``temperature``, in chunks of ``chunk`` (chunk ``i`` seeded ``seed + i``).

    The same ``seed`` and ``n`` give the same names.
    """
    if n <= 0:
        raise UserError(f"num_samples must be a positive integer, got {n}", about="num_samples")
    gen = NameGenerator(loaded, device)
    show = n >= PROGRESS_MIN if progress is None else progress
    out: list[str] = []
    with tqdm(total=n, desc="sampling", unit="name", disable=not show, leave=False) as bar:
        for i, start in enumerate(range(0, n, chunk)):
            k = min(chunk, n - start)
            out.extend(gen.sample(k, seed=seed + i, max_len=max_len, temperature=temperature))
            bar.update(k)
    return out


def stats_max_len(loaded: LoadedModel, data: CheckpointData) -> int:
    """Sampling room for statistics: the config's block_size, or the longest training name if longer,
    so that the length statistics are not cut short by ``block_size``."""
    return max(loaded.config.block_size, max(map(len, data.names)))


# ---------------------------------------------------------------------------- the command


@dataclass
class Evaluation:
    checkpoint: str
    size: str
    parameters: int
    config: dict
    evaluated_on: str
    likelihood: Likelihood
    samples: SampleStats
    examples: list[str]
    names: list[str] = field(default_factory=list, repr=False)  # every sample drawn (not in to_dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "names"}


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path | None = None,
    train_data: str | Path | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    temperature: float = 1.0,
    n_examples: int = 10,
    device: str = "cpu",
    progress: bool | None = None,
) -> Evaluation:
    """NLL/perplexity on the validation split (or on every name of ``data``) and sample statistics."""
    loaded = load_model(resolve_checkpoint(ckpt), check_device(device))
    split = checkpoint_data(loaded, train_data)
    if data is not None:
        names, where = read_names(data), f"{data} (all names)"
    else:
        names, where = split.val, f"validation split of {shown_data(split.path)} (seed {loaded.config.data_seed})"
    likelihood = evaluate_nll(loaded, names, device=device, progress=progress)
    max_len = stats_max_len(loaded, split)
    samples = draw_samples(loaded, num_samples, seed=seed, max_len=max_len, temperature=temperature,
                           device=device, progress=progress)
    return Evaluation(
        checkpoint=shown_path(ckpt),  # as given, or relative to here: a report never holds this machine's paths
        size=loaded.size,
        parameters=loaded.model.num_parameters(),
        config=loaded.config.to_dict(),
        evaluated_on=where,
        likelihood=likelihood,
        samples=sample_stats(samples, split.train, split.val),
        examples=samples[:n_examples],
        names=samples,
    )


def format_evaluation(ev: Evaluation) -> str:
    s, lk = ev.samples, ev.likelihood
    return "\n".join([
        f"checkpoint     {ev.checkpoint} ({ev.size}, {ev.parameters:,} parameters)",
        f"evaluated on   {ev.evaluated_on}: {lk.n_names:,} names, {lk.n_chars:,} characters",
        f"NLL/char       {lk.nll:.4f} nats   perplexity {lk.ppl:.3f}",
        f"samples        {s.n:,}: new {s.new:.1%}, copy a training name {s.train_copy:.1%}, "
        f"match a validation name {s.val_only:.1%}, duplicates {s.duplicate:.1%}, empty {s.empty:.1%}",
        f"copy excess    {s.copy_excess:.2f} ((copies / validation matches) / (|train| / |val|); 1.00 = no more "
        "copying than generalisation explains)",
        f"length         mean {s.mean_len:.2f} (data {s.data_mean_len:.2f})",
        f"first letter   total variation {s.first_letter_tv:.3f} from the data's distribution "
        f"({s.n:,} names drawn from the data itself: {s.first_letter_tv_noise:.3f})",
        f"examples       {', '.join(ev.examples)}",
    ])
