"""Compare sizes: train (or take) checkpoints, evaluate them, and write ``reports/<date>/``.

``report.md`` has one table, a row per run; ``loss_curves.png`` plots every
run's per-epoch train and validation loss on one figure, read from the
``metrics.csv`` that training writes beside the checkpoints (so no W&B is
needed). When a W&B run is active, or ``--logger wandb`` asks for one, the
figure and table are logged to it too.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from namegen.errors import UserError
from namegen.evaluate import Evaluation, evaluate_checkpoint

TABLE_COLUMNS = [
    "size", "parameters", "epochs", "best val/loss", "perplexity", "wall time", "tokens/s",
    "new", "copies", "duplicates", "mean length (data)", "first-letter TV", "10 sampled names",
]


# ---------------------------------------------------------------------------- training history


@dataclass
class History:
    """Per-epoch losses and the run's clock, read from a Lightning ``metrics.csv``."""

    train: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> train/loss
    val: dict[int, float] = field(default_factory=dict)  # epoch (0-based) -> val/loss
    wall_s: float | None = None
    train_s: float | None = None
    train_tokens: float | None = None

    @property
    def epochs(self) -> int:
        return max(list(self.train) + list(self.val), default=-1) + 1

    @property
    def best_epoch(self) -> int | None:
        return min(self.val, key=self.val.get) if self.val else None

    @property
    def tokens_per_s(self) -> float | None:
        if self.train_s and self.train_tokens is not None:
            return self.train_tokens / self.train_s
        return None


def read_history(path: str | Path) -> History:
    """Parse ``metrics.csv`` (CSVLogger: one row per logging call, blank cells elsewhere)."""
    path = Path(path)
    hist = History()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            if not epoch:
                continue
            epoch = int(float(epoch))

            def value(key: str) -> float | None:
                text = row.get(key)
                return float(text) if text not in (None, "") else None

            if (v := value("train/loss")) is not None:
                hist.train[epoch] = v
            if (v := value("val/loss")) is not None:
                hist.val[epoch] = v
            for key, attr in (("time/wall_s", "wall_s"), ("time/train_s", "train_s"),
                              ("time/train_tokens", "train_tokens")):
                if (v := value(key)) is not None:
                    setattr(hist, attr, v)  # cumulative: the last row wins
    return hist


# ---------------------------------------------------------------------------- figure and table


def plot_curves(histories: dict[str, History], path: Path) -> Path:
    """One figure: validation (solid) and training (dashed) loss per epoch, a colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, hist) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        if hist.val:
            epochs = sorted(hist.val)
            ax.plot([e + 1 for e in epochs], [hist.val[e] for e in epochs], "-o", ms=3, color=color,
                    label=f"{label} val")
        if hist.train:
            epochs = sorted(hist.train)
            ax.plot([e + 1 for e in epochs], [hist.train[e] for e in epochs], "--", color=color,
                    label=f"{label} train")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean NLL per character, nats)")
    ax.set_title("namegen: train and validation loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class Row:
    label: str
    evaluation: Evaluation
    history: History | None

    def cells(self) -> list:
        ev, hist, s = self.evaluation, self.history, self.evaluation.samples
        epochs = "n/a"
        wall = tokens = "n/a"
        if hist is not None:
            planned = ev.config.get("max_epochs")
            epochs = f"{hist.epochs}" if planned in (None, hist.epochs) else f"{hist.epochs} of {planned}"
            if hist.best_epoch is not None:
                epochs += f" (best {hist.best_epoch + 1})"
            wall = format_duration(hist.wall_s) if hist.wall_s is not None else "n/a"
            tokens = f"{hist.tokens_per_s:,.0f}" if hist.tokens_per_s is not None else "n/a"
        return [
            self.label,
            f"{ev.parameters:,}",
            epochs,
            f"{ev.likelihood.nll:.4f}",
            f"{ev.likelihood.ppl:.3f}",
            wall,
            tokens,
            f"{s.new:.1%}",
            f"{s.train_copy:.1%}",
            f"{s.duplicate:.1%}",
            f"{s.mean_len:.2f} ({s.data_mean_len:.2f})",
            f"{s.first_letter_tv:.3f}",
            ", ".join(ev.examples),
        ]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def recipe(config: dict) -> str:
    """The training recipe of a config, in one line."""
    keys = ("max_epochs", "lr", "batch_size", "dropout", "optimizer", "weight_decay", "lr_schedule", "grad_clip",
            "early_stopping_patience", "seed")
    return ", ".join(f"{k} {config[k]}" for k in keys if k in config)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row.cells()) + " |")
    return "\n".join(lines)


def write_report(rows: list[Row], out_dir: Path, figure: Path | None, num_samples: int, sample_seed: int) -> Path:
    first = rows[0].evaluation
    lines = [
        f"# namegen: sizes compared ({out_dir.name})",
        "",
        markdown_table(rows),
        "",
        "- best val/loss: mean NLL per character (nats) of each `best.ckpt` on the validation split it was "
        f"trained with, rebuilt from the data file and seed it records (first row: {first.evaluated_on}); "
        "perplexity is its exp.",
        "- epochs: epochs trained, and the epoch of the best val/loss; wall time: training epochs with their "
        "validation, from the run's `metrics.csv`; tokens/s: predicted training characters per second of "
        "training steps.",
        f"- sample statistics over {num_samples:,} names sampled at temperature 1 (seed {sample_seed}): "
        "new = in neither split of the data file; copies = reproduce a training name; duplicates = repeat an "
        "earlier sample; first-letter TV = total-variation distance to the data's first-letter distribution "
        f"(the same number of names drawn from the data itself gives {first.samples.first_letter_tv_noise:.3f}: "
        "sampling noise alone).",
        "",
        "Checkpoints:",
        "",
        *[f"- {row.label}: `{row.evaluation.checkpoint}` ({recipe(row.evaluation.config)})" for row in rows],
        "",
    ]
    if figure is not None:
        lines[2:2] = [f"![train and validation loss per epoch]({figure.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


README_START = "<!-- compare:start -->"
README_END = "<!-- compare:end -->"


def read_readme(readme: Path) -> tuple[str, int, int]:
    """README's text and where its compare markers are; a UserError when they are missing."""
    if not readme.is_file():
        raise UserError(f"--update-readme: {readme} not found")
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise UserError(f"--update-readme: {readme} lacks the lines {README_START} and {README_END} "
                        "that mark where the report goes")
    return text, start, end


def update_readme(readme: Path, rows: list[Row], report: Path, figure: Path | None, command: str) -> None:
    """Replace what lies between README's compare markers with the report's table and figure."""
    text, start, end = read_readme(readme)
    base = readme.resolve().parent

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            return str(path.resolve())

    block = [README_START, "", f"Produced by `{command}` ({rel(report)}):", ""]
    if figure is not None:
        block += [f"![train and validation loss per epoch]({rel(figure)})", ""]
    block += [markdown_table(rows), "", README_END]
    readme.write_text(text[:start] + "\n".join(block) + text[end + len(README_END):], encoding="utf-8")


def log_to_wandb(rows: list[Row], figure: Path | None, report: Path, start_run: dict | None) -> str | None:
    """Log the figure and the table to the active W&B run, or to a new one when ``start_run`` gives its
    settings. Returns the offline run's directory when one was started offline."""
    import wandb

    started = False
    if wandb.run is None:
        if start_run is None:
            return None
        wandb.init(**start_run)
        started = True
    run = wandb.run
    payload = {"compare/table": wandb.Table(columns=TABLE_COLUMNS, data=[row.cells() for row in rows])}
    if figure is not None:
        payload["compare/loss_curves"] = wandb.Image(str(figure))
    run.log(payload)
    run.summary["compare/report"] = str(report)
    offline_dir = None
    if started:
        if run.settings.mode in ("offline", "dryrun"):
            offline_dir = str(Path(run.dir).parent)
        wandb.finish()
    return offline_dir


# ---------------------------------------------------------------------------- the command


def compare_parser():
    from namegen.cli import Parser, _int_or_float, positive_int
    from namegen.config import SIZES

    p = Parser(
        prog="compare.py",
        description="Compare GRU sizes: evaluate checkpoints (--ckpt) and/or train sizes with their configs "
        "(--train), then write reports/<date>/report.md (a table, one row a run) and loss_curves.png (train and "
        "validation loss per epoch for every run on one figure, from the metrics.csv beside each checkpoint).",
    )
    p.add_argument("--ckpt", nargs="+", action="extend", default=[], metavar="PATH",
                   help="checkpoints to compare (best.ckpt of each run; metrics.csv must sit beside it for the "
                        "curves, wall time and tokens/s)")
    p.add_argument("--train", nargs="+", action="extend", default=[], metavar="SIZE", choices=SIZES,
                   help=f"sizes to train first with configs/<size>.yaml, then compare: {', '.join(SIZES)}")
    p.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                   help="row names, one per run in order (--ckpt runs first, then --train sizes); default: the "
                        "size each checkpoint records")
    p.add_argument("--runs-dir", default="checkpoints",
                   help="where --train writes each size's run, as <runs-dir>/<size> (default: checkpoints, as "
                        "train.py)")
    p.add_argument("--reports-dir", default="reports", help="the report goes to <reports-dir>/<date>/ (default: reports)")
    p.add_argument("--date", default=None,
                   help="name of the report's folder (default: today's UTC date, YYYY-MM-DD)")
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000,
                   help="samples per run for the statistics (default: 1000)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument("--device", default="cpu", help="device for evaluation and sampling: cpu or cuda (default: cpu)")
    t = p.add_argument_group("passed to training (--train only)")
    t.add_argument("--data", default=None, help="names file to train on (default: train.py's, data/names.txt)")
    t.add_argument("--max-epochs", type=positive_int, default=None, help="epochs (default: each config's)")
    t.add_argument("--limit-train-batches", type=_int_or_float, default=None,
                   help="batches per epoch (int) or fraction (float), for quick runs")
    t.add_argument("--limit-val-batches", type=_int_or_float, default=None,
                   help="validation batches (int) or fraction (float)")
    t.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto)")
    t.add_argument("--group-by-length", action="store_true", help="batch names of similar length together (faster)")
    t.add_argument("--overwrite", action="store_true", help="replace earlier runs in <runs-dir>/<size>")
    p.add_argument("--update-readme", nargs="?", const="README.md", default=None, metavar="README",
                   help="also put the table and figure into README between the lines <!-- compare:start --> and "
                        "<!-- compare:end --> (default file when given without a value: README.md)")
    w = p.add_argument_group("monitoring")
    w.add_argument("--logger", choices=("wandb", "csv", "none"), default="wandb",
                   help="wandb (default): training runs log to W&B and the figure and table go to a W&B run named "
                        "'compare'; csv: metrics.csv only, no W&B; none: no logs (no curves for trained runs)")
    w.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default) or online (needs `wandb login`)")
    return p


def _train_size(size: str, args) -> Path:
    from namegen.cli import train_parser
    from namegen.training import train

    argv = ["--model", size, "--out", str(Path(args.runs_dir) / size), "--accelerator", args.accelerator,
            "--logger", args.logger]
    for flag in ("data", "max_epochs", "limit_train_batches", "limit_val_batches", "wandb_mode"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    for flag in ("group_by_length", "overwrite"):
        if getattr(args, flag):
            argv.append(f"--{flag.replace('_', '-')}")
    best = train(train_parser().parse_args(argv))
    ckpt = Path(args.runs_dir) / size / "best.ckpt"
    if best is None or not ckpt.is_file():
        raise UserError(f"--train {size}: training validated nothing, so there is no best.ckpt to compare")
    return ckpt


def compare(args: argparse.Namespace) -> Path:
    """Train what ``--train`` asks for, evaluate every checkpoint, write the report; returns report.md's path."""
    if not args.ckpt and not args.train:
        raise UserError("nothing to compare: give --ckpt PATH ... and/or --train SIZE ...")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if args.update_readme:
        read_readme(Path(args.update_readme))  # fail before any training
    ckpts = [Path(c) for c in args.ckpt]
    for c in ckpts:
        if not c.is_file():
            raise UserError(f"--ckpt: {c} not found; give the path of a best.ckpt")
    n_runs = len(ckpts) + len(args.train)
    if args.labels is not None and len(args.labels) != n_runs:
        raise UserError(f"--labels: {len(args.labels)} given for {n_runs} run(s); give one per run, in order")
    ckpts += [_train_size(size, args) for size in args.train]

    rows: list[Row] = []
    histories: dict[str, History] = {}
    seen: set[str] = set()
    for i, ckpt in enumerate(ckpts):
        print(f"evaluating {ckpt} ...", flush=True)
        ev = evaluate_checkpoint(ckpt, num_samples=args.num_samples, seed=args.sample_seed, device=args.device,
                                 progress=args.num_samples >= 5000 or None)
        label = args.labels[i] if args.labels else ev.size
        if label in seen:
            label = f"{label} ({ckpt.parent})"
        seen.add(label)
        metrics = ckpt.parent / "metrics.csv"
        history = read_history(metrics) if metrics.is_file() else None
        if history is None:
            print(f"note: {metrics} not found: no curve, wall time or tokens/s for {label}", flush=True)
        else:
            histories[label] = history
        rows.append(Row(label, ev, history))

    date = args.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    out_dir = Path(args.reports_dir) / date
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_curves(histories, out_dir / "loss_curves.png") if histories else None
    report = write_report(rows, out_dir, figure, args.num_samples, args.sample_seed)

    start_run = None
    if args.logger == "wandb":
        from namegen.monitoring import WANDB_PROJECT, wandb_mode

        os.environ.setdefault("WANDB_SILENT", "true")
        runs_dir = Path(args.runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        start_run = dict(project=WANDB_PROJECT, name="compare", group="sizes", job_type="compare",
                         dir=str(runs_dir), mode=wandb_mode(args.wandb_mode))
    try:
        import wandb  # noqa: F401
    except ImportError:
        if start_run is not None:
            raise UserError("--logger wandb: the wandb package is not installed; use --logger csv") from None
    else:
        offline_dir = log_to_wandb(rows, figure, report, start_run)
        if offline_dir:
            print(f"W&B run saved offline; upload it with: wandb sync {offline_dir}")

    if args.update_readme:
        import shlex
        import sys

        command = "python compare.py " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
        update_readme(Path(args.update_readme), rows, report, figure, command)
        print(f"updated {args.update_readme}")
    print(markdown_table(rows))
    if figure is not None:
        print(f"figure: {figure}")
    print(f"report: {report}")
    return report


def compare_main(argv=None) -> int:
    import sys

    args = compare_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    compare(args)
    return 0
