"""Speed benchmark: namegen vs the notebook's loop, torch.nn.GRU and a matmul-only floor.

    python bench/speed.py                    # small, medium, large; writes bench/RESULTS.md
    python bench/speed.py --quick            # a couple of minutes: fewer reps, part of an epoch
    python bench/speed.py --sizes small --reps 5 --out /tmp/results.md

A script, not a test: it prints what it measured on this machine, with the
target each figure is held to, and never fails on a missed target.

What it measures, per size (configs/<size>.yaml: widths, batch size, optimizer):
1. step: one forward + backward + optimizer step on a (batch, 16) batch (16 = the
   padded length of names.txt) for the notebook's GRULayer loop (bench/notebook.py),
   namegen's GRULanguageModel, torch.nn.GRU at the same widths (different math,
   what a user would pick instead), and the matmul-only floor: the matmuls a
   fused cell needs in forward and backward (input projections over all steps,
   2 hidden matmuls per step forward and 2 backward, the batched weight-gradient
   matmuls, the head), replayed on preallocated tensors without elementwise
   work or optimizer. Implementations are interleaved rep by rep; medians.
2. epoch: real (non-padding) target tokens per second for an epoch of names.txt
   through the Lightning Trainer: namegen's data module (tensors, batches by
   index, trimmed per batch) and module, vs the notebook model fed the way the
   notebook fed it (pad to 16, per-sample DataLoader, batch 64). The overhead
   share is 1 - (a plain PyTorch loop over the same batches) / (the Lightning epoch).
3. sampling: names per second, namegen's batched sampler vs the notebook's
   generate_names (one name at a time, re-running the prefix every character),
   the same weights in both, max_len 20 as the notebook called it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from namegen.config import SIZES, load_config  # noqa: E402
from namegen.data import IGNORE, NamesDataModule, Vocab, read_names, split_names  # noqa: E402
from namegen.model import GRULanguageModel  # noqa: E402
from namegen.module import NameGenModule  # noqa: E402
from namegen.sampling import sample_ids  # noqa: E402
from notebook import NotebookModel, generate_dataset, generate_names  # noqa: E402

warnings.filterwarnings("ignore")
T_PAD = 16  # names.txt's longest name + 1: the notebook's padded length
VOCAB = 28


# ---------------------------------------------------------------------------- the four step implementations


class TorchGRUModel(nn.Module):
    """Embedding -> torch.nn.GRU (dropout between layers) -> (LayerNorm) -> head: what a user would pick."""

    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, cfg.n_embd)
        self.gru = nn.GRU(cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.norm = nn.LayerNorm(cfg.n_hidden) if cfg.layer_norm else nn.Identity()
        self.head = nn.Linear(cfg.n_hidden, VOCAB)

    def forward(self, idx):
        out, _ = self.gru(self.embedding(idx))
        return self.head(self.norm(out))


def make_optimizer(cfg, params):
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr)


def model_step_fn(model, cfg, B, T):
    """A closure running one forward + backward + optimizer step on a fixed random batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, VOCAB, (B, T), generator=gen)
    y = torch.randint(1, VOCAB, (B, T), generator=gen)
    model.train()
    opt = make_optimizer(cfg, model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=IGNORE)
        loss.backward()
        opt.step()

    return step


def floor_step_fn(cfg, B, T):
    """The matmuls of a fused cell's forward and backward, replayed without elementwise work."""
    H, L, E, V = cfg.n_hidden, cfg.n_layer, cfg.n_embd, VOCAB
    r = lambda *s: torch.randn(*s)  # noqa: E731
    layers = []
    for i in range(L):
        n_in = E if i == 0 else H
        layers.append(dict(
            x=r(T * B, n_in), w_in=r(3 * H, n_in), b_in=r(3 * H), gx=r(T * B, 3 * H),
            w_rz=r(2 * H, H), w_h=r(H, H), h=r(B, H), rz=r(B, 2 * H), n=r(B, H),
            d_rz=r(T * B, 2 * H), d_n=r(T * B, H), hs=r(T * B, H), dq=r(B, H), dh=r(B, H),
            dx=r(T * B, n_in),
        ))
    top, w_head, b_head, logits, dlogits = r(T * B, H), r(V, H), r(V), r(T * B, V), r(T * B, V)

    def step():
        for l in layers:  # forward
            torch.addmm(l["b_in"], l["x"], l["w_in"].t(), out=l["gx"])  # all steps' input terms
            for _ in range(T):
                torch.mm(l["h"], l["w_rz"].t(), out=l["rz"])  # reset and update gates
                torch.mm(l["h"], l["w_h"].t(), out=l["n"])  # candidate
        torch.addmm(b_head, top, w_head.t(), out=logits)  # head
        dtop = torch.mm(dlogits, w_head)  # noqa: F841  backward: head
        dw_head = dlogits.t() @ top  # noqa: F841
        for l in reversed(layers):
            for t in range(T):
                torch.mm(l["d_n"][:B], l["w_h"], out=l["dq"])  # grad of r * h
                torch.mm(l["d_rz"][:B], l["w_rz"], out=l["dh"])  # grad of h through the gates
            dw_rz = l["d_rz"].t() @ l["hs"]  # noqa: F841  batched weight gradients
            dw_h = l["d_n"].t() @ l["hs"]  # noqa: F841
            torch.mm(l["gx"], l["w_in"], out=l["dx"])  # grad of the layer's input
            dw_in = l["gx"].t() @ l["x"]  # noqa: F841

    return step


def time_interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, the fns taking turns inside every rep."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_steps(cfg, reps: int) -> dict:
    torch.manual_seed(0)
    B, T = cfg.batch_size, T_PAD
    nb = NotebookModel(VOCAB, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.dropout, cfg.layer_norm)
    ng = GRULanguageModel.from_config(cfg, VOCAB)
    fns = {
        "notebook": model_step_fn(nb, cfg, B, T),
        "namegen": model_step_fn(ng, cfg, B, T),
        "nn.GRU": model_step_fn(TorchGRUModel(cfg), cfg, B, T),
        "floor": floor_step_fn(cfg, B, T),
    }
    return time_interleaved(fns, reps)


# ---------------------------------------------------------------------------- end to end, one epoch


class NotebookModule(pl.LightningModule):
    """The notebook's model and loss (mean CE over the batch, padding ignored) in a LightningModule."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = NotebookModel(VOCAB, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.dropout, cfg.layer_norm)

    def training_step(self, batch, batch_idx):
        xb, yb = batch
        logits = self.model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), yb.reshape(-1), ignore_index=IGNORE)
        self.log("train/loss_step", loss, on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return make_optimizer(self.cfg, self.model.parameters())


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.t0


def run_epoch(module, loader, cfg, limit, out_dir) -> float:
    """Seconds for one training epoch (or ``limit`` batches of it) through the Lightning Trainer."""
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=limit, limit_val_batches=0,
        num_sanity_val_steps=0, gradient_clip_val=cfg.grad_clip or None, callbacks=[timer],
        logger=pl.loggers.CSVLogger(out_dir, name="bench"), log_every_n_steps=10, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def run_plain(model, batches, cfg) -> float:
    """The same batches in a bare loop: forward, loss, backward, clip, step. Seconds."""
    opt = make_optimizer(cfg, model.parameters())
    model.train()
    t0 = time.perf_counter()
    for xb, yb in batches:
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), yb.reshape(-1), ignore_index=IGNORE)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    return time.perf_counter() - t0


def bench_epoch(cfg, data: Path, fraction: float, out_dir: Path) -> dict:
    torch.manual_seed(0)
    # namegen: its own data module (tensors, batches by index, trimmed per batch) and LightningModule
    dm = NamesDataModule(data, batch_size=cfg.batch_size, seed=cfg.seed, group_by_length=False)
    dm.setup("fit")
    ng_loader = dm.train_dataloader()
    n_batches = len(ng_loader)
    ng_limit = max(1, round(n_batches * fraction))
    ng_batches = [b for _, b in zip(range(ng_limit), ng_loader)]
    ng_tokens = sum(int((y != IGNORE).sum()) for _, y in ng_batches)
    ng_module = NameGenModule(cfg, dm.vocab.chars)
    ng_limit_arg = ng_limit if fraction < 1 else 1.0
    ng_seconds = run_epoch(ng_module, ng_loader, cfg, ng_limit_arg, out_dir)
    ng_plain = run_plain(GRULanguageModel.from_config(cfg, VOCAB), ng_batches, cfg)

    # the notebook: pad every name to 16, TensorDataset + DataLoader(batch_size=64, shuffle=True)
    words = read_names(data)
    vocab = Vocab.from_names(words)
    stoi = {c: i + 2 for i, c in enumerate(vocab.chars)} | {".": 1, "<PAD>": 0}
    train_words, _ = split_names(words, cfg.seed)
    x, y = generate_dataset(train_words, stoi)
    nb_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    nb_limit = max(1, round(len(nb_loader) * fraction))
    nb_batches = [b for _, b in zip(range(nb_limit), nb_loader)]
    nb_tokens = sum(int((yb != IGNORE).sum()) for _, yb in nb_batches)
    nb_seconds = run_epoch(NotebookModule(cfg), nb_loader, cfg, nb_limit if fraction < 1 else 1.0, out_dir)
    nb_plain = run_plain(NotebookModel(VOCAB, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.dropout, cfg.layer_norm),
                         nb_batches, cfg)
    return {
        "namegen_tok_s": ng_tokens / ng_seconds, "notebook_tok_s": nb_tokens / nb_seconds,
        "namegen_overhead": 1 - ng_plain / ng_seconds, "notebook_overhead": 1 - nb_plain / nb_seconds,
        "namegen_batches": f"{ng_limit}/{n_batches}", "notebook_batches": f"{nb_limit}/{len(nb_loader)}",
        "namegen_seconds": ng_seconds, "notebook_seconds": nb_seconds,
    }


# ---------------------------------------------------------------------------- sampling


def bench_sampling(cfg, n_namegen: int, n_notebook: int, reps: int) -> dict:
    torch.manual_seed(0)
    ng = GRULanguageModel.from_config(cfg, VOCAB).eval()
    nb = NotebookModel(VOCAB, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.dropout, cfg.layer_norm)
    nb.load_namegen_weights(ng)  # the same weights: the same name-length distribution up to the start token
    itos = {0: "<PAD>", 1: "."} | {i + 2: c for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    lengths = {"namegen": [], "notebook": []}

    def run_ng():
        ids, _ = sample_ids(ng, n_namegen, max_len=20)
        lengths["namegen"].append(statistics.mean(map(len, ids)))

    def run_nb():
        with contextlib.redirect_stdout(io.StringIO()):  # generate_names prints every name
            names = generate_names(nb, n_notebook, start_token=0, max_len=20, device="cpu", itos=itos)
        lengths["notebook"].append(statistics.mean(len(n.rstrip(".")) for n in names))

    t = time_interleaved({"namegen": run_ng, "notebook": run_nb}, reps, warmup=1)
    return {
        "namegen_names_s": n_namegen / t["namegen"], "notebook_names_s": n_notebook / t["notebook"],
        "namegen_len": statistics.mean(lengths["namegen"]), "notebook_len": statistics.mean(lengths["notebook"]),
    }


# ---------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms"


def check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes (default: all three)")
    p.add_argument("--reps", type=int, default=None, help="step-time repetitions per implementation "
                   "(default: 15, 9 for large; --quick: 5, 3 for large)")
    p.add_argument("--epoch-fraction", type=float, default=None,
                   help="fraction of the epoch to run end to end (default: 1.0; --quick: 0.25)")
    p.add_argument("--quick", action="store_true", help="fewer reps, a quarter epoch, fewer sampled names")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: step, epoch, sample")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "names.txt"),
                   help="names file (default: ../shared/names.txt, else data/names.txt)")
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"), help="where to write the table")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default: 1; on a shared, loaded CPU more threads than free "
                        "cores make OpenMP spin-wait and every figure far noisier)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    skip = set(filter(None, args.skip.split(",")))
    fraction = args.epoch_fraction or (0.25 if args.quick else 1.0)
    data = Path(args.data) if Path(args.data).exists() else ROOT / "data" / "names.txt"
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "namegen-bench"
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {machine()}\n# {started:%Y-%m-%d %H:%M} UTC, data {data}, sizes {sizes}", flush=True)

    results = {}
    for size in sizes:
        cfg = load_config(size)
        big = size == "large"
        reps = args.reps or ((3 if big else 5) if args.quick else (9 if big else 15))
        r = results[size] = {"reps": reps}
        if "step" not in skip:
            r["step"] = bench_steps(cfg, reps)
            print(f"{size} step: " + ", ".join(f"{k} {ms(v)}" for k, v in r["step"].items()), flush=True)
        if "sample" not in skip:
            n_nb = (5 if big else 10) if args.quick else (10 if big else 25)
            r["sample"] = bench_sampling(cfg, n_namegen=2000 if big else 5000, n_notebook=n_nb,
                                         reps=3 if args.quick else 5)
            print(f"{size} sample: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["sample"].items()), flush=True)
        if "epoch" not in skip:
            r["epoch"] = bench_epoch(cfg, data, fraction, out_dir)
            print(f"{size} epoch: " + ", ".join(f"{k} {v:,.3f}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in r["epoch"].items()), flush=True)

    report = render(results, sizes, started, data, fraction, args)
    Path(args.out).write_text(report, encoding="utf-8")
    print("\n" + report)
    print(f"wrote {args.out}")
    return 0


def render(results, sizes, started, data, fraction, args) -> str:
    cmd = "python bench/speed.py" + ("" if not sys.argv[1:] else " " + " ".join(sys.argv[1:]))
    lines = [
        "# namegen speed benchmark",
        "",
        f"- machine: {machine()}",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- command: `{cmd}`",
        f"- data: {data.name}; step times on (batch, {T_PAD}) batches, the configs' batch sizes",
        "- GPU: not measured (no GPU on this machine)" if not torch.cuda.is_available()
        else f"- GPU: {torch.cuda.get_device_name()} (this script times the CPU only)",
        "",
    ]
    if any("step" in results[s] for s in sizes):
        lines += [
            "## 1. Training step (forward + backward + optimizer), median of interleaved reps",
            "",
            "| size | batch | reps | notebook loop | namegen | torch.nn.GRU | matmul floor | "
            "namegen / nn.GRU (target ≤ 0.9) | namegen / floor (target ≤ 1.25) | notebook / namegen |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in sizes:
            if "step" not in results[s]:
                continue
            t = results[s]["step"]
            ng = t["namegen"]
            lines.append(
                f"| {s} | {load_config(s).batch_size} | {results[s]['reps']} | {ms(t['notebook'])} | {ms(ng)} | "
                f"{ms(t['nn.GRU'])} | {ms(t['floor'])} | {ng / t['nn.GRU']:.2f} ({check(ng <= 0.9 * t['nn.GRU'])}) | "
                f"{ng / t['floor']:.2f} ({check(ng <= 1.25 * t['floor'])}) | {t['notebook'] / ng:.1f}x |"
            )
        lines += ["", "The floor is only the matmuls (no elementwise work, no optimizer step).", ""]
    if any("epoch" in results[s] for s in sizes):
        part = "one epoch" if fraction >= 1 else f"{fraction:.0%} of an epoch"
        lines += [
            f"## 2. End to end through Lightning, {part} of names.txt (real target tokens/s)",
            "",
            "| size | namegen tok/s | notebook tok/s | namegen / notebook (target ≥ 2.5) | "
            "namegen overhead (target ≤ 15%) | notebook overhead | batches namegen / notebook |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in sizes:
            if "epoch" not in results[s]:
                continue
            e = results[s]["epoch"]
            ratio = e["namegen_tok_s"] / e["notebook_tok_s"]
            lines.append(
                f"| {s} | {e['namegen_tok_s']:,.0f} | {e['notebook_tok_s']:,.0f} | {ratio:.1f}x ({check(ratio >= 2.5)}) | "
                f"{e['namegen_overhead']:.0%} ({check(e['namegen_overhead'] <= 0.15)}) | {e['notebook_overhead']:.0%} | "
                f"{e['namegen_batches']} / {e['notebook_batches']} |"
            )
        lines += [
            "",
            "namegen: its data module (tensors, batches by index, each batch trimmed to its longest name) at the "
            "config's batch size; notebook: every name padded to 16, per-sample DataLoader, batch 64. Overhead = "
            "1 - (the same batches in a bare PyTorch loop) / (the Lightning epoch): Trainer, data loading, "
            "logging (CSV, every 10 steps), gradient clipping in both. One run each: noisy on a shared CPU.",
            "",
        ]
    if any("sample" in results[s] for s in sizes):
        lines += [
            "## 3. Sampling, names/s (max_len 20, the same weights in both)",
            "",
            "| size | namegen names/s | notebook names/s | namegen / notebook (target ≥ 150) | small ≥ 20,000/s | "
            "mean length namegen / notebook |",
            "|---|---|---|---|---|---|",
        ]
        for s in sizes:
            if "sample" not in results[s]:
                continue
            m = results[s]["sample"]
            ratio = m["namegen_names_s"] / m["notebook_names_s"]
            abs_ok = check(m["namegen_names_s"] >= 20_000) if s == "small" else "-"
            lines.append(
                f"| {s} | {m['namegen_names_s']:,.0f} | {m['notebook_names_s']:,.1f} | {ratio:,.0f}x ({check(ratio >= 150)}) "
                f"| {abs_ok} | {m['namegen_len']:.1f} / {m['notebook_len']:.1f} |"
            )
        lines += [
            "",
            "Untrained (random) weights, copied from namegen's model into the notebook's; namegen samples a batch "
            "at a time (`sample_ids`), the notebook's `generate_names` one name at a time, re-running the whole "
            "prefix for each character, with autograd on, as written (its printing goes to a buffer).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
