"""Names file -> vocabulary -> padded tensors -> batches. Plain PyTorch (the DataModule is
``namegen.datamodule``).

Tokens: 0 is padding, 1 is ``.`` (which marks both the start and the end of a
name), the file's characters, sorted, take 2 and up. Every name is shown to the
model with ``.`` as its first input, so the model learns first letters::

    input   .  e  m  m  a          (padded with 0)
    target  e  m  m  a  .          (padded with -100, ignored by the loss)

The default data is makemore's ``names.txt`` (32,033 US baby names, public
domain), shipped inside the package so training needs no network.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from namegen.errors import UserError

PAD, END = 0, 1
IGNORE = -100
DEFAULT_DATA = Path(__file__).resolve().parent / "assets" / "names.txt"
#: the longest name read: every name is padded to the longest, so one line of a million characters would
#: make the training tensors a million columns wide
MAX_NAME_CHARS = 256
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


# ---------------------------------------------------------------------------- reading


def read_names(path: str | os.PathLike) -> list[str]:
    """Read one name per line; strip whitespace, ``\\r`` and BOMs; drop blank lines.

    Raises UserError about ``"data"``, naming the file (and line), for anything
    that is not a usable UTF-8 names file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a text file with one name per line", about="data")
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass a text file with one name per line", about="data")
    if not path.is_file():  # /dev/zero, a FIFO: reading would never end
        raise UserError(f"{path} is not a regular file; pass a text file with one name per line", about="data")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise UserError(f"{path} looks binary (it contains NUL bytes); pass a UTF-8 text file", about="data")
    names = [name for lineno, line in enumerate(raw.split(b"\n"), start=1) if (name := _name(path, lineno, line))]
    if not names:
        raise UserError(
            f"{path} has no names (it is empty or only blank lines); pass a text file with one name per line",
            about="data",
        )
    return names


def _name(path: Path, lineno: int, line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} line {lineno} is not valid UTF-8 (byte {exc.start + 1}); re-save the file as UTF-8", about="data"
        ) from None
    name = text.replace("\ufeff", "").strip()
    if len(name) > MAX_NAME_CHARS:
        raise UserError(f"{path} line {lineno} is {len(name)} characters long; a name is at most {MAX_NAME_CHARS} "
                        "(is it one name per line?)", about="data")
    if "." in name:
        raise UserError(
            f"{path} line {lineno} contains '.', which namegen reserves for the start/end-of-name token; "
            "remove or replace it",
            about="data",
        )
    return name


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_training_file(record: dict | None, given: str | os.PathLike | None = None, owner: str = "this checkpoint") -> Path:
    """The training file of a checkpoint: ``given`` if passed, else the path ``record`` (a checkpoint's
    ``meta["data"]``) names. Either way it must exist and, when the record has a sha256, match it
    (otherwise the train/validation split would silently differ). UserError about ``"train_data"``."""
    record = record or {}
    recorded = record.get("path")
    if given is None and not recorded:
        raise UserError(f"{owner} does not record its training file (notebook models do not); pass the file",
                        about="train_data")
    path = Path(given if given is not None else recorded)
    if not path.is_file():
        where = "given" if given is not None else f"recorded in {owner}"
        raise UserError(f"the training file {path} {where} is not there; pass it (the same file, moved)",
                        about="train_data")
    expected = record.get("sha256")
    if expected and sha256_of(path) != expected:
        raise UserError(
            f"the training file {path} has changed since training (its sha256 differs from the record "
            f"{expected[:12]}... in {owner}); pass the original",
            about="train_data",
        )
    return path


# ---------------------------------------------------------------------------- case
#
# Lists people bring are capitalised ("Émile", "Zoë", "Jean-Luc"); names.txt and the models trained on
# it are lowercase. A list whose every name is capitalised this plain way (each part's first letter
# upper case, the rest lower case) is learned in lower case, so that "É" and "é" are one letter to the
# model, and the checkpoint records ``case: "title"``: sampling capitalises what the model writes.
# Any other list (all lower case, or with capitals inside a part: "McKenna") is learned as it is.

TITLE, AS_IS = "title", "as-is"
_PART_STARTS = (" ", "-")


def capitalise(name: str) -> str:
    """Upper-case each part's first letter (after the start, a space or a hyphen): ``jean-luc`` -> ``Jean-Luc``.
    A letter whose upper case is not one letter (``ß``) is left as it is."""
    out = []
    for i, c in enumerate(name):
        first = i == 0 or name[i - 1] in _PART_STARTS
        out.append(c.upper() if first and len(c.upper()) == 1 else c)
    return "".join(out)


def case_of(names: list[str]) -> str:
    """``"title"`` when every name is capitalised as ``capitalise`` writes it (and lower-casing keeps its
    length), else ``"as-is"``."""
    def titled(name: str) -> bool:
        low = name.lower()
        return len(low) == len(name) and capitalise(low) == name
    if any(n != n.lower() for n in names) and all(titled(n) for n in names):
        return TITLE
    return AS_IS


def fold(names: list[str], case: str) -> list[str]:
    """The names as the model learns them: lower case under ``"title"``, else unchanged."""
    return [n.lower() for n in names] if case == TITLE else list(names)


def shown(name: str, case: str) -> str:
    """A name the model wrote, as the user sees it: capitalised under ``"title"``."""
    return capitalise(name) if case == TITLE else name


def shown_all(names: list[str], case: str) -> list[str]:
    """``shown`` of each name (the list itself when nothing changes)."""
    return [capitalise(name) for name in names] if case == TITLE else names


# ---------------------------------------------------------------------------- vocabulary


class Vocab:
    """Characters <-> token ids. 0 = padding, 1 = ``.``, characters from 2."""

    def __init__(self, chars: list[str]):
        chars = list(chars)
        if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars) or "." in chars:
            raise ValueError("vocabulary must be distinct single characters, without '.'")
        if any(c in "\n\x00" or "\ud800" <= c <= "\udfff" for c in chars):  # a names file never yields them
            raise ValueError("vocabulary holds a line break, NUL or a lone surrogate, which no names file yields")
        self.chars = chars
        self.stoi = {c: i + 2 for i, c in enumerate(chars)}
        self.itos = {i + 2: c for i, c in enumerate(chars)}

    @classmethod
    def from_names(cls, names: list[str]) -> "Vocab":
        return cls(sorted(set("".join(names))))

    def __len__(self) -> int:
        """Number of token ids, padding and ``.`` included (the model's output size)."""
        return len(self.chars) + 2

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def encode(self, name: str) -> list[int]:
        return [self.stoi[c] for c in name]

    def decode(self, ids) -> str:
        return "".join(self.itos.get(int(i), "") for i in ids)

    def decode_rows(self, ids: torch.Tensor) -> list[str]:
        """``decode`` of every row of ids (n, L), padding (0) after each name: one pass over all of them."""
        if len(self) > 255:
            return [self.decode(row) for row in ids.tolist()]
        # one character per id, each row closed by id 255 ("\n", which no vocabulary holds): one translate
        # and one split for all the rows
        ends = torch.full((ids.shape[0], 1), 255, dtype=torch.uint8)
        text = torch.cat([ids.to(torch.uint8), ends], dim=1).numpy().tobytes().decode("latin-1")
        table = {i: self.itos.get(i) for i in range(len(self))} | {255: "\n"}  # padding and '.' to nothing
        return text.translate(table).split("\n")[:-1]

    def unknown_chars(self, text: str) -> list[str]:
        return sorted(set(text) - set(self.stoi))


def encode_names(names: list[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return inputs ``(N, T)``, targets ``(N, T)`` and lengths ``(N,)`` with T = longest + 1."""
    T = max(len(n) for n in names) + 1
    x = torch.full((len(names), T), PAD, dtype=torch.long)
    y = torch.full((len(names), T), IGNORE, dtype=torch.long)
    lengths = torch.empty(len(names), dtype=torch.long)
    for i, name in enumerate(names):
        ids = vocab.encode(name)
        x[i, : len(ids) + 1] = torch.tensor([END] + ids)
        y[i, : len(ids) + 1] = torch.tensor(ids + [END])
        lengths[i] = len(ids) + 1
    return x, y, lengths


def split_names(names: list[str], seed: int, val_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """The notebook's 80/20 split, fixed by ``seed`` on every machine.

    The same split as the notebook's ``sklearn.model_selection.train_test_split(names,
    test_size=0.2, random_state=seed)`` (a test checks it against scikit-learn), computed
    with NumPy alone: a ``RandomState(seed)`` permutation, its first ceil(0.2 N) rows
    validate and the rest train.
    """
    if len(names) < 2:
        raise UserError(
            f"the file has {len(names)} name; at least 2 are needed for a train/validation split", about="data"
        )
    order = np.random.RandomState(seed).permutation(len(names))
    n_val = math.ceil(val_fraction * len(names))
    return [names[i] for i in order[n_val:]], [names[i] for i in order[:n_val]]


# ---------------------------------------------------------------------------- batching


class NameBatches(torch.utils.data.Dataset):
    """Whole batches by index from tensors kept on one device, trimmed to their longest name.

    Used with ``DataLoader(batch_size=None, sampler=IndexBatchSampler(...))``:
    each item the sampler yields is a list of row indices, and ``self[rows]``
    is one ready batch; no per-sample collate.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor):
        self.x, self.y, self.lengths = x, y, lengths

    def to(self, device) -> "NameBatches":
        self.x, self.y, self.lengths = self.x.to(device), self.y.to(device), self.lengths.to(device)
        return self

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(rows, device=self.x.device)
        # longest first: the model then skips padding without sorting (the loss does not depend on row order)
        rows = rows[torch.argsort(self.lengths[rows], descending=True, stable=True)]
        T = int(self.lengths[rows[0]])
        return self.x[rows, :T], self.y[rows, :T]


class IndexBatchSampler(torch.utils.data.Sampler):
    """Yields lists of row indices, one list per batch.

    Shuffled per epoch from ``seed + epoch`` (Lightning calls ``set_epoch``), and
    sharded across ranks for multi-process training (each rank gets the same
    number of batches). ``group_by_length`` sorts rows by length inside windows
    of 50 batches before cutting batches, so batches carry less padding.
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        group_by_length: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = lengths.cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[torch.Tensor]:
        n = len(self.lengths)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            gen, order = None, torch.arange(n)
        if self.group_by_length:
            window = self.batch_size * 50
            chunks = [order[i : i + window] for i in range(0, n, window)]
            order = torch.cat([c[torch.argsort(self.lengths[c], stable=True)] for c in chunks])
        batches = list(order.split(self.batch_size))
        if self.group_by_length and self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return batches

    def __iter__(self):
        batches = self._batches()[self.rank :: self.world_size]
        # Training ranks must take equal numbers of steps (gradients are all-reduced
        # every step); validation keeps every batch, its metric is synced once.
        if self.shuffle:
            batches = batches[: len(self)]
        for batch in batches:
            yield batch.tolist()

    def __len__(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        if self.shuffle:
            return n_batches // self.world_size if self.world_size > 1 else n_batches
        return len(range(self.rank, n_batches, self.world_size))
