"""The LightningModule: loss, metrics, optimizer and what a checkpoint carries."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from torchmetrics import MeanMetric

from namegen.checkpoint import STATE_PREFIX, build_meta
from namegen.config import Config
from namegen.data import IGNORE, Vocab
from namegen.errors import TrainingDiverged
from namegen.model import GRULanguageModel


class NameGenModule(pl.LightningModule):
    """Trains a ``GRULanguageModel`` on next-character prediction.

    ``train/loss`` and ``val/loss`` are the mean negative log-likelihood per
    predicted character (nats), weighted by characters across the whole epoch,
    not a mean of batch means; ``val/ppl`` is ``exp(val/loss)``.

    Every checkpoint carries ``"namegen"`` (``namegen.checkpoint.build_meta``: config,
    vocabulary, the size's name, the training file's path and sha256), from which
    a checkpoint rebuilds the model with nothing else at hand; ``meta`` gives the
    size and data entries. The constructor's arguments are saved as plain-type
    hyperparameters too, so Lightning's own ``NameGenModule.load_from_checkpoint(path)``
    rebuilds the module (``weights_only=True`` loading holds).
    """

    def __init__(self, config: Config | dict, vocab_chars: list[str], meta: dict | None = None):
        super().__init__()
        self.config = config if isinstance(config, Config) else Config.from_dict(config)
        self.vocab_chars = list(vocab_chars)
        self.meta = dict(meta or {})
        self.save_hyperparameters(
            {"config": self.config.to_dict(), "vocab_chars": self.vocab_chars, "meta": self.meta}, logger=False
        )
        self.model = GRULanguageModel.from_config(self.config, vocab_size=len(self.vocab_chars) + 2)
        self.train_nll = MeanMetric()
        self.val_nll = MeanMetric()

    def forward(self, idx: torch.Tensor, h: torch.Tensor | None = None):
        return self.model(idx, h)

    def _token_nll(self, batch) -> torch.Tensor:
        """Per-character NLL of the real (non-padding) targets, flattened: (n_chars,)."""
        x, y = batch  # (B, T), (B, T)
        return self.model.nll(x, y, IGNORE)  # the padding after each name takes no compute

    def training_step(self, batch, batch_idx):
        nll = self._token_nll(batch)
        loss = nll.mean()
        finite = bool(torch.isfinite(loss))
        if self._on_any_process(not finite):  # stop before backward and the optimizer step: no inf/nan weights
            where = "" if not finite else " on another process"
            raise self._diverged(f"train/loss is {loss.item() if not finite else 'not finite'}{where}")
        self.train_nll.update(loss.detach(), weight=nll.numel())
        if self._writes_step_logs():
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _writes_step_logs(self) -> bool:
        """Whether the Trainer writes this step's logged values: every ``log_every_n_steps``-th step, and a
        step that stops the run. ``self.log`` costs a fair share of a small model's step (its metric object
        is moved to the value's device on every call), so the step loss is logged only when it will be
        written; the loggers get the same values, the progress bar's loss changes as often as they do."""
        trainer = self._trainer
        if trainer is None or trainer.log_every_n_steps <= 1 or trainer.should_stop:
            return True
        return (self.global_step + 1) % trainer.log_every_n_steps == 0

    def on_train_epoch_end(self) -> None:
        # compute() is already synced across processes; sync_dist=True (a mean of equal values) only
        # tells Lightning so, instead of its "use sync_dist=True" warning under DDP.
        self.log("train/loss", self.train_nll.compute(), on_epoch=True, sync_dist=True)
        self.train_nll.reset()

    def validation_step(self, batch, batch_idx):
        # val/loss in float32 whatever the training precision: it selects best.ckpt, so it must be the
        # loss of the float32 weights that the checkpoint holds and evaluate.py measures
        with torch.autocast(self.device.type, enabled=False):
            self.val_nll.update(self._token_nll(batch))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_nll.compute()  # synced across processes by torchmetrics
        self.val_nll.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)

    def configure_optimizers(self):
        cfg = self.config
        # Weight decay on matrices only; biases, embeddings' rows and norms are left alone.
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # On a CPU the fused kernel: one pass over each tensor's weights, grads and moments (large: 1.8 ms a
        # step against 11 for foreach, bench/RESULTS.md); it rounds differently from the per-tensor loop,
        # and the shipped recipes were trained again with it. Elsewhere torch's foreach, which it picks on
        # CUDA by itself (fused there is unmeasured: no GPU has been lent).
        fused = self.device.type == "cpu"
        optimizer = opt_cls(groups, lr=cfg.lr, fused=fused, foreach=not fused)
        if cfg.lr_schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def cosine(step: int) -> float:  # lr -> lr * 0.1 over the run
            progress = min(step / total, 1.0)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer, which may unscale a
        # GradScaler's gradients itself. Fused runs only on a CPU, where no precision scales gradients
        # (16-mixed needs CUDA), so they are the true ones: clip them as Lightning's plugin would.
        if gradient_clip_val and optimizer.defaults.get("fused"):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm in (None, "norm"):  # torch's clip_grad_norm_, in its two halves
                total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                # below the limit its multiply is by exactly 1.0 (a pass over every gradient that changes
                # nothing), so it is left out; a NaN norm still multiplies, as clip_grad_norm_ does
                if not bool(gradient_clip_val / (total + 1e-6) >= 1.0):
                    torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, total)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _on_any_process(self, flag: bool) -> bool:
        """``flag`` or-ed over the processes (DDP), so that all of them take the same branch."""
        if self.trainer.world_size == 1:
            return flag
        return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _diverged(self, message: str) -> TrainingDiverged:
        """The one-line error for a run that stopped at this step, saying which checkpoints are kept."""
        callbacks = self._trainer.checkpoint_callbacks if self._trainer is not None else []
        kept = sorted({Path(p).name for cb in callbacks for p in (cb.best_model_path, cb.last_model_path)
                       if p and Path(p).exists()})
        kept = (f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} from before it" if kept
                else "no checkpoint had been written yet")
        hint = "lower --lr" + ("" if str(self._trainer and self.trainer.precision).startswith(("32", "64"))
                               else " or use --precision 32-true")
        return TrainingDiverged(f"training diverged: {message} at epoch {self.current_epoch + 1}, step "
                                f"{self.global_step + 1}; {kept}; {hint}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Callbacks ran first: with ema_decay, state_dict is already the average and the trained weights
        # are in current_model_state. Never save a diverged set of either (DDP: the same on every rank).
        parts = ("state_dict", "current_model_state")
        saved = [(n, t) for part in parts for n, t in checkpoint.get(part, {}).items()]
        bad = next((n for n, t in saved if torch.is_floating_point(t) and not t.isfinite().all()), None)
        if bad is not None:
            raise self._diverged(f"weight {bad.removeprefix(STATE_PREFIX)} is not finite")
        meta = build_meta(self.config, Vocab(self.vocab_chars), self.model.num_parameters(), **self.meta)
        run_id = _wandb_run_id(self._trainer)
        if run_id:
            meta["wandb_run_id"] = run_id  # --resume continues this W&B run
        checkpoint["namegen"] = meta
        # Random state, as tensors (weights_only-safe), so a resumed run's dropout continues the stream.
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["namegen_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("namegen_rng")
        if not isinstance(rng, dict):
            return
        if isinstance(rng.get("torch"), torch.Tensor):
            torch.set_rng_state(rng["torch"])
        cuda = rng.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _wandb_run_id(trainer) -> str | None:
    if trainer is None:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger.version:
            return str(logger.version)
    return None
