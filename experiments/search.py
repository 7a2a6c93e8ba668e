"""Hyperparameter search over the training recipe of one size: resumable, with its results in a report.

    python experiments/search.py --size large --grid lr=1e-3,2e-3 dropout=0.3,0.4 weight_decay=0.1 \\
        --max-epochs 30 --runs-dir runs/search --results reports/2026-12-01/search-large.md
    python experiments/search.py ...same flags... --dry-run   # the planned trials and their state; writes nothing

Method
------
- Grid over the recipe. ``--grid KEY=V1,V2,...`` lists values per key; the trials are
  the Cartesian product, in the order given. A trial is the size's config
  (``configs/<size>.yaml``, or ``--config FILE``) with those values
  replaced (``Config.replace``), plus ``--max-epochs`` / ``--early-stopping-patience``
  for every trial. Only recipe keys can be searched: lr, dropout, weight_decay,
  grad_clip, max_epochs, batch_size, early_stopping_patience, lr_schedule. The
  architecture (n_layer, n_embd, n_hidden, layer_norm) is refused, so every trial
  has the size's parameter count; seed is refused too, because it also draws the
  train/validation split.
- Same data, same split. Every trial trains on the same names file with the
  config's seed, so on the same fixed 80/20 train/validation split (and the same
  initialisation seed).
- Training. Each trial is a plain ``namegen.training.train`` call in this process
  (metrics.csv only, no W&B; one device) into ``<runs-dir>/<size>/<tag>``, where the
  tag spells the grid point (``lr=0.001_dropout=0.3_weight_decay=0.1``). The trial's
  config is written there as ``<size>.yaml`` (train.py --model accepts it) and the
  run's settings as ``trial.json``.
- Selection. Trials are ranked by best val/loss: the lowest mean NLL per character
  on the validation split over the trial's epochs (the epoch its best.ckpt holds).
- Results. After every trial, ``--results`` (markdown) and a .json beside it are
  rewritten: one row per finished trial, sorted by best val/loss, the best marked;
  the command line, dates, machine (CPU, cores, GPU), precision, data file, and the
  1-minute load average before and after each trial. One line is printed per trial.

Resuming
--------
After each trial, ``<run dir>/result.json`` records its summary. Running the same
command again skips every trial with a result.json (its result is reused, nothing is
retrained), continues a trial that has a last.ckpt but no result (``resume="last"``:
epoch, optimizer and schedule carry on, metrics.csv is continued), recovers a trial
whose last.ckpt already holds all its epochs (or an early stop) but was killed before
its result.json was written, and starts the rest. A run dir whose trial.json or
result.json records different settings (another max_epochs, data file, precision,
batch limits) is refused rather than mixed in: use another --runs-dir.

Caveats
-------
- The validation split selects the trial and also gives the val/loss reported for
  it. The winner's val/loss is therefore optimistic (the minimum over trials, and
  within a trial over epochs, of noisy estimates); there is no separate test split
  here. Confirm the winner on held-out data or with other seeds before quoting it.
- One seed per trial: seed-to-seed variation is not measured, so differences between
  trials smaller than it are not evidence.
- The train-val gap (val/loss minus train/loss at the best epoch) is a rough
  overfitting signal: train/loss is the mean over the epoch with dropout on, val/loss
  is measured after the epoch without dropout, so trials with different dropout are
  not comparable on it.
- Wall time is the runs' own clock (epochs with their validation, summed over
  resumptions); on a shared machine it depends on the load, which is recorded.
- ``--limit-train-batches`` / ``--limit-val-batches`` are for smoke runs; a report made
  with them says so and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python experiments/search.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from namegen.checkpoint import atomic_write, read_training_checkpoint  # noqa: E402
from namegen.cli import Parser, int_or_float, positive_int  # noqa: E402
from namegen.compare import format_duration, read_history  # noqa: E402
from namegen.config import SIZES, Config, load_config  # noqa: E402
from namegen.data import DEFAULT_DATA, Vocab, read_names, sha256_of, split_names  # noqa: E402
from namegen.errors import Interrupted, UserError  # noqa: E402
from namegen.evaluate import shown_data  # noqa: E402
from namegen.model import GRULanguageModel  # noqa: E402
from namegen.training import TrainOptions, train  # noqa: E402

#: recipe keys the grid may vary, with the type of their values
SEARCHABLE = {"lr": float, "dropout": float, "weight_decay": float, "grad_clip": float, "max_epochs": int,
              "batch_size": int, "early_stopping_patience": int, "lr_schedule": str}
ARCHITECTURE = ("n_layer", "n_embd", "n_hidden", "layer_norm")
ALWAYS_SHOWN = ("lr", "dropout", "weight_decay")  # table columns; other searched keys get one too
INTERRUPTED = 130


@dataclass
class Trial:
    tag: str  # the grid point, as a directory name
    overrides: dict  # key -> value of the grid point
    config: Config  # the base config with the overrides
    out: Path  # <runs-dir>/<size>/<tag>
    spec: dict  # what must match for a run in `out` to be reused or resumed


# ----------------------------------------------------------------------------- the plan


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["lr=1e-3,2e-3", "dropout=0.3"]`` -> ``{"lr": [0.001, 0.002], "dropout": [0.3]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... such as lr=1e-3,2e-3")
        check_key(key)
        if key in grid:
            raise UserError(f"--grid: {key} is given twice; list all its values once, as {key}=V1,V2")
        parsed = [parse_value(key, text.strip()) for text in values.split(",")]
        repeated = sorted({format_value(v) for v in parsed if parsed.count(v) > 1})
        if repeated:
            raise UserError(f"--grid: {key} lists {', '.join(repeated)} more than once")
        grid[key] = parsed
    return grid


def check_key(key: str) -> None:
    """Refuse anything but a recipe key, in one line that says why."""
    if key in ARCHITECTURE:
        raise UserError(f"--grid: {key} is architecture, not recipe: the search keeps each size's parameter count, "
                        f"so {', '.join(ARCHITECTURE)} cannot be searched")
    if key == "seed":
        raise UserError("--grid: seed also draws the train/validation split, which must be the same for every "
                        "trial, so it cannot be searched")
    if key not in SEARCHABLE:
        raise UserError(f"--grid: {key} cannot be searched; the recipe keys that can: {', '.join(SEARCHABLE)}")


def parse_value(key: str, text: str):
    kind = SEARCHABLE[key]
    try:
        value = kind(text)
    except ValueError:
        raise UserError(f"--grid: {key}={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise UserError(f"--grid: {key}={text!r} is not a finite number")
    if kind is str and not value:
        raise UserError(f"--grid: {key} has an empty value")
    return value


def format_value(value) -> str:
    """Exact and short: ``0.001``, ``0.0003``, ``1e-05``, ``30``, ``cosine``."""
    return repr(value) if isinstance(value, float) else str(value)


def trial_tag(overrides: dict) -> str:
    return "_".join(f"{key}={format_value(value)}" for key, value in overrides.items()) or "base"


def plan_trials(base: Config, grid: dict[str, list], fixed: dict, runs_dir: Path, size: str,
                setup: dict) -> list[Trial]:
    """One Trial per grid point; every config is validated before anything trains."""
    both = sorted(set(grid) & set(fixed))
    if both:
        raise UserError(f"{', '.join(both)}: given both in --grid and as a flag; give each key once")
    try:
        base = base.replace(**fixed)
    except UserError as exc:
        raise UserError(f"--max-epochs/--early-stopping-patience: {exc}") from None
    trials = []
    for point in itertools.product(*grid.values()):
        overrides = dict(zip(grid, point))
        tag = trial_tag(overrides)
        try:
            config = base.replace(**overrides)
        except UserError as exc:
            raise UserError(f"--grid: trial {tag}: {exc}") from None
        spec = {"size": size, "overrides": overrides, "config": config.to_dict(), **setup}
        trials.append(Trial(tag, overrides, config, runs_dir / size / tag, json.loads(json.dumps(spec))))
    return trials


# ----------------------------------------------------------------------------- what is in a run directory


def trial_status(trial: Trial) -> tuple[str, object]:
    """``("done", result)``, ``("resume", epochs in last.ckpt)``, ``("recover", epochs)`` (finished
    but killed before result.json) or ``("new", None)``; a UserError when the run dir holds another trial."""
    result_path, spec_path, last = (trial.out / n for n in ("result.json", "trial.json", "last.ckpt"))
    if result_path.is_file():
        result = read_json(result_path)
        check_same(trial.spec, result.get("spec"), result_path)
        return "done", result
    if spec_path.is_file():
        check_same(trial.spec, read_json(spec_path), spec_path)
    if not last.is_file():
        return "new", None
    ckpt = read_training_checkpoint(last)
    if not spec_path.is_file():  # a run not started by this script: its config must at least be the trial's
        check_same(trial.spec["config"], ckpt["namegen"]["config"], last)
    epochs = int(ckpt["epoch"]) + 1
    return ("recover" if epochs >= trial.config.max_epochs or stopped_early(ckpt) else "resume"), epochs


def stopped_early(ckpt: dict) -> bool:
    """Whether the EarlyStopping state saved in a checkpoint had run out of patience."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("EarlyStopping") and isinstance(state, dict):
            if state.get("patience") and state.get("wait_count", 0) >= state["patience"]:
                return True
    return False


def check_same(expected: dict, recorded, where: Path) -> None:
    if recorded == expected:
        return
    recorded = recorded if isinstance(recorded, dict) else {}
    flat_e, flat_r = flatten(expected), flatten(recorded)
    diffs = [f"{k} {flat_r.get(k, 'unset')} (now {flat_e.get(k, 'unset')})"
             for k in sorted(set(flat_e) | set(flat_r)) if flat_e.get(k) != flat_r.get(k)]
    raise UserError(f"{where} records a different trial ({'; '.join(diffs[:4])}); rerun with the settings it was "
                    f"made with, or give another --runs-dir", about="runs_dir")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc}); delete it to redo that trial") from None


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------- one trial


def run_trial(trial: Trial, kind: str, args: argparse.Namespace, data: Path, machine: dict) -> dict:
    """Train (``new``), continue (``resume``) or only summarize (``recover``) a trial; write its result.json."""
    trial.out.mkdir(parents=True, exist_ok=True)
    write_json(trial.out / "trial.json", trial.spec)
    size_yaml = trial.out / f"{trial.spec['size']}.yaml"  # its stem becomes the checkpoint's size
    if kind == "new":
        text = yaml.safe_dump(trial.config.to_dict(), sort_keys=False)
        atomic_write(size_yaml, lambda f: f.write(f"# search trial {trial.tag}\n{text}".encode("utf-8")))
    load_before, start = os.getloadavg(), time.perf_counter()
    if kind != "recover":
        train(TrainOptions(
            model=str(size_yaml) if kind == "new" else None, resume="last" if kind == "resume" else None,
            data=data, out=trial.out, accelerator=args.accelerator, devices=1, precision=args.precision,
            limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
            logger="csv",
        ))
    result = summarize(trial, kind)
    trained = kind != "recover"  # a recovered trial trained in an earlier call, under a load not recorded
    result.update(seconds_this_call=round(time.perf_counter() - start, 2),
                  load_before=list(load_before) if trained else None,
                  load_after=list(os.getloadavg()) if trained else None,
                  finished_utc=utc_now(), machine=machine, spec=trial.spec)
    write_json(trial.out / "result.json", result)
    return result


def summarize(trial: Trial, kind: str) -> dict:
    """A finished trial's numbers, from the metrics.csv its run wrote."""
    hist = read_history(trial.out / "metrics.csv")
    best = hist.best_epoch
    last_train = hist.train[max(hist.train)] if hist.train else None
    gap = hist.val[best] - hist.train[best] if best is not None and best in hist.train else None
    return {
        "tag": trial.tag,
        "overrides": trial.overrides,
        "epochs": hist.epochs,
        "max_epochs": trial.config.max_epochs,
        "stopped_early": hist.epochs < trial.config.max_epochs,
        "best_val_loss": None if best is None else hist.val[best],
        "best_epoch": None if best is None else best + 1,  # 1-based, as printed everywhere else
        "final_train_loss": last_train,
        "gap_at_best": gap,  # val/loss - train/loss at the best epoch
        "wall_s": hist.wall_s,
        "how": {"new": "trained", "resume": "resumed", "recover": "recovered"}[kind],  # see describe()
        "run_dir": str(trial.out),
        "best_ckpt": str(trial.out / "best.ckpt") if best is not None else None,
    }


def trial_line(i: int, n: int, result: dict, note: str = "") -> str:
    """The one line printed per finished trial."""
    def num(key: str, spec: str) -> str:
        return "n/a" if result.get(key) is None else format(result[key], spec)
    epochs = f"{result['epochs']}" + (" (stopped early)" if result["stopped_early"] else "")
    load = load_text(result)
    wall = "n/a" if result["wall_s"] is None else format_duration(result["wall_s"])
    return (f"search [{i}/{n}] {result['tag']}: best val/loss {num('best_val_loss', '.4f')} at epoch "
            f"{result['best_epoch'] or 'n/a'} of {epochs}; final train loss {num('final_train_loss', '.4f')}; "
            f"gap {num('gap_at_best', '+.4f')}; wall {wall}; load {load}{note}")


def load_text(result: dict) -> str:
    if not result.get("load_before") or not result.get("load_after"):
        return "n/a"
    return f"{result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}"


# ----------------------------------------------------------------------------- the report


def sort_key(result: dict):
    value = result.get("best_val_loss")
    return (value is None, value if value is not None else 0.0, result["tag"])


def write_results(path: Path, header: dict, trials: list[Trial], results: dict[str, dict]) -> None:
    """(Re)write the markdown table and the JSON beside it: finished trials sorted by best val/loss."""
    rows = sorted(results.values(), key=sort_key)
    best = rows[0]["tag"] if rows and rows[0].get("best_val_loss") is not None else None
    doc = {**header, "updated_utc": utc_now(), "best": best, "finished": len(rows),
           "pending": [t.tag for t in trials if t.tag not in results], "trials": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path.with_suffix(".json"), doc)
    text = markdown(doc)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


TABLE_TAIL = ["epochs", "best val/loss", "best epoch", "final train loss", "gap at best (val - train)",
              "wall time", "load before -> after", "how", "finished (UTC)"]


def table(doc: dict) -> list[str]:
    keys = list(ALWAYS_SHOWN) + [k for k in doc["grid"] if k not in ALWAYS_SHOWN]
    lines = ["| | trial | " + " | ".join(keys + TABLE_TAIL) + " |", "|" + "---|" * (len(keys) + len(TABLE_TAIL) + 2)]
    for r in doc["trials"]:
        config = r["spec"]["config"]
        epochs = f"{r['epochs']}" + (f" of {r['max_epochs']} (stopped early)" if r["stopped_early"] else "")
        cells = [
            "**best**" if r["tag"] == doc["best"] else "", f"`{r['tag']}`",
            *[format_value(config[k]) for k in keys], epochs,
            "n/a" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f}",
            str(r["best_epoch"] or "n/a"),
            "n/a" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}",
            "n/a" if r["gap_at_best"] is None else f"{r['gap_at_best']:+.4f}",
            "n/a" if r["wall_s"] is None else format_duration(r["wall_s"]),
            load_text(r), r["how"], r["finished_utc"][:16].replace("T", " "),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(doc: dict) -> str:
    m, d = doc["machine"], doc["data"]
    grid = " x ".join(f"{k} in {{{', '.join(format_value(v) for v in vs)}}}" for k, vs in doc["grid"].items())
    fixed = ", ".join(f"{k} {v}" for k, v in doc["fixed"].items()) or "none"
    shipped = (f"configs/{doc['size']}.yaml", f"namegen/configs/{doc['size']}.yaml")  # before and after the move
    own = "" if doc["base_config"] in shipped else f" (not the {doc['size']} config)"
    lines = [
        f"# Hyperparameter search: {doc['size']}", "",
        f"Produced by `{doc['command']}` (started {doc['started_utc']}, updated {doc['updated_utc']}); "
        f"{doc['finished']} of {doc['finished'] + len(doc['pending'])} trials finished.", "",
        f"- Machine: {m['cpu']}, {m['cores']} logical cores; GPU: {m['gpu']}; torch {m['torch']}. "
        f"Accelerator {doc['accelerator']}, precision {doc['precision']}.",
        f"- Data: `{d['path']}` (sha256 {d['sha256'][:12]}, {d['names']:,} names): {d['train']:,} train / "
        f"{d['val']:,} validation names, the split drawn by seed {d['seed']}, the same for every trial.",
        f"- Base config: `{doc['base_config']}`{own}, {doc['parameters']:,} parameters in every trial; "
        f"grid: {grid or 'none (the base config alone)'}; set for every trial: {fixed}. "
        f"Runs in `{doc['runs_dir']}/<trial>`.",
    ]
    if doc["limits"]:
        limits = ", ".join(f"{k} {v}" for k, v in doc["limits"].items())
        lines.append(f"- **Smoke run** ({limits}): epochs were cut short; these numbers are not a search result.")
    if doc["pending"]:
        lines.append(f"- Not finished yet: {', '.join(f'`{t}`' for t in doc['pending'])}.")
    lines += ["", *table(doc), "", *notes(doc)]
    return "\n".join(lines) + "\n"


def notes(doc: dict) -> list[str]:
    lines = []
    if doc["best"] is not None:
        run = next(r for r in doc["trials"] if r["tag"] == doc["best"])
        lines += [f"Best: `{run['tag']}`, best val/loss {run['best_val_loss']:.4f} at epoch {run['best_epoch']}; "
                  f"checkpoint `{run['best_ckpt']}`, config `{run['run_dir']}/{doc['size']}.yaml`.", ""]
    return lines + [
        "- best val/loss: the lowest mean NLL per character (nats) on the validation split over the trial's "
        "epochs (what its best.ckpt holds); rows are sorted by it. gap: val/loss minus train/loss at that epoch "
        "(train/loss is the epoch's running mean with dropout on, so it is rough, and not comparable across "
        "dropout values). wall time: the run's own clock, epochs with validation, summed over resumptions. load: "
        "1-minute load average before and after the trial (of its last part when resumed; n/a when recovered), on a "
        "machine that may be shared. how: trained in one go, resumed from its last.ckpt after a kill, or recovered "
        "(its training had finished but its result was not yet recorded).",
        "- Caveat: the same validation split selects the trial and reports its val/loss, so the best row is "
        "optimistic (a minimum over trials and epochs of noisy estimates); there is no separate test split. One "
        "seed per trial: differences smaller than seed-to-seed variation (not measured here) are not evidence.",
    ]


# ----------------------------------------------------------------------------- command line


def machine_info() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> Parser:
    p = Parser(prog="experiments/search.py", description=(
        "Grid search over the training recipe of one size; resumable (rerun the same command after a kill); "
        "writes a markdown table and a JSON file of the results. See the module docstring for the method."))
    p.add_argument("--size", required=True, choices=SIZES, help="the size whose config is the base of every trial")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="base config file instead of configs/<size>.yaml (runs still go to "
                        "<runs-dir>/<size>)")
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help=f"values to try per recipe key; trials are their product. Keys: {', '.join(SEARCHABLE)}")
    p.add_argument("--max-epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of every trial (default: the config's)")
    p.add_argument("--early-stopping-patience", type=non_negative_int, default=None, metavar="N",
                   help="stop a trial after N epochs without a better val/loss, 0 = off (default: the config's)")
    p.add_argument("--runs-dir", default="runs/search",
                   help="trials go to <runs-dir>/<size>/<tag> (default: runs/search)")
    p.add_argument("--results", default=None, metavar="MD",
                   help="markdown table to (re)write after each trial, with a .json beside it "
                        "(default: reports/<UTC date>/search-<size>.md)")
    p.add_argument("--data", default=None, help="names file (default: the packaged names.txt)")
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto); one device per trial")
    p.add_argument("--precision", default=None, help="32-true, bf16-mixed, ... (default: Lightning's, 32-true)")
    p.add_argument("--limit-train-batches", type=int_or_float, default=None,
                   help="smoke runs only: batches per epoch (int) or fraction (float)")
    p.add_argument("--limit-val-batches", type=int_or_float, default=None,
                   help="smoke runs only: validation batches (int) or fraction (float)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned trials and what each would do (train, resume, reuse); write nothing")
    return p


def prepare(args: argparse.Namespace, argv: list[str]) -> tuple[list[Trial], dict, Path]:
    """The trials and the report's header, every input checked before anything trains."""
    base_config = Path(args.config) if args.config else Path("configs") / f"{args.size}.yaml"
    base = load_config(args.config or args.size)
    data = Path(args.data).resolve() if args.data else DEFAULT_DATA
    names = read_names(data)
    train_names, val_names = split_names(names, base.seed)
    limits = {k: getattr(args, k) for k in ("limit_train_batches", "limit_val_batches") if getattr(args, k) is not None}
    setup = {"data_sha256": sha256_of(data), "precision": args.precision, "limits": limits}
    fixed = {k: getattr(args, k) for k in ("max_epochs", "early_stopping_patience") if getattr(args, k) is not None}
    grid = parse_grid(args.grid)
    trials = plan_trials(base, grid, fixed, Path(args.runs_dir), args.size, setup)
    header = {
        "command": shlex.join(["python", "experiments/search.py", *argv]), "started_utc": utc_now(),
        "size": args.size, "base_config": str(base_config), "grid": grid, "fixed": fixed, "limits": limits,
        "runs_dir": str(Path(args.runs_dir) / args.size), "machine": machine_info(),
        "parameters": GRULanguageModel.from_config(base, len(Vocab.from_names(names))).num_parameters(),
        "accelerator": args.accelerator, "precision": args.precision or "32-true (Lightning's default)",
        "data": {"path": shown_data(data), "sha256": setup["data_sha256"], "names": len(names), "train": len(train_names),
                 "val": len(val_names), "seed": base.seed},
    }
    return trials, header, data


def describe(kind: str, detail) -> str:
    if kind == "done":
        value = detail.get("best_val_loss")
        return "finished: reused" + ("" if value is None else f" (best val/loss {value:.4f})")
    if kind == "resume":
        return f"resumes from last.ckpt after epoch {detail}"
    if kind == "recover":
        return f"finished ({detail} epochs in last.ckpt) but unrecorded: summarized, not retrained"
    return "trains from scratch"


def describe_how(result: dict) -> str:
    return {"trained": "trained", "resumed": "resumed from last.ckpt",
            "recovered": "recovered from last.ckpt, not retrained"}[result["how"]]


def run_search(args: argparse.Namespace, argv: list[str]) -> int:
    trials, header, data = prepare(args, argv)
    statuses = [trial_status(t) for t in trials]
    results_path = Path(args.results or f"reports/{utc_now()[:10]}/search-{args.size}.md")
    n = len(trials)
    if args.dry_run:
        print(f"search: {n} trial(s) of {args.size} in {header['runs_dir']}; results would go to {results_path}")
        for i, (trial, (kind, detail)) in enumerate(zip(trials, statuses), 1):
            print(f"  [{i}/{n}] {trial.tag}: {describe(kind, detail)}")
        return 0
    results = {t.tag: detail for t, (kind, detail) in zip(trials, statuses) if kind == "done"}
    write_results(results_path, header, trials, results)
    for i, (trial, (kind, detail)) in enumerate(zip(trials, statuses), 1):
        if kind == "done":
            print(trial_line(i, n, detail, note=" (finished earlier: reused, not retrained)"), flush=True)
            continue
        try:
            results[trial.tag] = run_trial(trial, kind, args, data, header["machine"])
        except Interrupted:
            write_results(results_path, header, trials, results)
            print(f"search: interrupted in trial {trial.tag}; {len(results)} of {n} trials finished. Run the same "
                  f"command again to continue (finished trials are reused, this one resumes from its last.ckpt "
                  f"if it has one)", file=sys.stderr)
            return INTERRUPTED
        write_results(results_path, header, trials, results)
        print(trial_line(i, n, results[trial.tag], note=f" ({describe_how(results[trial.tag])})"), flush=True)
    best = min(results.values(), key=sort_key)
    if best["best_val_loss"] is None:
        print(f"search: no trial ran a validation, so none is best; results in {results_path}")
    else:
        print(f"search: best {best['tag']} (best val/loss {best['best_val_loss']:.4f}); results in {results_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Each run dir holds trial.json and the trial's YAML before training starts; Lightning warns about any
    # non-empty directory (its CSV writer removes a stale metrics.csv, which is what we want here).
    for what in ("Experiment logs directory", "Checkpoint directory"):
        warnings.filterwarnings("ignore", message=rf"{what} .* exists and is not empty")
    try:
        return run_search(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("search: interrupted; run the same command again to continue", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
