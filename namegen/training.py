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
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only

from namegen.callbacks import RunClock
from namegen.checkpoint import read_checkpoint
from namegen.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from namegen.cli import INTERRUPTED, quote_command
from namegen.config import SIZES, Config, load_config
from namegen.data import DEFAULT_DATA, NamesDataModule, Vocab
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


def _training_checkpoint(path: Path) -> dict:
    """A namegen checkpoint that training can continue from, read with weights_only=True."""
    ckpt = read_checkpoint(path, flag="--resume")
    meta = ckpt.get("namegen")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "vocab" not in meta:
        raise UserError(
            f"--resume: {path} is not a namegen checkpoint (no 'namegen' entry with config and vocabulary); "
            "resume from the last.ckpt that train.py wrote"
        )
    if not {"loops", "optimizer_states", "epoch"} <= set(ckpt):
        raise UserError(
            f"--resume: {path} holds weights only, no training state (epoch, optimizer); "
            "resume from the last.ckpt that train.py wrote"
        )
    try:
        Vocab(meta["vocab"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"--resume: {path} has an inconsistent vocabulary ({exc})") from None
    return ckpt


def _resume_plan(args: argparse.Namespace) -> tuple[Path | None, dict | None, Path | None]:
    """(checkpoint path, its contents, the --out it implies) for --resume; Nones without it."""
    if args.resume is None:
        return None, None, None
    if args.resume == "last":
        out_dir = Path(args.out) if args.out else Path("checkpoints") / (args.model or "small")
        if args.model and args.model not in SIZES and not args.out:
            out_dir = Path("checkpoints") / Path(args.model).stem
        path = out_dir / "last.ckpt"
        if not path.exists():
            raise UserError(
                f"--resume: {path} not found, so there is nothing to resume; pass --resume PATH/last.ckpt "
                f"(or --out DIR) for a run elsewhere, or train without --resume"
            )
        return path, _training_checkpoint(path), out_dir
    path = Path(args.resume)
    if not path.exists():
        raise UserError(f"--resume: {path} not found; give the last.ckpt of the run to continue")
    return path, _training_checkpoint(path), (Path(args.out) if args.out else path.parent)


def _check_unchanged(flag: str, given, saved) -> None:
    if given is not None and given != saved:
        raise UserError(
            f"{flag} {given}: the run being resumed used {saved}, and it cannot change mid-run; "
            f"drop {flag}, or start a new run with --out DIR"
        )


def resume_command(args: argparse.Namespace, out_dir: Path) -> str:
    """The command line that continues this run from ``<out>/last.ckpt``."""
    argv, skip = [], False
    for i, a in enumerate(getattr(args, "argv", [])):
        if skip:
            skip = False
            continue
        if a == "--overwrite" or a.startswith("--resume="):
            continue
        if a == "--resume":
            following = args.argv[i + 1] if i + 1 < len(args.argv) else None
            skip = following is not None and following == args.resume and args.resume != "last"
            continue
        argv.append(a)
    if args.out is None and args.resume not in (None, "last"):
        argv += ["--resume", _display(out_dir / "last.ckpt")]
    else:
        argv.append("--resume")
    script = sys.argv[0] if Path(sys.argv[0]).name == "train.py" else "train.py"
    return f"python {quote_command([script, *argv])}"


def train(args: argparse.Namespace) -> float | None:
    """Run training as the flags say; returns the best val/loss (None when nothing was validated)."""
    check_accelerator(args.accelerator)
    resume_path, resume_ckpt, resume_out = _resume_plan(args)
    resume_epoch = None
    if resume_ckpt is not None:
        saved = resume_ckpt["namegen"]
        saved_config = Config.from_dict(saved["config"], source=f"--resume: {resume_path}: config")
        _check_unchanged("--batch-size", args.batch_size, saved_config.batch_size)
        _check_unchanged("--lr", args.lr, saved_config.lr)
        _check_unchanged("--seed", args.seed, saved_config.seed)
        run_name = str(saved.get("size") or "resumed")
        if args.model is not None and (args.model if args.model in SIZES else Path(args.model).stem) != run_name:
            raise UserError(
                f"--model {args.model}: {resume_path} was trained as {run_name}; drop --model when resuming"
            )
        config = saved_config.replace(max_epochs=args.max_epochs)
        resume_epoch = int(resume_ckpt["epoch"])  # the last epoch the checkpoint finished (0-based)
        if resume_epoch + 1 >= config.max_epochs:
            raise UserError(
                f"--resume: {resume_path} already finished {resume_epoch + 1} of {config.max_epochs} epochs; "
                f"pass --max-epochs N (more than {resume_epoch + 1}) to train longer"
            )
        out_dir = resume_out
        saved_data = saved.get("data") or {}
        data_path = Path(args.data) if args.data else Path(saved_data.get("path") or DEFAULT_DATA)
        vocab = Vocab(saved["vocab"])
    else:
        model = args.model or "small"
        config = load_config(model).replace(
            max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
        )
        run_name = model if model in SIZES else Path(model).stem
        out_dir = Path(args.out) if args.out else Path("checkpoints") / run_name
        data_path = Path(args.data) if args.data else DEFAULT_DATA
        vocab = None

    existing = [p for p in (out_dir / "best.ckpt", out_dir / "last.ckpt") if p.exists()]
    resuming_in_place = resume_path is not None and out_dir.resolve() == resume_path.parent.resolve()
    if existing and not args.overwrite and not resuming_in_place:
        raise UserError(
            f"--out: {existing[0]} exists from an earlier run; pass --resume to continue it, --overwrite to "
            f"replace it, or --out DIR to keep both"
        )

    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = NamesDataModule(
        data_path,
        batch_size=config.batch_size,
        seed=config.seed,
        block_size=config.block_size,
        group_by_length=args.group_by_length,
        vocab=vocab,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    vocab = datamodule.vocab
    if resume_ckpt is not None:
        saved_sha = (resume_ckpt["namegen"].get("data") or {}).get("sha256")
        if saved_sha and saved_sha != datamodule.sha256:
            raise UserError(
                f"--data: {data_path} is not the file the run being resumed was trained on (its sha256 "
                f"differs); pass that file with --data, or start a new run with --out DIR"
            )
        meta = {k: v for k, v in resume_ckpt["namegen"].items()
                if k not in ("format", "config", "vocab", "num_parameters", "wandb_run_id")}
        wandb_run_id = resume_ckpt["namegen"].get("wandb_run_id")
    else:
        meta = {
            "size": run_name,
            "data": {"path": str(data_path.resolve()), "sha256": datamodule.sha256, "n_names": len(datamodule.names)},
        }
        wandb_run_id = None
    module = NameGenModule(config, vocab.chars, meta=meta)
    if getattr(args, "compile", False):
        from namegen.model import compile_model

        on_gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
        compile_model(module.model, "cuda" if on_gpu else "cpu")
    n_params = module.model.num_parameters()

    loggers = build_loggers(args.logger, out_dir, run_name, {**config.to_dict(), "num_parameters": n_params},
                            mode=args.wandb_mode, group=args.wandb_group, run_id=wandb_run_id,
                            resume_at=None if resume_ckpt is None else (resume_epoch, int(resume_ckpt["global_step"])))
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
        plugins=[AtomicCheckpointIO()],  # a kill mid-save never leaves a partial best/last.ckpt
        use_distributed_sampler=False,  # NamesDataModule shards batches across ranks itself
        log_every_n_steps=10,
        enable_model_summary=False,
    )
    for key in ("precision", "limit_train_batches", "limit_val_batches"):
        if getattr(args, key) is not None:
            trainer_kwargs[key] = getattr(args, key)
    try:
        trainer = pl.Trainer(**trainer_kwargs)
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as exc:
        flags = (f"--accelerator {args.accelerator} --devices {args.devices} --strategy {args.strategy} "
                 f"--num-nodes {args.num_nodes}" + (f" --precision {args.precision}" if args.precision else ""))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{flags}: the Lightning Trainer refused this combination ({first[:300]})") from None

    if rank_zero_only.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(out_dir):
            say(f"removed {_display(stale)}, left by a save that was killed", file=sys.stderr)
    if resume_path is not None:
        say(f"namegen: resuming {run_name} from {_display(resume_path)} after epoch {resume_epoch + 1} of "
            f"{config.max_epochs}" + (f" (W&B run {wandb_run_id})" if wandb_run_id and loggers else ""))
    say(f"namegen: training {run_name} on {data_path} ({len(datamodule.train_names):,} train / "
        f"{len(datamodule.val_names):,} validation names, vocabulary of {len(vocab)} tokens)")
    say("config: " + json.dumps(config.to_dict()))
    say(f"trainable parameters: {n_params:,}")

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=str(resume_path) if resume_path is not None else None, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Ctrl-C: Lightning shut down gracefully and is exiting
            _report_interrupt(args, out_dir, trainer)
            raise SystemExit(INTERRUPTED) from None
        raise
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
            run_id = wandb_logger.experiment.id
            parts = sorted(run_dir.parent.glob(f"offline-run-*-{run_id}"))
            if len(parts) > 1:  # a resumed run: one directory per process, synced in order into one run
                say(f"W&B run {run_id} saved offline in {len(parts)} parts; upload it with: "
                    f"wandb sync {_display(run_dir.parent)}/offline-run-*-{run_id}")
            else:
                say(f"W&B run saved offline; upload it with: wandb sync {_display(run_dir)}")
        wandb.finish()
    return best.item() if best is not None else None


def _report_interrupt(args: argparse.Namespace, out_dir: Path, trainer: pl.Trainer) -> None:
    """After Ctrl-C: say what was kept and how to continue; close the W&B run."""
    if not trainer.is_global_zero:
        return
    last = out_dir / "last.ckpt"
    if last.exists():
        try:
            epoch = int(read_checkpoint(last, flag="--resume")["epoch"]) + 1
            kept = f"{_display(last)} (after epoch {epoch})"
        except UserError:
            kept = _display(last)
        say(f"interrupted: {kept} is kept; resume with: {resume_command(args, out_dir)}", file=sys.stderr)
    else:
        say("interrupted before the first epoch finished, so there is no checkpoint to resume from; "
            "run the same command again to start over", file=sys.stderr)
    if find_wandb_logger(trainer) is not None:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=INTERRUPTED)
