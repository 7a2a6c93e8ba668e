"""Names file -> vocabulary -> padded tensors -> batches, as a LightningDataModule.

Tokens: 0 is padding, 1 is ``.`` (which marks both the start and the end of a
name), the file's characters, sorted, take 2 and up. Every name is shown to the
model with ``.`` as its first input, so the model learns first letters::

    input   .  e  m  m  a          (padded with 0)
    target  e  m  m  a  .          (padded with -100, ignored by the loss)
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from sklearn.model_selection import train_test_split

from namegen.errors import UserError

PAD, END = 0, 1
IGNORE = -100
DEFAULT_DATA = Path("data/names.txt")
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


# ---------------------------------------------------------------------------- reading


def read_names(path: str | os.PathLike) -> list[str]:
    """Read one name per line; strip whitespace, ``\\r`` and BOMs; drop blank lines.

    Raises UserError, naming the file (and line), for anything that is not a
    usable UTF-8 names file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"--data: {path} does not exist; pass a text file with one name per line")
    if path.is_dir():
        raise UserError(f"--data: {path} is a directory; pass a text file with one name per line")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise UserError(f"--data: {path} looks binary (it contains NUL bytes); pass a UTF-8 text file")
    names = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"--data: {path} line {lineno} is not valid UTF-8 (byte {exc.start + 1}); "
                "re-save the file as UTF-8"
            ) from None
        name = text.replace("\ufeff", "").strip()
        if not name:
            continue
        if "." in name:
            raise UserError(
                f"--data: {path} line {lineno} contains '.', which namegen reserves for the "
                "start/end-of-name token; remove or replace it"
            )
        names.append(name)
    if not names:
        raise UserError(
            f"--data: {path} has no names (it is empty or only blank lines); pass a text file with one name per line"
        )
    return names


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_names(dest: Path, url: str = NAMES_URL, sha256: str = NAMES_SHA256) -> Path:
    """Fetch makemore's names.txt to ``dest``: checksum-verified, written atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"--data: {dest} is missing and could not be downloaded from {url} ({reason}); "
            f"copy names.txt there yourself or pass --data PATH"
        ) from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != sha256:
        raise UserError(
            f"--data: the file downloaded from {url} has sha256 {actual}, expected {sha256}; "
            f"nothing was written to {dest}"
        )
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# ---------------------------------------------------------------------------- vocabulary


class Vocab:
    """Characters <-> token ids. 0 = padding, 1 = ``.``, characters from 2."""

    def __init__(self, chars: list[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars) or "." in chars:
            raise ValueError("vocabulary must be distinct single characters, without '.'")
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
    """The 80/20 split of the notebook (scikit-learn), fixed by ``seed`` on every machine."""
    if len(names) < 2:
        raise UserError(
            f"--data: the file has {len(names)} name; at least 2 are needed for a train/validation split"
        )
    train, val = train_test_split(names, test_size=val_fraction, random_state=seed, shuffle=True)
    return list(train), list(val)


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


# ---------------------------------------------------------------------------- datamodule


class NamesDataModule(pl.LightningDataModule):
    """names.txt -> vocabulary, 80/20 split and batches.

    ``vocab`` can be given (a checkpoint's) to encode a file with a fixed
    vocabulary; otherwise it is built from the file.
    """

    def __init__(
        self,
        data: str | os.PathLike = DEFAULT_DATA,
        batch_size: int = 128,
        seed: int = 42,
        block_size: int | None = None,
        group_by_length: bool = False,
        url: str | None = None,
        vocab: Vocab | None = None,
    ):
        super().__init__()
        self.path = Path(data)
        self.batch_size = batch_size
        self.seed = seed
        self.block_size = block_size
        self.group_by_length = group_by_length
        self.url = url or os.environ.get("NAMEGEN_DATA_URL", NAMES_URL)
        self.vocab = vocab
        self.names: list[str] | None = None

    def prepare_data(self) -> None:
        if not self.path.exists() and self.path == DEFAULT_DATA:
            print(f"{self.path} not found; downloading makemore's names.txt from {self.url}")
            download_names(self.path, self.url)

    def setup(self, stage: str | None = None) -> None:
        if self.names is not None:
            return
        names = read_names(self.path)
        if self.vocab is None:
            self.vocab = Vocab.from_names(names)
        else:
            unknown = self.vocab.unknown_chars("".join(names))
            if unknown:
                raise UserError(
                    f"--data: {self.path} has characters the model's vocabulary lacks: {''.join(unknown)!r}"
                )
        if self.block_size is not None:
            too_long = [n for n in names if len(n) > self.block_size]
            if too_long:
                warnings.warn(
                    f"{len(too_long)} of {len(names)} names in {self.path} are longer than block_size "
                    f"{self.block_size} (longest: {max(map(len, too_long))}); they are trained on whole, "
                    "nothing is truncated. Sampling stops at --max-len, which defaults to block_size.",
                    stacklevel=2,
                )
        if len(names) < 2:
            raise UserError(
                f"--data: {self.path} has only {len(names)} name; at least 2 are needed (80% train, 20% "
                "validation), a few thousand for a useful model"
            )
        self.names = names
        self.train_names, self.val_names = split_names(names, self.seed)
        self.train_set = NameBatches(*encode_names(self.train_names, self.vocab))
        self.val_set = NameBatches(*encode_names(self.val_names, self.vocab))
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.strategy.root_device.type != "cpu":
            device = trainer.strategy.root_device
            self.train_set.to(device)
            self.val_set.to(device)

    def _loader(self, dataset: NameBatches, shuffle: bool) -> torch.utils.data.DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = IndexBatchSampler(
            dataset.lengths,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            group_by_length=self.group_by_length and shuffle,
            rank=rank,
            world_size=world,
        )
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    @property
    def sha256(self) -> str:
        return sha256_of(self.path)
