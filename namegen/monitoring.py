"""Loggers and callbacks: Weights & Biases (offline unless asked), the CSV history, sample tables."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from namegen.errors import UserError
from namegen.sampling import sample_ids

WANDB_PROJECT = "namegen"


def wandb_mode(flag: str | None) -> str:
    """``online`` only when asked (flag or WANDB_MODE=online); otherwise ``offline``.

    A missing W&B login must never block or crash training, so online is opt-in.
    """
    mode = flag or os.environ.get("WANDB_MODE", "offline")
    return "online" if mode == "online" else "offline"


def build_loggers(
    kind: str,
    out_dir: Path,
    run_name: str,
    config: dict,
    mode: str | None = None,
    group: str = "sizes",
    run_id: str | None = None,
) -> list[Logger]:
    """The CSV history (always, beside the checkpoints) plus W&B when ``kind == "wandb"``."""
    if kind == "none":
        return []
    loggers: list[Logger] = [CSVLogger(save_dir=out_dir, name="", version="")]
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--logger wandb: the wandb package is not installed; pip install wandb, or use --logger csv") from None
        mode = wandb_mode(mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=WANDB_PROJECT,
                name=run_name,
                group=group,
                job_type="train",
                save_dir=str(out_dir),
                offline=mode != "online",
                config=config,
                id=run_id,
                resume="allow" if run_id else None,
            )
        )
    return loggers


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class SampleTable(pl.Callback):
    """After each validation epoch, sample a few names and log them as a W&B table (rank 0)."""

    def __init__(self, n: int = 10, seed: int = 0):
        self.n, self.seed = n, seed
        self.rows: list[list] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        logger = find_wandb_logger(trainer)
        if trainer.sanity_checking or logger is None or not trainer.is_global_zero:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        ids, _ = sample_ids(
            pl_module.model,
            self.n,
            max_len=pl_module.config.block_size,
            generator=generator,
            device=pl_module.device,
        )
        chars = pl_module.vocab_chars
        names = ["".join(chars[i - 2] for i in row) for row in ids]
        self.rows.extend([trainer.current_epoch, name] for name in names)
        # W&B tables are immutable once logged: log the table so far, one row per name.
        logger.log_table(key="samples", columns=["epoch", "name"], data=list(self.rows))
