"""``NamesDataModule``: the names file as a LightningDataModule (vocabulary, 80/20 split, batches)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning.pytorch as pl
import torch

from namegen.data import (
    DEFAULT_DATA, TITLE, IndexBatchSampler, NameBatches, Vocab, case_of, encode_names, fold, read_names, sha256_of,
    split_names,
)
from namegen.errors import UserError


class NamesDataModule(pl.LightningDataModule):
    """names.txt -> vocabulary, 80/20 split and batches.

    ``vocab`` can be given (a checkpoint's) to encode a file with a fixed
    vocabulary; otherwise it is built from the file (also for a run that starts
    from a trained model: ``namegen.finetune`` carries its rows over by character).
    ``case`` (``namegen.data.case_of``) is how the names are learned: given when
    resuming, found from the file otherwise; under ``"title"`` they are learned in
    lower case.

    Validation runs batches of up to ``VAL_BATCH`` names (never fewer than ``batch_size``, and at least
    one batch for each process): it takes no gradient, so a larger batch only spreads each step's fixed
    cost over more names (a pass over names.txt's validation names: small 0.09 to 0.15 s against 0.16 s
    at 64 a batch). val/loss is the same mean over the same names, up to the order of its float sums.
    """

    VAL_BATCH = 512

    def __init__(
        self,
        data: str | os.PathLike = DEFAULT_DATA,
        batch_size: int = 128,
        seed: int = 42,
        block_size: int | None = None,
        group_by_length: bool = False,
        vocab: Vocab | None = None,
        split_seed: int | None = None,
        case: str | None = None,
    ):
        super().__init__()
        self.path = Path(data)
        self.batch_size = batch_size
        self.seed = seed  # shuffling
        self.split_seed = seed if split_seed is None else split_seed  # the 80/20 split
        self.block_size = block_size
        self.group_by_length = group_by_length
        self.vocab = vocab
        self.case = case
        self.names: list[str] | None = None
        self.long_names: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.names is not None:
            return
        names = read_names(self.path)
        self.case = self.case or case_of(names)
        names = fold(names, self.case)
        if self.vocab is None:
            self.vocab = Vocab.from_names(names)
        elif unknown := self.vocab.unknown_chars("".join(names)):
            raise UserError(f"{self.path} has characters the model's vocabulary lacks: {''.join(unknown)!r}",
                            about="data")
        self.long_names = [n for n in names if self.block_size is not None and len(n) > self.block_size]
        if len(names) < 2:
            raise UserError(
                f"{self.path} has only {len(names)} name, too few to split: at least 2 are needed (80% train, "
                "20% validation); a few dozen make a useful model when starting from a trained one (--init-from)",
                about="data",
            )
        self.names = names
        self.train_names, self.val_names = split_names(names, self.split_seed)
        self.train_set = NameBatches(*encode_names(self.train_names, self.vocab))
        self.val_set = NameBatches(*encode_names(self.val_names, self.vocab))
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.strategy.root_device.type != "cpu":
            device = trainer.strategy.root_device
            self.train_set.to(device)
            self.val_set.to(device)

    def case_note(self) -> str | None:
        """One line when the names are learned in lower case (every name is capitalised), or None."""
        if self.case != TITLE:
            return None
        first = self.names[0][0]
        return (f"note: every name in {self.path} is capitalised, so they are learned in lower case (one letter "
                f"for '{first.upper()}' and '{first}') and the names sampled from this run are capitalised again")

    def long_names_note(self) -> str | None:
        """One line about names longer than ``block_size`` (trained whole, never truncated), or None."""
        if not self.long_names:
            return None
        return (f"note: {len(self.long_names)} of {len(self.names)} names in {self.path} are longer than block_size "
                f"{self.block_size} (longest: {max(map(len, self.long_names))}); they are trained on whole, nothing "
                "is truncated. Sampling stops at --max-len, which defaults to block_size")

    def _loader(self, dataset: NameBatches, shuffle: bool) -> torch.utils.data.DataLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # validation: larger batches, but never fewer than one per process (each syncs its metric)
        val_batch = max(self.batch_size, min(self.VAL_BATCH, math.ceil(len(dataset) / world)))
        sampler = IndexBatchSampler(
            dataset.lengths,
            self.batch_size if shuffle else val_batch,
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
