"""Compare sizes: train (or take) checkpoints, evaluate them, and write ``reports/<date>/``.

``report.md`` has one table, a row per run; ``loss_curves.png`` plots every
run's per-epoch train and validation loss on one figure, read from the
``metrics.csv`` that training writes beside the checkpoints (so no W&B is
needed). When a W&B run is active, or ``--logger wandb`` asks for one, the
figure and table are logged to it too.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import wandb  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from namegen.api import check_device  # noqa: E402
from namegen.checkpoint import make_dirs, write_bytes  # noqa: E402
from namegen.errors import UserError, shown_path  # noqa: E402
from namegen.evaluate import Evaluation, evaluate_checkpoint  # noqa: E402
from namegen.loggers import WANDB_PROJECT, wandb_mode  # noqa: E402
from namegen.training import TrainOptions, train  # noqa: E402

TABLE_COLUMNS = [
    "size", "parameters", "epochs", "best val/loss", "perplexity", "wall time", "tokens/s",
    "new", "copies", "val matches", "copy excess", "duplicates", "mean length (data)", "first-letter TV",
    "10 sampled names",
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean NLL per character, nats)")
    ax.set_title("namegen: train and validation loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(path, png.getvalue(), about="reports_dir")


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
            f"{s.val_only:.1%}",
            f"{s.copy_excess:.2f}" if s.copy_excess == s.copy_excess else "n/a (no val match)",
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
    optional = ("variational_dropout", "weight_drop", "embd_dropout", "layer_dropout", "ema_decay", "split_seed")  # when set
    return ", ".join([f"{k} {config[k]}" for k in keys if k in config] +
                     [f"{k} {config[k]}" for k in optional if config.get(k)])


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row.cells()) + " |")
    return "\n".join(lines)


def write_report(rows: list[Row], out_dir: Path, figure: Path | None, num_samples: int, sample_seed: int) -> Path:
    """report.md (the table, the figure, what each column means, the machine), and beside it each run's
    sampled names (samples-<label>.txt) and evaluate.py figures (evaluation-<label>.json)."""
    for row in rows:
        slug = re.sub(r"[^\w.-]+", "-", row.label)
        _write_text(out_dir / f"samples-{slug}.txt", "\n".join(row.evaluation.names) + "\n")
        _write_text(out_dir / f"evaluation-{slug}.json", json.dumps(row.evaluation.to_dict(), indent=1) + "\n")
    lines = [f"# namegen: sizes compared ({out_dir.name})", "", markdown_table(rows), "",
             *_notes(rows, num_samples, sample_seed), "", "Checkpoints:", "",
             *[f"- {row.label}: `{row.evaluation.checkpoint}` ({recipe(row.evaluation.config)})" for row in rows], ""]
    if figure is not None:
        lines[2:2] = [f"![train and validation loss per epoch]({figure.name})", ""]
    return _write_text(out_dir / "report.md", "\n".join(lines))


def _write_text(path: Path, text: str, about: str = "reports_dir") -> Path:
    """One file of the report, atomically: a refused write is one line and leaves no temporary."""
    return write_bytes(path, text.encode("utf-8"), about=about)


def _notes(rows: list[Row], num_samples: int, sample_seed: int) -> list[str]:
    first = rows[0].evaluation
    return [
        "- best val/loss: mean NLL per character (nats) of each `best.ckpt` on the validation split it was "
        f"trained with, rebuilt from the data file and seed it records (first row: {first.evaluated_on}); "
        "perplexity is its exp. These are `evaluate.py`'s figures; each run's are in `evaluation-<size>.json`.",
        "- epochs: epochs trained, and the epoch of the best val/loss; wall time: training epochs with their "
        "validation, from the run's `metrics.csv`; tokens/s: predicted training characters per second of "
        "training steps.",
        f"- sample statistics over {num_samples:,} names sampled at temperature 1 (seed {sample_seed}; all of "
        "them in `samples-<size>.txt`): new = in neither split of the data file; copies = reproduce a training "
        "name; val matches = reproduce a validation name the model never trained on; copy excess = (copies / "
        "val matches) / (|train| / |val|), 1.00 meaning no more copying than generalisation explains (a model "
        "that learned the distribution and memorised nothing reproduces train and validation names in "
        "proportion to their counts); duplicates = repeat an earlier sample; first-letter TV = total-variation "
        "distance to the data's first-letter distribution (the same number of names drawn from the data "
        f"itself gives {first.samples.first_letter_tv_noise:.3f}: sampling noise alone).",
        f"- machine: {machine()}.",
    ]


def machine() -> str:
    """The CPU (and GPU) this report was made on, in a few words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return (f"{cpu}, {os.cpu_count()} logical cores, {gpu}; torch {torch.__version__} on "
            f"{torch.get_num_threads()} thread(s); load average {load} as the report was written "
            "(wall times stretch on a busy machine)")


README_START = "<!-- compare:start -->"
README_END = "<!-- compare:end -->"


def read_readme(readme: Path) -> tuple[str, int, int]:
    """README's text and where its compare markers are; a UserError when they are missing."""
    if not readme.is_file():
        raise UserError(f"{readme} not found", about="update_readme")
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise UserError(f"{readme} lacks the lines {README_START} and {README_END} "
                        "that mark where the report goes", about="update_readme")
    return text, start, end


def update_readme(readme: Path, rows: list[Row], report: Path, figure: Path | None, command: str) -> None:
    """Replace what lies between README's compare markers with the report's table and figure."""
    text, start, end = read_readme(readme)
    base = readme.resolve().parent

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            return shown_path(path)

    block = [README_START, "", f"Produced by `{command}` ({rel(report)}):", ""]
    if figure is not None:
        block += [f"![train and validation loss per epoch]({rel(figure)})", ""]
    block += [markdown_table(rows), "", README_END]
    _write_text(readme, text[:start] + "\n".join(block) + text[end + len(README_END):], about="update_readme")


def log_to_wandb(rows: list[Row], figure: Path | None, report: Path, start_run: dict | None) -> str | None:
    """Log the figure and the table to the active W&B run, or to a new one when ``start_run`` gives its
    settings. Returns the offline run's directory when one was started offline."""
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


# ---------------------------------------------------------------------------- the comparison


@dataclass
class CompareOptions:
    ckpt: list[Path] = field(default_factory=list)  # checkpoints to compare as they are
    train: list[str] = field(default_factory=list)  # sizes to train first
    labels: list[str] | None = None  # row names, --ckpt runs first, then the trained sizes
    runs_dir: Path = Path("checkpoints")  # trained sizes go to <runs_dir>/<size>
    reports_dir: Path = Path("reports")
    date: str | None = None  # the report's folder name; default today's UTC date
    num_samples: int = 1000
    sample_seed: int = 0
    device: str = "cpu"
    training: TrainOptions = field(default_factory=TrainOptions)  # template for each trained size
    update_readme: Path | None = None
    command: str = "python compare.py"  # how the report was made, for README


def compare(opts: CompareOptions) -> Path:
    """Train what ``train`` asks for, evaluate every checkpoint, write the report; returns report.md's path."""
    ckpts = _checkpoints(opts)
    rows, histories = _rows(opts, ckpts)
    out_dir = opts.reports_dir / (opts.date or dt.datetime.now(dt.timezone.utc).date().isoformat())
    make_dirs(out_dir, about="reports_dir")
    figure = plot_curves(histories, out_dir / "loss_curves.png") if histories else None
    report = write_report(rows, out_dir, figure, opts.num_samples, opts.sample_seed)
    _log_to_wandb(opts, rows, figure, report)
    if opts.update_readme:
        update_readme(opts.update_readme, rows, report, figure, opts.command)
        print(f"updated {opts.update_readme}")
    print(markdown_table(rows))
    if figure is not None:
        print(f"figure: {figure}")
    print(f"report: {report}")
    return report


def _checkpoints(opts: CompareOptions) -> list[Path]:
    """Check everything that can be checked before training; then train the sizes asked for."""
    if not opts.ckpt and not opts.train:
        raise UserError("nothing to compare: give --ckpt PATH ... and/or --train SIZE ...")
    check_device(opts.device)
    if opts.update_readme:
        read_readme(opts.update_readme)  # fail before any training
    for c in opts.ckpt:
        if not Path(c).is_file():
            raise UserError(f"{c} not found; give the path of a best.ckpt", about="ckpt")
    n_runs = len(opts.ckpt) + len(opts.train)
    if opts.labels is not None and len(opts.labels) != n_runs:
        raise UserError(f"{len(opts.labels)} given for {n_runs} run(s); give one per run, in order", about="labels")
    return [Path(c) for c in opts.ckpt] + [_train_size(size, opts) for size in opts.train]


def _train_size(size: str, opts: CompareOptions) -> Path:
    out = opts.runs_dir / size
    result = train(dataclasses.replace(opts.training, model=size, out=out))
    if result.best_path is None or not result.best_path.is_file():
        raise UserError(f"{size}: training validated nothing, so there is no best.ckpt to compare", about="train")
    return result.best_path


def _rows(opts: CompareOptions, ckpts: list[Path]) -> tuple[list[Row], dict[str, History]]:
    rows: list[Row] = []
    histories: dict[str, History] = {}
    seen: set[str] = set()
    for i, ckpt in enumerate(ckpts):
        print(f"evaluating {shown_path(ckpt)} ...", flush=True)
        ev = evaluate_checkpoint(ckpt, num_samples=opts.num_samples, seed=opts.sample_seed, device=opts.device,
                                 progress=opts.num_samples >= 5000 or None)
        label = opts.labels[i] if opts.labels else ev.size
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
    return rows, histories


def _log_to_wandb(opts: CompareOptions, rows: list[Row], figure: Path | None, report: Path) -> None:
    """Into the active W&B run, or a new run named 'compare' when training logs to W&B."""
    start_run = None
    if opts.training.logger == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        opts.runs_dir.mkdir(parents=True, exist_ok=True)
        start_run = dict(project=WANDB_PROJECT, name="compare", group="sizes", job_type="compare",
                         dir=str(opts.runs_dir), mode=wandb_mode(opts.training.wandb_mode))
    offline_dir = log_to_wandb(rows, figure, report, start_run)
    if offline_dir:
        print(f"W&B run saved offline; upload it with: wandb sync {offline_dir}")
