"""Where a training step's time goes, as ``namegen train`` runs it (the Lightning Trainer, the user's defaults).

    python bench/profile_step.py                      # small, medium, large: 200 batches each
    python bench/profile_step.py --sizes small --batches 400 --ops

Each size trains ``--batches`` batches of one epoch through ``namegen.training.train`` (the path of
``namegen train --model SIZE``: its config, precision, callbacks and loggers, W&B offline) with
Lightning's ``SimpleProfiler``, and prints the mean milliseconds per step of each part (the first tenth
of the steps left out, as warm-up), and of the whole epoch loop (all steps):

- forward and loss (``training_step``), backward, gradient clipping, the optimizer's own update,
  ``zero_grad``, the weight average's update (``RunLengthEMA.on_train_batch_end``), every other
  callback's batch hooks, fetching the batch, and what is left of Lightning's loop around them.

The optimizer step wraps the closure (forward, backward, clipping) in automatic optimization, so
the optimizer's own share is ``optimizer_step`` minus what ran inside it. With ``--ops`` the model's
forward and backward are profiled by ``torch.profiler`` too, for the top operators. Timing needs a
quiet machine: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
from lightning.pytorch.profilers import SimpleProfiler  # noqa: E402

from namegen.training import TrainOptions, train  # noqa: E402

# (row, SimpleProfiler actions summed into it); "[Callback]X.on_train_batch_*" rows are gathered by kind
PARTS = [
    ("forward + loss", ["[Strategy]SingleDeviceStrategy.training_step"]),
    ("backward", ["[Strategy]SingleDeviceStrategy.backward"]),
    ("gradient clipping", ["[LightningModule]NameGenModule.configure_gradient_clipping"]),
    ("zero_grad", ["[LightningModule]NameGenModule.optimizer_zero_grad"]),
    ("weight average update", ["[Callback]EMAWeightAveraging.on_train_batch_end"]),
    ("fetch the batch", ["[_TrainingEpochLoop].train_dataloader_next"]),
]
OPTIMIZER_STEP = "[LightningModule]NameGenModule.optimizer_step"


def breakdown(durations: dict[str, list[float]], batches: int) -> list[tuple[str, float]]:
    """Mean ms per step of each part; the steps' first tenth is left out (warm-up)."""
    skip = max(1, batches // 10)

    def per_step(action: str) -> float:
        times = durations.get(action, [])[skip:]
        return 1000 * sum(times) / max(len(times), 1) if times else 0.0

    rows = [(name, sum(per_step(a) for a in actions)) for name, actions in PARTS]
    inside = sum(per_step(a) for a in PARTS[0][1] + PARTS[1][1] + PARTS[2][1])  # run inside optimizer.step
    rows.insert(3, ("optimizer update (AdamW)", per_step(OPTIMIZER_STEP) - inside))
    other = sum(per_step(a) for a in durations if a.startswith("[Callback]") and "batch" in a
                and a not in PARTS[4][1] and not a.endswith("on_before_optimizer_step"))
    rows.append(("other callbacks' batch hooks", other))
    # the whole epoch loop per step (its short validation, 2 batches, left in): what the parts leave is
    # Lightning's own loop, its logging (CSV and W&B every log_every_n_steps) and the progress output
    step = 1000 * sum(durations["run_training_epoch"]) / batches
    rows.append(("Lightning's loop, logging, the rest", step - sum(v for _, v in rows)))
    rows.append(("**whole step**", step))
    return rows


def profile_size(size: str, batches: int, tmp: Path) -> list[tuple[str, float]]:
    profiler = SimpleProfiler()
    train(TrainOptions(model=size, max_epochs=1, limit_train_batches=batches, limit_val_batches=2,
                       out=tmp / size, profiler=profiler))
    return breakdown(profiler.recorded_durations, batches)


def top_ops(size: str, batches: int) -> str:
    """torch.profiler's top operators of forward + backward for batches of the size's shape, as training
    computes them: its loss (``GRULanguageModel.nll``), under the precision ``namegen train`` picks here
    (bf16 autocast for large on a bf16 CPU), gradients set to None between steps."""
    from namegen.config import load_config
    from namegen.data import IGNORE
    from namegen.model import GRULanguageModel
    from namegen.training import default_precision

    config = load_config(size)
    model = GRULanguageModel.from_config(config, vocab_size=28).train()
    bf16 = default_precision("cpu", config)[0].startswith("bf16")
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, config.block_size + 1, (config.batch_size,), generator=g).sort(descending=True).values
    x = torch.randint(2, 28, (config.batch_size, config.block_size), generator=g)
    y = x.roll(-1, 1).masked_fill(torch.arange(config.block_size)[None] >= lengths[:, None], IGNORE)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.nll(x, y, IGNORE).mean()
        loss.backward()

    for _ in range(3):  # warm-up
        step()
    with torch.profiler.profile() as prof:
        for _ in range(min(batches, 20)):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small,medium,large")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--ops", action="store_true", help="also torch.profiler's top operators of the model")
    args = p.parse_args(argv)
    print(f"load before: {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory(prefix="namegen-profile-") as tmp:
        for size in args.sizes.split(","):
            results[size] = profile_size(size, args.batches, Path(tmp))
            if args.ops:
                print(top_ops(size, args.batches))
    sizes = list(results)
    print(f"\nload after: {os.getloadavg()}\n")
    print("| ms per step | " + " | ".join(sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for i, (name, _) in enumerate(results[sizes[0]]):
        print(f"| {name} | " + " | ".join(f"{results[s][i][1]:.2f}" for s in sizes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
