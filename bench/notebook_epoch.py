"""One epoch of the notebook's own training loop, timed; bench/speed.py runs it in a fresh process.

    python bench/notebook_epoch.py --size small --data namegen/assets/names.txt
    python bench/notebook_epoch.py --size large --data namegen/assets/names.txt --limit-batches 20

The notebook's data preparation (pad every name to the longest, 80/20 split,
TensorDataset + DataLoader(shuffle=True)), its model, optimizer and loss for the
size (cell 16), and its epoch loop (train_model's body), all from
tests/notebook_transcript.py. torch runs with its default threads. The split
uses random_state=42, the seed namegen's split uses, so both sides train on the
same names (the notebook itself passed no seed).

Prints one JSON line: epoch_s (perf_counter around the epoch loop, DataLoader
included), batches, batch_size, names, real_tokens (targets that are not
padding), tokens_per_s, threads, device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import notebook_transcript as nb  # noqa: E402

SPLIT_SEED = 42  # namegen's default seed (configs/*.yaml): the same train names on both sides


class Batches:
    """The notebook's DataLoader, cut after ``limit`` batches (None: all), counting what it yields."""

    def __init__(self, loader, limit=None):
        self.loader, self.limit = loader, limit
        self.names = self.tokens = 0

    def __len__(self):  # train_one_epoch divides by it, as the notebook divides by len(train_loader)
        return len(self.loader) if self.limit is None else min(self.limit, len(self.loader))

    def __iter__(self):
        for i, (xb, yb) in enumerate(self.loader):
            if i == len(self):
                return
            self.names += len(yb)
            self.tokens += int((yb != -100).sum())
            yield xb, yb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=tuple(nb.TABLE_BATCH_SIZE), required=True)
    p.add_argument("--data", required=True, help="names file")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the notebook's table for the size (its code used 64 for all three)")
    p.add_argument("--limit-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    batch_size = args.batch_size or nb.TABLE_BATCH_SIZE[args.size]
    device = torch.device(args.device)

    train_loader, _, _, _ = nb.prepare_data(args.data, batch_size=batch_size, random_state=SPLIT_SEED)
    model, optimizer, loss_fn = nb.make_model(args.size, device)
    batches = Batches(train_loader, args.limit_batches)

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    nb.train_one_epoch(model, batches, device, optimizer, loss_fn)
    if device.type == "cuda":
        torch.cuda.synchronize()
    epoch_s = time.perf_counter() - t0

    print(json.dumps({
        "epoch_s": epoch_s, "batches": len(batches), "batch_size": batch_size, "names": batches.names,
        "real_tokens": batches.tokens, "tokens_per_s": batches.tokens / epoch_s,
        "threads": torch.get_num_threads(), "device": str(device),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
