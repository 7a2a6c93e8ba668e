"""One training run: config + data -> Lightning Trainer -> best.ckpt, last.ckpt, metrics.csv, a W&B run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from namegen.callbacks import RunClock
from namegen.config import SIZES, load_config
from namegen.data import DEFAULT_DATA, NamesDataModule
from namegen.errors import UserError
from namegen.module import NameGenModule
from namegen.monitoring import SampleTable, build_loggers, find_wandb_logger


@rank_zero_only
def say(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


def _display(path) -> str:
    """A path as short as it can be said from the current directory."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--accelerator {accelerator}: no CUDA GPU is available on this machine; "
            "use --accelerator cpu (or auto)"
        )


def train(args: argparse.Namespace) -> float | None:
    """Run training as the flags say; returns the best val/loss (None when nothing was validated)."""
    check_accelerator(args.accelerator)
    config = load_config(args.model).replace(
        max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    run_name = args.model if args.model in SIZES else Path(args.model).stem
    out_dir = Path(args.out) if args.out else Path("checkpoints") / run_name
    data_path = Path(args.data) if args.data else DEFAULT_DATA

    existing = [p for p in (out_dir / "best.ckpt", out_dir / "last.ckpt") if p.exists()]
    if existing and not args.overwrite:
        raise UserError(
            f"--out: {existing[0]} exists from an earlier run; pass --overwrite to replace it "
            f"or --out DIR to keep both"
        )

    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = NamesDataModule(
        data_path,
        batch_size=config.batch_size,
        seed=config.seed,
        block_size=config.block_size,
        group_by_length=args.group_by_length,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    vocab = datamodule.vocab
    meta = {
        "size": run_name,
        "data": {"path": str(data_path.resolve()), "sha256": datamodule.sha256, "n_names": len(datamodule.names)},
    }
    module = NameGenModule(config, vocab.chars, meta=meta)
    if getattr(args, "compile", False):
        from namegen.model import compile_model

        on_gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
        compile_model(module.model, "cuda" if on_gpu else "cpu")
    n_params = module.model.num_parameters()

    say(f"namegen: training {run_name} on {data_path} ({len(datamodule.train_names):,} train / "
        f"{len(datamodule.val_names):,} validation names, vocabulary of {len(vocab)} tokens)")
    say("config: " + json.dumps(config.to_dict()))
    say(f"trainable parameters: {n_params:,}")

    out_dir.mkdir(parents=True, exist_ok=True)
    loggers = build_loggers(args.logger, out_dir, run_name, {**config.to_dict(), "num_parameters": n_params},
                            mode=args.wandb_mode, group=args.wandb_group)
    checkpoint = ModelCheckpoint(
        dirpath=out_dir,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[pl.Callback] = [checkpoint, SampleTable(), RunClock()]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=config.early_stopping_patience))

    trainer_kwargs = dict(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        max_epochs=config.max_epochs,
        gradient_clip_val=config.grad_clip or None,
        logger=loggers or False,
        callbacks=callbacks,
        use_distributed_sampler=False,  # NamesDataModule shards batches across ranks itself
        log_every_n_steps=10,
        enable_model_summary=False,
    )
    for key in ("precision", "limit_train_batches", "limit_val_batches"):
        if getattr(args, key) is not None:
            trainer_kwargs[key] = getattr(args, key)
    trainer = pl.Trainer(**trainer_kwargs)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    wandb_logger = find_wandb_logger(trainer)
    if not trainer.is_global_zero:
        return checkpoint.best_model_score.item() if checkpoint.best_model_score is not None else None
    best = checkpoint.best_model_score
    say(f"finished in {elapsed:.1f}s after {trainer.current_epoch} epoch(s)")
    if best is None:
        say("no validation ran, so no best.ckpt was written", file=sys.stderr)
    else:
        best_path = _display(checkpoint.best_model_path)
        say(f"best val/loss {best.item():.4f} (perplexity {best.exp().item():.3f}): {best_path}")
        say(f"sample from it: python sample.py --ckpt {best_path}")
    if wandb_logger is not None:
        import wandb

        run_dir = Path(wandb_logger.experiment.dir).parent
        offline = wandb_logger.experiment.settings.mode in ("offline", "dryrun")
        if offline:
            say(f"W&B run saved offline; upload it with: wandb sync {_display(run_dir)}")
        wandb.finish()
    return best.item() if best is not None else None
