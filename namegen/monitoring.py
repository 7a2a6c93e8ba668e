"""Loggers and callbacks: Weights & Biases (offline unless asked), the CSV history, sample tables."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment

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
    resume_at: tuple[int, int] | None = None,
) -> list[Logger]:
    """The CSV history (always, beside the checkpoints) plus W&B when ``kind == "wandb"``.

    ``run_id`` resumes that W&B run; ``resume_at`` (the checkpoint's epoch and
    global step) continues ``metrics.csv`` instead of starting it afresh.
    """
    if kind == "none":
        return []
    loggers: list[Logger] = [HistoryCSVLogger(out_dir, resume_at=resume_at)]
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


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run continues ``metrics.csv`` rather than deleting it.

    Rows the interrupted run logged after its checkpoint (epochs after
    ``resume_at[0]``; rows without an epoch, such as learning rates, at steps
    from ``resume_at[1]`` on) are dropped: that work is about to be redone.
    """

    def __init__(self, log_dir: str, resume_at: tuple[int, int] | None):
        self._resume_at = resume_at
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._resume_at is None or not path.is_file():
            return super()._check_log_dir_exists()
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if self._keep(r)]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = sorted(header)

    def _keep(self, row: dict) -> bool:
        epoch, step = _number(row.get("epoch")), _number(row.get("step"))
        if epoch is not None:
            return epoch <= self._resume_at[0]
        return step is not None and step < self._resume_at[1]


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class HistoryCSVLogger(CSVLogger):
    """``<out>/metrics.csv``: every row written as it is logged (a kill loses nothing already
    logged), and continued, not restarted, when training resumes."""

    def __init__(self, out_dir: Path, resume_at: tuple[int, int] | None = None):
        super().__init__(save_dir=out_dir, name="", version="", flush_logs_every_n_steps=1)
        self._resume_at = resume_at

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._resume_at)
        return self._experiment


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
