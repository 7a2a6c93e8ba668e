"""One training run, as typed steps: plan the run, build the Trainer, fit, report.

    result = train(TrainOptions(model="small"))

``train.py`` (``namegen train``) turns flags into ``TrainOptions``; ``compare``
builds them directly. Outputs, in ``<out>`` (default ``checkpoints/<size>``):
``best.ckpt``, ``last.ckpt``, ``metrics.csv`` and the W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from namegen.api import check_device
from namegen import recurrence, runlock
from namegen.callbacks import (
    AtomicCheckpointIO, EpochLine, ModelArtifact, PauseForTests, RunClock, RunLengthEMA, SampleTable,
)
from namegen.checkpoint import read_training_checkpoint, remove_stale_temporaries
from namegen.config import FINETUNE, Config, config_path, load_config, run_name_of
from namegen.data import AS_IS, DEFAULT_DATA, Vocab
from namegen.datamodule import NamesDataModule
from namegen.errors import Interrupted, PeerStopped, TrainingDiverged, UserError
from namegen.finetune import Base, Carried, load_base, transplant
from namegen.loggers import (
    build_loggers, check_wandb_online, find_wandb_logger, finish_wandb, start_wandb, use_base_artifact, wandb_mode,
)
from namegen.model import compile_model
from namegen.module import NameGenModule


@dataclass
class TrainOptions:
    """What a user asks of a run. ``None`` means: the config's value (or the default)."""

    model: str | None = None  # a size (small, medium, large) or a config .yaml; default small (finetune with init_from)
    init_from: str | None = None  # start from this model's weights and architecture (a .ckpt or notebook .pth)
    data: Path | None = None  # names file; default: the packaged names.txt
    out: Path | None = None  # run directory; default checkpoints/<size>
    max_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    overwrite: bool = False  # replace an earlier run's checkpoints in out
    resume: str | None = None  # "last" (out/last.ckpt) or a checkpoint path
    group_by_length: bool = False
    compile: bool = False
    # passed to the Lightning Trainer
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    profiler: object = None  # a Lightning profiler ("simple", "advanced" or an instance): bench/profile_step.py
    # monitoring
    logger: str = "wandb"  # wandb (+ metrics.csv), csv or none
    wandb_mode: str | None = None
    wandb_group: str = "sizes"
    sample_command: str = "namegen sample"  # how the user samples, for the last line of the run
    callbacks: list = field(default_factory=list)  # more Lightning callbacks (namegen tune's pruning)


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written."""

    config: Config
    run_name: str
    out_dir: Path
    data_path: Path
    vocab: Vocab | None = None  # fixed by the checkpoint when resuming
    resume_path: Path | None = None
    resume_ckpt: dict | None = field(default=None, repr=False)
    precision: str = "32-true"
    precision_why: str = "asked for with --precision"
    wandb_mode: str | None = None  # online or offline; None without W&B
    wandb_auto_offline: bool = False  # offline because no login was found (not because it was asked)
    config_source: str = ""  # where the config came from, as start-up says it
    base: Base | None = None  # the model the run starts from (--init-from)
    case: str | None = None  # how names are learned (namegen.data.case_of); None: found from the file
    carried: Carried | None = None  # what the base's rows became (set when the module is built)
    steps_per_epoch: int = 1

    @property
    def resume_epoch(self) -> int | None:
        """The last epoch the resumed checkpoint finished (0-based)."""
        return None if self.resume_ckpt is None else int(self.resume_ckpt["epoch"])


@dataclass
class TrainResult:
    best_score: float | None  # best val/loss; None when nothing was validated
    best_path: Path | None
    out_dir: Path
    epochs: int
    elapsed_s: float
    wandb_sync: str | None = None  # how to upload an offline W&B run
    sample_command: str = "namegen sample"


# Lightning's start-up chatter (accelerator lines, tips, "fit stopped") says nothing a namegen user needs,
# and two of its warnings mislead here: run directories always hold metrics.csv and the W&B run beside
# the checkpoints, and the LeafSpec deprecation is Lightning's own (with torch >= 2.9), not the user's.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r".*does not have many workers")


#: below this hidden width a CPU's bf16 mixed precision does not pay off: each bf16 matmul costs a fixed
#: ~13 us whatever its size, plus a cast of its input. Measured on AVX512-BF16 (2026-12-07, whole training
#: steps): medium (256) 34-40 ms a step in float32 against 43-57 in bf16-mixed; large (512) 111-115 in
#: bf16-mixed against 120-127 in float32
CPU_BF16_MIN_HIDDEN = 512


def default_precision(accelerator: str, config: Config) -> tuple[str, str]:
    """The precision a run takes when --precision is not given, and why: bf16 mixed precision where
    the hardware computes bf16 natively and the model is wide enough to gain from it, else 32-bit."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", "this GPU computes bf16 natively"
        return "32-true", "this GPU has no native bf16"
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return "32-true", "this CPU has no native bf16"
    if config.n_hidden < CPU_BF16_MIN_HIDDEN:
        return "32-true", f"at hidden width {config.n_hidden} this CPU's bf16 matmuls are no faster"
    return "bf16-mixed", "this CPU computes bf16 natively: AVX512-BF16 or AMX"


def check_precision(precision: str, accelerator: str) -> str:
    """A precision this hardware can run, or one line saying what to use instead."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision.startswith("16") and not on_cuda:
        raise UserError(f"{precision} (float16) needs a CUDA GPU and none is in use here; use bf16-mixed or 32-true",
                        about="precision")
    if precision.startswith("bf16") and on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"{precision}: this GPU has no native bf16; use 16-mixed or 32-true", about="precision")
    return precision


@rank_zero_only
def say(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


def display(path) -> str:
    """A path as short as it can be said from the current directory."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- plan


def plan_run(opts: TrainOptions) -> RunPlan:
    """Config, run directory and data file; the checkpoint to resume from; refuses to overwrite."""
    if opts.accelerator in ("gpu", "cuda"):
        check_device("cuda", about="accelerator")
    if opts.init_from is not None and opts.resume is not None:
        raise UserError("starts a new run from a trained model, and --resume continues a run; to continue a "
                        "fine-tuning run, drop --init-from and pass --resume PATH/last.ckpt", about="init_from")
    plan = (_plan_resume(opts) if opts.resume is not None else _plan_init(opts) if opts.init_from is not None
            else _plan_fresh(opts))
    if rank_zero_only.rank == 0:  # DDP's other processes start while rank 0 holds the directory
        runlock.check_free(plan.out_dir)  # before the next check, so the message names the live run
    existing = [p for p in (plan.out_dir / "best.ckpt", plan.out_dir / "last.ckpt") if p.exists()]
    in_place = plan.resume_path is not None and plan.out_dir.resolve() == plan.resume_path.parent.resolve()
    if existing and not opts.overwrite and not in_place:
        raise UserError(
            f"{existing[0]} exists from an earlier run; pass --resume to continue it, --overwrite to "
            f"replace it, or --out DIR to keep both",
            about="out",
        )
    if opts.precision is None:
        plan.precision, plan.precision_why = default_precision(opts.accelerator, plan.config)
    else:
        plan.precision = check_precision(opts.precision, opts.accelerator)
    if opts.logger == "wandb":
        plan.wandb_mode = wandb_mode(opts.wandb_mode)
        plan.wandb_auto_offline = plan.wandb_mode == "offline" and not (opts.wandb_mode or os.environ.get("WANDB_MODE"))
        os.environ["WANDB_MODE"] = plan.wandb_mode  # W&B reads its mode from here, once per process
        if plan.wandb_mode == "online":
            check_wandb_online()
    return plan


def _plan_fresh(opts: TrainOptions) -> RunPlan:
    model = opts.model or "small"
    config = load_config(model).replace(
        max_epochs=opts.max_epochs, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed
    )
    name = run_name_of(model)
    out_dir = Path(opts.out) if opts.out else Path("checkpoints") / name
    return RunPlan(config, name, out_dir, Path(opts.data) if opts.data else DEFAULT_DATA,
                   config_source=display(config_path(model)))


def _plan_init(opts: TrainOptions) -> RunPlan:
    """A new run from a trained model: its architecture, the recipe ``--model`` names (default
    configs/finetune.yaml), run name ``<base size>-<data file's stem>``."""
    base = load_base(opts.init_from)
    recipe = opts.model or FINETUNE
    config = load_config(recipe, base=base.loaded.config).replace(
        max_epochs=opts.max_epochs, batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed
    )
    data_path = Path(opts.data) if opts.data else DEFAULT_DATA
    name = f"{run_name_of(base.loaded.size)}-{data_path.stem}"
    out_dir = Path(opts.out) if opts.out else Path("checkpoints") / name
    source = f"{display(config_path(recipe))}, with the architecture of {display(base.path)}"
    return RunPlan(config, name, out_dir, data_path, config_source=source, base=base)


def _plan_resume(opts: TrainOptions) -> RunPlan:
    path, out_dir = _resume_source(opts)
    ckpt = read_training_checkpoint(path)
    saved = ckpt["namegen"]
    saved_config = Config.from_dict(saved["config"], source=f"{path}: config")
    _check_unchanged("--batch-size", opts.batch_size, saved_config.batch_size)
    _check_unchanged("--lr", opts.lr, saved_config.lr)
    _check_unchanged("--seed", opts.seed, saved_config.seed)
    name = str(saved.get("size") or "resumed")
    if opts.model is not None and run_name_of(opts.model) != name:
        raise UserError(f"--model {opts.model}: {path} was trained as {name}; drop --model when resuming")
    config = saved_config.replace(max_epochs=opts.max_epochs)
    finished = int(ckpt["epoch"]) + 1
    if finished >= config.max_epochs:
        raise UserError(
            f"{path} already finished {finished} of {config.max_epochs} epochs; "
            f"pass --max-epochs N (more than {finished}) to train longer",
            about="resume",
        )
    data_path = Path(opts.data) if opts.data else Path((saved.get("data") or {}).get("path") or DEFAULT_DATA)
    return RunPlan(config, name, out_dir, data_path, Vocab(saved["vocab"]), path, ckpt,
                   config_source=f"from {display(path)}", case=str(saved.get("case") or AS_IS))


def _resume_source(opts: TrainOptions) -> tuple[Path, Path]:
    """(checkpoint to resume, the run directory it implies)."""
    if opts.resume != "last":
        path = Path(opts.resume)
        if not path.exists():
            raise UserError(f"{path} not found; give the last.ckpt of the run to continue", about="resume")
        return path, (Path(opts.out) if opts.out else path.parent)
    out_dir = Path(opts.out) if opts.out else Path("checkpoints") / run_name_of(opts.model or "small")
    path = out_dir / "last.ckpt"
    if not path.exists():
        raise UserError(
            f"{path} not found, so there is nothing to resume; pass --resume PATH/last.ckpt "
            f"(or --out DIR) for a run elsewhere, or train without --resume",
            about="resume",
        )
    return path, out_dir


def _check_unchanged(flag: str, given, saved) -> None:
    if given is not None and given != saved:
        raise UserError(
            f"{flag} {given}: the run being resumed used {saved}, and it cannot change mid-run; "
            f"drop {flag}, or start a new run with --out DIR"
        )


# ----------------------------------------------------------------------------- build


def build_data(plan: RunPlan, opts: TrainOptions) -> NamesDataModule:
    """The data module, set up (so a bad file fails before the Trainer starts)."""
    datamodule = NamesDataModule(plan.data_path, batch_size=plan.config.batch_size, seed=plan.config.seed,
                                 block_size=plan.config.block_size, group_by_length=opts.group_by_length,
                                 vocab=plan.vocab, split_seed=plan.config.data_seed, case=plan.case)
    datamodule.setup("fit")
    plan.steps_per_epoch = len(datamodule.train_dataloader())
    saved_sha = ((plan.resume_ckpt or {}).get("namegen", {}).get("data") or {}).get("sha256")
    if saved_sha and saved_sha != datamodule.sha256:
        raise UserError(
            f"{plan.data_path} is not the file the run being resumed was trained on (its sha256 "
            f"differs); pass that file with --data, or start a new run with --out DIR",
            about="data",
        )
    return datamodule


def build_module(plan: RunPlan, datamodule: NamesDataModule, opts: TrainOptions) -> NameGenModule:
    if plan.resume_ckpt is not None:
        kept = ("format", "config", "vocab", "num_parameters", "wandb_run_id")
        meta = {k: v for k, v in plan.resume_ckpt["namegen"].items() if k not in kept}
    else:
        path = datamodule.path.resolve()
        meta = {"size": plan.run_name, "case": datamodule.case,
                "data": {"path": str(path), "sha256": datamodule.sha256, "n_names": len(datamodule.names)}}
        if plan.base is not None:
            meta["base"] = plan.base.record()
    module = NameGenModule(plan.config, datamodule.vocab.chars, meta=meta)
    if plan.base is not None and plan.resume_ckpt is None:
        plan.carried = transplant(plan.base, module.model, datamodule.vocab, datamodule.names)
    if opts.compile:
        on_gpu = opts.accelerator in ("gpu", "cuda") or (opts.accelerator == "auto" and torch.cuda.is_available())
        compile_model(module.model, "cuda" if on_gpu else "cpu")
    return module


def build_trainer(plan: RunPlan, opts: TrainOptions, n_params: int) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Lightning Trainer with namegen's loggers, callbacks and atomic checkpoint writes."""
    saved = (plan.resume_ckpt or {}).get("namegen", {})
    resume_at = None if plan.resume_ckpt is None else (plan.resume_epoch, int(plan.resume_ckpt["global_step"]))
    run_config = {**plan.config.to_dict(), "num_parameters": n_params}
    if plan.base is not None:
        run_config["base"] = {k: v for k, v in plan.base.record().items() if k != "vocab"}
    loggers = build_loggers(opts.logger, plan.out_dir, plan.run_name, run_config,
                            mode=plan.wandb_mode or "offline", group=opts.wandb_group,
                            run_id=saved.get("wandb_run_id"), resume_at=resume_at)
    checkpoint = ModelCheckpoint(dirpath=plan.out_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    # last.ckpt every epoch, improving or not: what --resume continues from. (ModelCheckpoint's own
    # save_last writes it, since Lightning 2.6, only in epochs that also wrote best.ckpt.)
    last = ModelCheckpoint(dirpath=plan.out_dir, filename="last", monitor=None, save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list[pl.Callback] = [checkpoint, last, SampleTable(), RunClock(), ModelArtifact(checkpoint)]
    progress_bar = sys.stdout.isatty()  # a log file (CI, > file) gets one line per epoch, not bar redraws
    if not progress_bar:
        callbacks.append(EpochLine())
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if plan.config.ema_decay:  # after SampleTable: its samples come from the average that validation measures
        callbacks.append(RunLengthEMA(decay=plan.config.ema_decay, steps=run_steps(plan, opts)))
    callbacks += opts.callbacks
    if (pause := PauseForTests.from_env()) is not None:  # tests only: see PauseForTests
        callbacks.append(pause)
    if plan.config.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=plan.config.early_stopping_patience))
    kwargs = dict(
        accelerator=opts.accelerator, devices=opts.devices, strategy=opts.strategy, num_nodes=opts.num_nodes,
        max_epochs=plan.config.max_epochs, gradient_clip_val=plan.config.grad_clip or None,
        logger=loggers or False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # a kill mid-save never leaves a partial best/last.ckpt
        use_distributed_sampler=False,  # the data module shards batches across ranks itself
        log_every_n_steps=min(10, plan.steps_per_epoch),  # a short list's epoch may have fewer steps than 10
        enable_model_summary=False, enable_progress_bar=progress_bar, precision=plan.precision,
        profiler=opts.profiler,
    )
    for key in ("limit_train_batches", "limit_val_batches"):
        if getattr(opts, key) is not None:
            kwargs[key] = getattr(opts, key)
    try:
        return pl.Trainer(**kwargs), checkpoint
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as exc:
        flags = (f"--accelerator {opts.accelerator} --devices {opts.devices} --strategy {opts.strategy} "
                 f"--num-nodes {opts.num_nodes} --precision {plan.precision}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{flags}: the Lightning Trainer refused this combination ({first[:300]})") from None


def run_steps(plan: RunPlan, opts: TrainOptions) -> int:
    """The optimizer steps the run will take on one process (``--limit-train-batches`` counted)."""
    per_epoch, limit = plan.steps_per_epoch, opts.limit_train_batches
    if isinstance(limit, int):
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float):
        per_epoch = int(per_epoch * limit)
    return max(per_epoch, 1) * plan.config.max_epochs


# ----------------------------------------------------------------------------- fit and report


def train(opts: TrainOptions) -> TrainResult:
    """Plan, build, fit, report. Raises UserError for bad input (before anything is written)
    and Interrupted after a Ctrl-C (the last checkpoint is kept)."""
    plan = plan_run(opts)
    pl.seed_everything(plan.config.seed, workers=True, verbose=False)
    datamodule = build_data(plan, opts)
    module = build_module(plan, datamodule, opts)
    if not rank_zero_only.rank == 0:  # DDP's other processes: rank 0 holds the run directory
        return _fit(plan, opts, datamodule, module)
    created = not plan.out_dir.exists()
    lock = runlock.acquire(plan.out_dir)
    try:
        return _fit(plan, opts, datamodule, module, undo=(plan.out_dir if created else None))
    finally:
        lock.release()


def _fit(plan: RunPlan, opts: TrainOptions, datamodule: NamesDataModule, module: NameGenModule,
         undo: Path | None = None) -> TrainResult:
    n_params = module.model.num_parameters()
    trainer, checkpoint = build_trainer(plan, opts, n_params)
    try:
        start_wandb(trainer.loggers)
    except UserError:
        if undo is not None:  # the run directory was made for this run: leave nothing behind
            shutil.rmtree(undo, ignore_errors=True)
        raise
    announce(plan, datamodule, trainer, n_params)
    announce_recurrence(trainer, opts.compile)
    if plan.base is not None and plan.resume_ckpt is None and (line := use_base_artifact(trainer.loggers,
                                                                                          plan.base.record())):
        say(line)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, weights_only=True,
                    ckpt_path=str(plan.resume_path) if plan.resume_path is not None else None)
    except SystemExit:
        if trainer.interrupted:  # Ctrl-C: Lightning shut down gracefully and is exiting
            raise _interrupted(plan, trainer) from None
        raise
    except UserError as exc:  # a refused write, a divergence: Lightning has torn down; close the W&B run too
        if trainer.is_global_zero:
            finish_wandb(find_wandb_logger(trainer), exit_code=1)
        elif isinstance(exc, TrainingDiverged):  # every process diverges at the same step; rank 0 says so
            raise PeerStopped() from None
        raise
    except RuntimeError as exc:
        if not trainer.is_global_zero and peer_gone(exc):  # rank 0 stopped and prints why: one line, not two
            raise PeerStopped() from None
        raise
    best = checkpoint.best_model_score
    result = TrainResult(
        best_score=None if best is None else best.item(),
        best_path=Path(checkpoint.best_model_path) if best is not None else None,
        out_dir=plan.out_dir, epochs=trainer.current_epoch, elapsed_s=time.perf_counter() - start,
        sample_command=opts.sample_command,
    )
    if trainer.is_global_zero:
        result.wandb_sync = sync_hint(finish_wandb(find_wandb_logger(trainer)))
        report(result)
    return result


def peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective (a barrier, an all-reduce) failing because another process of
    the run has exited: gloo and NCCL say so in their messages."""
    gone = r"closed by peer|reset by peer|Broken pipe|remote worker|has exited|NCCL communicator was aborted"
    return bool(re.search(gone, str(exc)))


def sync_hint(parts: list[Path]) -> str | None:
    """How to upload an offline W&B run, given its directories."""
    if not parts:
        return None
    if len(parts) == 1:
        return f"W&B run saved offline; upload it with: wandb sync {display(parts[0])}"
    run_id = parts[0].name.rsplit("-", 1)[-1]  # a resumed run: one directory per process, synced in order
    return (f"W&B run {run_id} saved offline in {len(parts)} parts; upload it with: "
            f"wandb sync {display(parts[0].parent)}/offline-run-*-{run_id}")


def announce(plan: RunPlan, datamodule: NamesDataModule, trainer: pl.Trainer, n_params: int) -> None:
    """Clear what a killed save left, then say what is about to run."""
    if trainer.is_global_zero:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(plan.out_dir):
            say(f"removed {display(stale)}, left by a save that was killed", file=sys.stderr)
    if plan.resume_path is not None:
        run_id = plan.resume_ckpt["namegen"].get("wandb_run_id")
        say(f"namegen: resuming {plan.run_name} from {display(plan.resume_path)} after epoch "
            f"{plan.resume_epoch + 1} of {plan.config.max_epochs}"
            + (f" (W&B run {run_id})" if run_id and trainer.loggers else ""))
    say(f"namegen: training {plan.run_name} on {plan.data_path} ({len(datamodule.train_names):,} train / "
        f"{len(datamodule.val_names):,} validation names, vocabulary of {len(datamodule.vocab)} tokens)")
    say(f"config ({plan.config_source}): " + json.dumps(plan.config.to_dict()))
    for note in (datamodule.case_note(), datamodule.long_names_note()):
        if note:
            say(note)
    if plan.carried is not None:
        say(f"starting from {display(plan.base.path)} ({plan.base.loaded.size}): {plan.carried.summary()}")
    if plan.wandb_auto_offline:
        say("W&B: no login found, so the run is logged offline (the end of the run prints its `wandb sync` "
            "command); `wandb login` gives a live dashboard")
    say(f"trainable parameters: {n_params:,}")
    turn_off = ("; --precision 32-true turns it off" if plan.precision != "32-true"
                else "; --precision bf16-mixed asks for it" if "no faster" in plan.precision_why else "")
    say(f"precision: {plan.precision} ({plan.precision_why}{turn_off}); val/loss is computed in float32")


def announce_recurrence(trainer: pl.Trainer, compiled_model: bool) -> None:
    """On a CPU, load the compiled recurrence (built here the first time, not inside the first step) on
    every process, and say which loops run. torch.compile (--compile) traces the Python loops instead."""
    if compiled_model or trainer.strategy.root_device.type != "cpu":
        return
    if recurrence.ops() is not None:
        say(f"recurrence: compiled for this CPU ({display(recurrence.build_dir())})")
    else:
        say(f"recurrence: Python loops, the same results but slower: {recurrence.why()}")


def report(result: TrainResult) -> None:
    say(f"finished in {result.elapsed_s:.1f}s after {result.epochs} epoch(s)")
    if result.best_score is None:
        say("no validation ran, so no best.ckpt was written", file=sys.stderr)
    else:
        best = display(result.best_path)
        say(f"best val/loss {result.best_score:.4f} (perplexity {torch.tensor(result.best_score).exp().item():.3f}): "
            f"{best}")
        say(f"sample from it: {result.sample_command} --ckpt {best}")
    if result.wandb_sync:
        say(result.wandb_sync)


def _interrupted(plan: RunPlan, trainer: pl.Trainer) -> Interrupted:
    """After Ctrl-C: close the W&B run; say which checkpoint is kept (the CLI says how to resume)."""
    if not trainer.is_global_zero:
        return Interrupted(quiet=True)
    finish_wandb(find_wandb_logger(trainer), exit_code=130)
    last = plan.out_dir / "last.ckpt"
    if not last.exists():
        return Interrupted(None)
    try:
        epoch = int(read_training_checkpoint(last)["epoch"]) + 1
    except UserError:
        epoch = None
    return Interrupted(last, epoch, shown=display(last))
