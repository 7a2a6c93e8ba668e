"""What the Trainer is handed besides the module: callbacks (run clock, sample table) and the
checkpoint-IO plugin that writes checkpoints atomically."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.optim.swa_utils import get_ema_multi_avg_fn

import wandb

from namegen.checkpoint import atomic_torch_save
from namegen.data import AS_IS, IGNORE, Vocab, shown
from namegen.loggers import find_wandb_logger
from namegen.sampling import sample_ids


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
        self._epoch_tokens += (y != IGNORE).sum()  # a tensor on the batch's device: no wait for it each step

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
            torch.as_tensor(self._epoch_tokens, device=pl_module.device).float(), reduce_op="sum"
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
            sync_dist=True,  # the same on every rank already (tokens are summed above): says so to Lightning
        )

    def state_dict(self) -> dict:
        return {"wall_s": self.wall_s, "train_s": self.train_s, "train_tokens": self.train_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.wall_s = float(state_dict.get("wall_s", 0.0))
        self.train_s = float(state_dict.get("train_s", 0.0))
        self.train_tokens = int(state_dict.get("train_tokens", 0))


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
        vocab = Vocab(pl_module.vocab_chars)
        names = [shown(vocab.decode(row), pl_module.meta.get("case") or AS_IS) for row in ids]
        self.rows.extend([trainer.current_epoch, name] for name in names)
        # W&B tables are immutable once logged: log the table so far, one row per name.
        logger.log_table(key="samples", columns=["epoch", "name"], data=list(self.rows))


class EpochLine(pl.Callback):
    """One line per epoch, for logs that are not a terminal (where a progress bar would redraw
    hundreds of times): epoch, val/loss, the best so far and the epoch's time."""

    def __init__(self) -> None:
        self._start = 0.0
        self._best = float("inf")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:  # after every epoch-end hook has logged
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: "
        if (val := trainer.callback_metrics.get("val/loss")) is not None:
            self._best = min(self._best, float(val))
            line += f"val/loss {float(val):.4f} (best {self._best:.4f}), "
        print(line + f"{time.perf_counter() - self._start:.1f}s", flush=True)


PAUSE_AT_ENV, PAUSE_UNTIL_ENV = "NAMEGEN_TEST_PAUSE_AT", "NAMEGEN_TEST_PAUSE_UNTIL"


class PauseForTests(pl.Callback):
    """For tests only: stop at one training batch and say so, so that a test acts at a known point
    of the run (a kill, a Ctrl-C) however fast or slow the machine is. Users never set it.

    ``NAMEGEN_TEST_PAUSE_AT=EPOCH:BATCH`` (Lightning's 0-based indices): before that batch, rank 0
    prints ``namegen test pause: epoch EPOCH batch BATCH`` on stdout and waits, until the file named
    by ``NAMEGEN_TEST_PAUSE_UNTIL`` exists (made by the test) or a signal ends the process. A wait
    longer than ``limit_s`` is an error, so that a run whose test died does not wait forever."""

    def __init__(self, epoch: int, batch: int, until: str | None = None, limit_s: float = 600.0):
        self.epoch, self.batch, self.until, self.limit_s = epoch, batch, until, limit_s

    @classmethod
    def from_env(cls) -> PauseForTests | None:
        spec = os.environ.get(PAUSE_AT_ENV)
        if not spec:
            return None
        epoch, batch = (int(part) for part in spec.split(":"))
        return cls(epoch, batch, os.environ.get(PAUSE_UNTIL_ENV) or None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch) or not trainer.is_global_zero:
            return
        print(f"namegen test pause: epoch {self.epoch} batch {self.batch}", flush=True)
        deadline = time.monotonic() + self.limit_s
        while not (self.until and os.path.exists(self.until)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{PAUSE_AT_ENV}: the pause was not ended within {self.limit_s:.0f} s")
            time.sleep(0.05)


class ModelArtifact(pl.Callback):
    """When training ends, the best checkpoint goes to the W&B run as a model artifact
    (``model-<run id>``, aliases ``best`` and ``latest``), with its val/loss, size, parameter
    count and the training data's sha256 as metadata. Offline runs stage it; ``wandb sync`` uploads it."""

    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        logger = find_wandb_logger(trainer)
        best, score = self.checkpoint.best_model_path, self.checkpoint.best_model_score
        if logger is None or not trainer.is_global_zero or not best or score is None:
            return
        run = logger.experiment
        metadata = {
            "val/loss": float(score),
            "size": pl_module.meta.get("size"),
            "num_parameters": pl_module.model.num_parameters(),
            "data_sha256": (pl_module.meta.get("data") or {}).get("sha256"),
            "epoch": trainer.current_epoch,
            "config": pl_module.config.to_dict(),
        }
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata,
                                  description="namegen best.ckpt: sample with `namegen sample --ckpt best.ckpt`")
        artifact.add_file(best, name="best.ckpt")
        run.log_artifact(artifact, aliases=["best", "latest"])


def horizon_decay(decay: float, steps: int, max_fraction: float = 0.25) -> float:
    """The decay an average of ``steps`` optimizer steps uses: ``decay``, or less, so that the average
    spans (``1 / (1 - d)`` steps) at most ``max_fraction`` of them."""
    return min(decay, max(0.0, 1.0 - 1.0 / (max_fraction * max(steps, 1))))


class RunLengthEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with a horizon that follows the run's length.

    An average with decay ``d`` spans about ``1 / (1 - d)`` steps. On a short list a run has few
    steps (398 names at batch 64: 5 a step, 400 in 80 epochs), and an average meant for names.txt
    (0.999: 1,000 steps) would still be mostly the weights the run started from. So the decay is
    lowered until the average spans at most ``max_fraction`` of the run's ``steps`` (optimizer steps):
    ``d = min(decay, 1 - 1 / (max_fraction * steps))``. The shipped recipes on names.txt span 3% to
    21% of their runs and keep their decay. ``decay_used`` is the decay the run averages with.
    """

    def __init__(self, decay: float, steps: int, max_fraction: float = 0.25):
        super().__init__(decay=decay)
        self.decay, self.steps, self.max_fraction = decay, steps, max_fraction
        self._lists: tuple | None = None  # (the average's tensors, the model's); () for Lightning's update
        self._use(decay)

    @property
    def state_key(self) -> str:
        return "EMAWeightAveraging"  # the key of checkpoints written before the horizon was capped

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.ckpt_path is None:  # a resumed run keeps its decay (load_state_dict)
            self._use(horizon_decay(self.decay, self.steps, self.max_fraction))
            if trainer.is_global_zero and (line := self.note()):
                print(line, flush=True)
        super().setup(trainer, pl_module, stage)
        self._lists = None  # a new AveragedModel: its tensors are gathered again

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """Lightning's update, without its per-step Python: ``AveragedModel.update_parameters`` gathers,
        detaches and groups every tensor by device and dtype at each step before its one multi-tensor
        ``lerp`` (small: about 0.3 ms of a 6 ms step). After the first update (a copy), the same ``lerp`` with
        the same weight, and the same count, run here on tensor lists gathered once: the same bits."""
        due = trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1)
        if not self._lists or not due:  # () once found not to be one lerp: Lightning's path throughout
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if self._lists is None and self._latest_update_step == trainer.global_step:  # the average exists now
                self._lists = self._tensor_lists(pl_module) or ()
            return
        average, current = self._lists
        torch._foreach_lerp_(average, current, 1 - self.decay_used)  # get_ema_multi_avg_fn's update
        self._average_model.n_averaged += 1
        self._latest_update_step = trainer.global_step

    def _tensor_lists(self, pl_module: pl.LightningModule):
        """(the average's tensors, the model's), detached, in AveragedModel's order; None where its update
        would not be one ``lerp`` (more than one device or dtype, or tensors that are not floating point)."""
        model = self._average_model
        average = list(model.module.parameters()) + (list(model.module.buffers()) if model.use_buffers else [])
        current = list(pl_module.parameters()) + (list(pl_module.buffers()) if model.use_buffers else [])
        average, current = [t.detach() for t in average], [t.detach() for t in current]
        kinds = {(t.device, t.dtype) for t in average + current}
        if len(average) != len(current) or len(kinds) != 1 or not all(t.is_floating_point() for t in average):
            return None
        return average, current

    def state_dict(self) -> dict:
        return {**super().state_dict(), "decay_used": self.decay_used}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._use(float(state_dict.get("decay_used", self.decay)))  # older checkpoints: the decay uncapped

    def _use(self, decay: float) -> None:
        self.decay_used = decay
        self._kwargs.pop("avg_fn", None)
        # torch's multi-tensor EMA: one foreach lerp, average + (1 - decay) (weight - average)
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        if self._average_model is not None:
            self._average_model.avg_fn, self._average_model.multi_avg_fn = None, self._kwargs["multi_avg_fn"]

    def note(self) -> str | None:
        """One line when the decay was lowered, or None."""
        if self.decay_used == self.decay:
            return None
        return (f"weight averaging: ema_decay {self.decay} would span {1 / (1 - self.decay):,.0f} steps, more than "
                f"{self.max_fraction:.0%} of this run's; averaging with {self.decay_used:.4f} "
                f"({1 / (1 - self.decay_used):,.0f} steps)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, but local files are written by ``atomic_torch_save``.

    Lightning saves through ``fsspec``'s transaction, which writes under the *system*
    temporary directory and then moves the file into place: across filesystems (a
    tmpfs ``/tmp``) that move is a copy straight into ``best.ckpt``, and a kill during
    it leaves a truncated checkpoint. Here a kill leaves the old file or the new one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not _is_local_file_protocol(path):  # s3://, gs://: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
