"""Training callbacks that record what the size comparison reports: wall time and throughput."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from namegen.data import IGNORE


class RunClock(pl.Callback):
    """Wall time and training throughput, logged once per epoch (so ``metrics.csv`` has them).

    Logged keys, all cumulative over the run (resumed runs continue the count,
    because the state is saved in the checkpoint):

    - ``time/wall_s``: seconds of training epochs, validation included (the
      sanity check before the first epoch is not counted);
    - ``time/train_s``: the same without the validation loops;
    - ``time/train_tokens``: predicted characters (padding excluded) trained on,
      summed over all processes;
    - ``train/tokens_per_s``: this epoch's ``train_tokens / train_s``.
    """

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.train_s = 0.0
        self.train_tokens = 0
        self._epoch_start: float | None = None
        self._val_start: float | None = None
        self._val_s = 0.0
        self._epoch_tokens = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._val_s = 0.0
        self._epoch_tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _, y = batch
        self._epoch_tokens += int((y != IGNORE).sum())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._val_start is not None and self._epoch_start is not None:
            self._val_s += time.perf_counter() - self._val_start
        self._val_start = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_start is None:
            return
        epoch_s = time.perf_counter() - self._epoch_start
        train_s = max(epoch_s - self._val_s, 1e-9)
        tokens = trainer.strategy.reduce(
            torch.tensor(float(self._epoch_tokens), device=pl_module.device), reduce_op="sum"
        )
        tokens = int(tokens.item())
        self.wall_s += epoch_s
        self.train_s += train_s
        self.train_tokens += tokens
        self._epoch_start = None
        pl_module.log_dict(
            {
                "time/wall_s": self.wall_s,
                "time/train_s": self.train_s,
                "time/train_tokens": float(self.train_tokens),
                "train/tokens_per_s": tokens / train_s,
            },
            on_step=False,
            on_epoch=True,
        )

    def state_dict(self) -> dict:
        return {"wall_s": self.wall_s, "train_s": self.train_s, "train_tokens": self.train_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.wall_s = float(state_dict.get("wall_s", 0.0))
        self.train_s = float(state_dict.get("train_s", 0.0))
        self.train_tokens = int(state_dict.get("train_tokens", 0))
