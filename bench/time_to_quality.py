"""Time to quality: how long `namegen train --model SIZE` takes to reach the best val/loss the notebook's
own recipe reaches, and how long the notebook takes to get there.

    python bench/time_to_quality.py --size small        # about 5 minutes on a 2-core CPU
    python bench/time_to_quality.py --size medium       # about 20 minutes
    python bench/time_to_quality.py --size large --patience 5   # stops the notebook 5 epochs past its best

1. The notebook: its data preparation (batch 64, the 80/20 split with namegen's seed 42), its model and
   optimizer for the size, and its epochs (small 35, medium 40, large 60), each its training pass and its
   own validation pass (cells 11 and 12, tests/notebook_transcript.py), on its clock. After every epoch
   the model is scored, off the clock, as namegen scores its own: mean NLL per character of the
   validation names, end token and first letter included (``namegen.evaluate.evaluate_nll`` on the model
   as ``namegen`` imports a notebook .pth). Its best score is the quality to reach; its time is its clock
   at the end of the epoch that first reached it. With ``--patience K`` the notebook stops once K epochs in
   a row have not improved on its best (its recipe keeps a constant learning rate, and a model that has
   begun to overfit it rarely comes back); the row then says how many of the recipe's epochs ran.
2. namegen: ``python train.py --model SIZE`` with its defaults, timed from the process's start to the
   epoch line whose val/loss first reaches that score; the run is then stopped (Ctrl-C).

Prints the row of the table in docs/speed.md, and one JSON line. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import notebook_transcript as nb  # noqa: E402
from namegen.data import read_names, split_names  # noqa: E402
from namegen.evaluate import evaluate_nll  # noqa: E402
from namegen.notebook import from_notebook  # noqa: E402

EPOCHS = {"small": 35, "medium": 40, "large": 60}  # the notebook's recipes (cell 16)
SPLIT_SEED = 42


def notebook_run(size: str, data: Path, epochs: int, log, patience: int | None = None) -> dict:
    """The notebook's recipe, epoch by epoch: its clock and namegen's score of its model after each; with
    ``patience``, until that many epochs in a row have not improved on the best."""
    start = time.perf_counter()
    train_loader, val_loader, _, _ = nb.prepare_data(data, batch_size=64, random_state=SPLIT_SEED)
    model, optimizer, loss_fn = nb.make_model(size, torch.device("cpu"))
    val_names = split_names(read_names(data), seed=SPLIT_SEED)[1]
    clock, scores = time.perf_counter() - start, []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        nb.train_one_epoch(model, train_loader, "cpu", optimizer, loss_fn)
        nb.evaluate_validation_loss(model, val_loader, loss_fn, "cpu")
        clock += time.perf_counter() - t0
        saved = {"state_dict": model.state_dict(), "model_class": type(model).__name__, "n_classes": model.n_classes,
                 "embd_dim": model.embd_dim, "hidden_dim": model.hidden_dim}
        loaded, _ = from_notebook(saved, Path(f"{size}-epoch{epoch}.pth"))
        scores.append((evaluate_nll(loaded, val_names, progress=False).nll, clock))
        log(f"notebook {size} epoch {epoch}: {scores[-1][0]:.4f} at {clock:.1f}s")
        since_best = epoch - 1 - min(range(epoch), key=lambda i: scores[i][0])
        if patience is not None and since_best >= patience:
            log(f"notebook {size}: {patience} epochs without improvement; stopped at epoch {epoch} of {epochs}")
            break
    best = min(s for s, _ in scores)
    epoch, (score, seconds) = next((i + 1, s) for i, s in enumerate(scores) if s[0] == best)
    return {"best": score, "epoch": epoch, "seconds": seconds, "epochs": epochs, "ran": len(scores)}


def namegen_run(size: str, data: Path, target: float, log) -> dict:
    """`train.py --model SIZE` until an epoch's val/loss reaches ``target``: seconds since its start."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="namegen-ttq-") as tmp:
        env |= {"WANDB_MODE": "offline", "WANDB_DIR": tmp, "WANDB_SILENT": "true"}
        cmd = [sys.executable, str(ROOT / "train.py"), "--model", size, "--data", str(data), "--out", f"{tmp}/run"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                bufsize=1)
        found = None
        for line in proc.stdout:
            match = re.match(r"epoch (\d+)/(\d+): val/loss ([\d.]+)", line)
            if match:
                log(f"namegen {size}: {line.strip()} at {time.perf_counter() - start:.1f}s")
            if match and float(match.group(3)) <= target:
                found = {"epoch": int(match.group(1)), "val_loss": float(match.group(3)),
                         "seconds": time.perf_counter() - start}
                proc.send_signal(signal.SIGINT)  # reached: stop the run as a user would
                break
        proc.stdout.close()
        proc.wait()
    return found or {"epoch": None, "val_loss": None, "seconds": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=tuple(EPOCHS), required=True)
    p.add_argument("--data", default=str(ROOT / "namegen" / "assets" / "names.txt"))
    p.add_argument("--epochs", type=int, default=None, help="the notebook's epochs (default: its recipe's); a smoke run")
    p.add_argument("--patience", type=int, default=None,
                   help="stop the notebook after this many epochs in a row without a new best (default: run them all)")
    args = p.parse_args(argv)
    data = Path(args.data).resolve()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    nbk = notebook_run(args.size, data, args.epochs or EPOCHS[args.size], log, args.patience)
    ng = namegen_run(args.size, data, nbk["best"], log)
    load_after = os.getloadavg()
    reached = (f"{ng['seconds']:.0f} s (epoch {ng['epoch']}, {ng['val_loss']:.4f})" if ng["seconds"] is not None
               else "not reached")
    speedup = f"{nbk['seconds'] / ng['seconds']:.1f}x" if ng["seconds"] else "n/a"
    ran = f"; {nbk['ran']} run, stopped {args.patience} past the best" if nbk["ran"] < nbk["epochs"] else ""
    print(f"| {args.size} | {nbk['best']:.4f} (epoch {nbk['epoch']} of {nbk['epochs']}{ran}) | {nbk['seconds']:.0f} s "
          f"| {reached} | {speedup} |")
    print(json.dumps({"size": args.size, "notebook": nbk, "namegen": ng, "load_before": load_before,
                      "load_after": load_after, "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
