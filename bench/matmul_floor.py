"""The matmul floor of one training epoch: only the matrix products a size's training epoch computes,
on the same batches, in the given dtype, with nothing else (no elementwise work, no optimizer, no loop).

    python bench/matmul_floor.py --size large                  # bf16, the whole epoch of names.txt
    python bench/matmul_floor.py --size small --dtype float32 --limit-batches 20

Each batch is namegen's own (the data module of `namegen train --model SIZE`: its batch size, its
shuffled order, names sorted longest first, no compute on padding), and its products are those of
``namegen.model`` at that batch, with the shapes of the packed layout (step t runs the names still
inside their name):

- forward: each layer's input map (layer 0: the V-row embedding table), each step's two hidden
  products (W_rz h and W_h (r * h)), the head;
- backward: the head's two, each step's two, the hidden weights' two over all rows, and each layer's
  input map's two (layer 0: the table's).

Outputs are preallocated and written with ``out=``. Prints one JSON line: epoch_s (perf_counter
around the epoch's products), batches, gemms, gflop, dtype, threads.

``--updates`` also times, in the same process after the products, the passes over the weights that the
size's recipe makes at every step whatever the model computes: gradient clipping by norm (torch's
``clip_grad_norm_``), the fused AdamW update and the weight average's ``lerp``, on the model's own
float32 parameters, as many steps as batches: ``updates_s`` and ``updates_share`` (of epoch_s).
``--step`` also times the size's whole training step on the same batches with no Trainer around it,
alternating with the products 50 batches at a time so that both see the same minutes of the VM
(``step_s``, and ``step_over_floor``: step_s / epoch_s): namegen's model, its loss under bf16 autocast
(with ``--dtype bfloat16``; float32 otherwise), backward, clipping, fused AdamW, ``zero_grad`` and the
weight average's ``lerp``. What ``namegen train``'s training epoch takes beyond it is the Trainer's;
what it takes beyond the floor is the model's and the recipe's own work besides the products.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from namegen.config import load_config  # noqa: E402
from namegen.data import IGNORE  # noqa: E402
from namegen.datamodule import NamesDataModule  # noqa: E402
from namegen.model import Packing  # noqa: E402


def epoch_batches(size: str, data: Path) -> tuple[list[list[int]], int, list]:
    """Each training batch's packed step sizes, in namegen's order for the config's seed; V; the batches."""
    config = load_config(size)
    torch.manual_seed(config.seed)  # the shuffle of the first epoch, as `namegen train` seeds it
    dm = NamesDataModule(data, batch_size=config.batch_size, seed=config.seed, block_size=config.block_size,
                         split_seed=config.data_seed)
    dm.setup("fit")
    sizes, batches = [], list(dm.train_dataloader())
    for _, y in batches:
        lengths = (y != IGNORE).sum(1)
        sizes.append(Packing(lengths, y.shape[1]).batch_sizes)
    return sizes, len(dm.vocab), batches


class Products:
    """Preallocated operands for one size's products, in ``dtype``; ``step(sizes)`` runs one batch's."""

    def __init__(self, config, vocab_size: int, batch: int, dtype: torch.dtype):
        E, H, V, L = config.n_embd, config.n_hidden, vocab_size, config.n_layer
        n_max = batch * (config.block_size + 8)  # rows of the largest packed batch (names up to block + 8)
        self.H, self.V, self.E, self.L = H, V, E, L
        self.gemms = 0
        self.flop = 0

        def t(*shape):
            return torch.randn(*shape).to(dtype)

        self.table_in, self.w_in0 = t(V, E), t(3 * H, E)
        self.w_in, self.w_rz, self.w_h, self.head = t(3 * H, H), t(2 * H, H), t(H, H), t(V, H)
        self.x, self.gates, self.logits = t(n_max, H), t(n_max, 3 * H), t(n_max, V)
        self.out_h, self.out_h2, self.out_2h = t(batch, H), t(batch, H), t(batch, 2 * H)
        self.table = t(V, 3 * H)
        self.dw_in, self.dw_rz, self.dw_h, self.dhead, self.dw0 = t(3 * H, H), t(2 * H, H), t(H, H), t(V, H), t(3 * H, E)

    def _mm(self, a, b, out):
        torch.mm(a, b, out=out)
        self.gemms += 1
        self.flop += 2 * a.shape[0] * a.shape[1] * b.shape[1]

    def step(self, sizes: list[int]) -> None:
        N, H = sum(sizes), self.H
        x, g, lg = self.x[:N], self.gates[:N], self.logits[:N]
        for layer in range(self.L):  # forward
            if layer == 0:
                self._mm(self.table_in, self.w_in0.t(), self.table)  # (V, 3H): the projected embedding table
            else:
                self._mm(x, self.w_in.t(), g)  # (N, 3H): the input map over all rows
            for n in sizes:
                self._mm(x[:n], self.w_rz.t(), self.out_2h[:n])  # (n, 2H): W_rz h
                self._mm(x[:n], self.w_h.t(), self.out_h[:n])  # (n, H): W_h (r * h)
        self._mm(x, self.head.t(), lg)  # (N, V)
        self._mm(lg, self.head, x)  # backward: (N, H) the head's input grad
        self._mm(lg.t(), x, self.dhead)  # (V, H) the head's weight grad
        for layer in reversed(range(self.L)):
            for n in reversed(sizes):
                self._mm(self.out_h[:n], self.w_h, self.out_h2[:n])  # (n, H): dq
                self._mm(self.out_2h[:n], self.w_rz, self.out_h[:n])  # (n, H): through both gates
            self._mm(g[:, : 2 * H].t(), x, self.dw_rz)  # (2H, H) over all rows
            self._mm(g[:, 2 * H :].t(), x, self.dw_h)  # (H, H)
            if layer == 0:
                self._mm(self.table.t(), self.table_in, self.dw0)  # (3H, E): the table's weight grad
            else:
                self._mm(g, self.w_in, x)  # (N, H): the input map's input grad
                self._mm(g.t(), x, self.dw_in)  # (3H, H)


def recipe_updates(config, params: list):
    """The recipe's per-step passes over ``params`` and their gradients, as a function of no arguments:
    clipping by norm, the fused AdamW update and the weight average's lerp."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    average, current = [p.detach().clone() for p in params], [p.detach() for p in params]

    def update():
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip or 1.0)
        optimizer.step()
        torch._foreach_lerp_(average, current, 1 - (config.ema_decay or 0.999))

    update.optimizer = optimizer  # for zero_grad
    return update


def recipe_updates_s(config, vocab_size: int, steps: int) -> float:
    """Seconds for ``steps`` of the recipe's per-step weight passes (clipping, fused AdamW, the average)."""
    from namegen.model import GRULanguageModel

    model = GRULanguageModel.from_config(config, vocab_size)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2  # norms above grad_clip: the clipping's multiply runs, as for large
    update = recipe_updates(config, params)
    for _ in range(3):  # warm-up
        update()
    t0 = time.perf_counter()
    for _ in range(steps):
        update()
    return time.perf_counter() - t0


def recipe_step(config, vocab_size: int, dtype: torch.dtype):
    """The size's training step with no Trainer, as a function of one batch (x, y): the model's loss (under
    bf16 autocast for a bf16 floor), backward, then ``recipe_updates`` and zero_grad."""
    from namegen.model import GRULanguageModel

    torch.manual_seed(config.seed)
    model = GRULanguageModel.from_config(config, vocab_size).train()
    update = recipe_updates(config, list(model.parameters()))

    def step(batch):
        x, y = batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model.nll(x, y, IGNORE).mean()
        loss.backward()
        update()
        update.optimizer.zero_grad()

    return step


def timed_chunks(parts: list, items: list, chunk: int) -> list[float]:
    """Seconds each of ``parts`` (functions of one item) takes over all ``items``, run chunk by chunk in
    turn (part 0 over items 0..chunk, part 1 over the same, ...): each sees the same minutes of the VM."""
    seconds = [0.0] * len(parts)
    for start in range(0, len(items), chunk):
        for i, part in enumerate(parts):
            t0 = time.perf_counter()
            for item in items[start:start + chunk]:
                part(item)
            seconds[i] += time.perf_counter() - t0
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="large")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--data", default=str(ROOT / "namegen" / "assets" / "names.txt"))
    p.add_argument("--limit-batches", type=int, default=None)
    p.add_argument("--updates", action="store_true",
                   help="also time the recipe's per-step clipping, AdamW and weight average, as many steps")
    p.add_argument("--step", action="store_true",
                   help="also time the size's whole training step on the same batches, with no Trainer")
    args = p.parse_args(argv)
    sizes, vocab_size, batches = epoch_batches(args.size, Path(args.data))
    sizes = sizes[: args.limit_batches] if args.limit_batches else sizes
    batches = batches[: len(sizes)]
    config = load_config(args.size)
    products = Products(config, vocab_size, config.batch_size, getattr(torch, args.dtype))
    parts = [lambda i: products.step(sizes[i])]
    if args.step:  # the whole step, alternating with the products 50 batches at a time
        step = recipe_step(config, vocab_size, getattr(torch, args.dtype))
        parts.append(lambda i: step(batches[i]))
    for part in parts:  # warm-up (and the step's compiled recurrence)
        for i in range(3):
            part(i)
    products.gemms = products.flop = 0
    seconds = timed_chunks(parts, list(range(len(sizes))), chunk=50)
    epoch_s = seconds[0]
    result = {"epoch_s": epoch_s, "batches": len(sizes), "gemms": products.gemms, "gflop": products.flop / 1e9,
              "dtype": args.dtype, "threads": torch.get_num_threads()}
    if args.updates:
        updates_s = recipe_updates_s(config, vocab_size, len(sizes))
        result.update(updates_s=updates_s, updates_share=updates_s / epoch_s)
    if args.step:
        result.update(step_s=seconds[1], step_over_floor=seconds[1] / epoch_s)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
