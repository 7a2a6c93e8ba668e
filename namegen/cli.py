"""The command line: ``namegen {train,sample,evaluate,compare,tune,convert,export}`` (also
``python -m namegen``; ``train.py``, ``sample.py``, ``evaluate.py`` and ``compare.py``
run one subcommand each).

The only module that knows argv, flags and exit codes. Library code raises
``UserError`` naming the file or value (and ``about`` which input); here it
becomes one line, ``error: --flag: ...``, and exit status 2. Exit statuses:
0 done, 1 done but short (no validation ran; fewer names than asked), 2 bad
input, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import shlex
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from namegen.api import NameGenerator, NotEnoughNames
from namegen.checkpoint import resolve_checkpoint
from namegen.config import SIZES
from namegen.errors import DeviceUnavailable, Interrupted, PeerStopped, UserError, WriteFailed
from namegen.evaluate import evaluate_checkpoint, format_evaluation
from namegen.export import export_onnx
from namegen.model import compile_model
from namegen.notebook import START_NOTE, convert
from namegen.web import ORT_WEB_VERSION, export_web

INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT (128 + 2)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (not usage + error) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def trial_count(text: str) -> int:
    """A count of trials, 0 or more."""
    return 0 if text.strip() == "0" else positive_int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def int_or_float(text: str):
    """A count of batches (int) or a fraction of them (float in [0, 1])."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or a fraction, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"a fraction must be between 0.0 and 1.0, got {text}")
        return value
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more batches, got {value}")
    return value


def devices(text: str):
    if text == "auto":
        return text
    if text.isdigit() or text == "-1":
        return int(text)
    return text


# ----------------------------------------------------------------------------- errors as one line

#: which flag each input of a UserError (its ``about``) is given by, per command
FLAGS = {
    "data": "--data", "ckpt": "--ckpt", "resume": "--resume", "model": "--model", "out": "--out",
    "logger": "--logger", "labels": "--labels", "update_readme": "--update-readme", "train": "--train",
    "wandb_mode": "--wandb-mode", "precision": "--precision", "space": "--space", "storage": "--storage",
    "limit_val_batches": "--limit-val-batches", "web": "--web", "init_from": "--init-from",
}
COMMAND_FLAGS = {"sample": {"train_data": "--data"}, "evaluate": {"train_data": "--train-data"},
                 "export": {"train_data": "--data"}}
#: argument names of the Python API that sample.py spells as flags
PARAMETERS = {"max_len": "--max-len", "min_len": "--min-len", "top_k": "--top-k", "temperature": "--temperature",
              "prefix": "--prefix", "num_samples": "--num-samples"}


#: where else to write, per input a refused write is about (and per command where it differs)
ELSEWHERE = {"out": "--out DIR", "out_file": "--out FILE", "reports_dir": "--reports-dir DIR",
             "update_readme": "--update-readme FILE", "dst": "another OUT.ckpt"}
COMMAND_ELSEWHERE = {"compare": {"out": "--runs-dir DIR"}, "tune": {"out": "--runs-dir DIR", "storage": "--storage"}}


def write_failed_line(exc: WriteFailed, command: str) -> str:
    """``error: cannot write FILE: <the OS's reason>; <what to do>``."""
    where = COMMAND_ELSEWHERE.get(command, {}).get(exc.about) or ELSEWHERE.get(exc.about, "another path")
    if exc.disk_full:
        hint = f"free some space or pass {where} on another disk"
    elif exc.read_only:
        hint = f"pass {where} on a writable disk"
    else:
        hint = f"pass {where} where files can be written"
    return f"error: {exc}; {hint}"


def error_line(exc: UserError, command: str, args: argparse.Namespace | None) -> str:
    """``exc`` as the one line a user sees, naming the flag of the input it is about."""
    message, about = str(exc), exc.about
    if isinstance(exc, WriteFailed):
        return write_failed_line(exc, command)
    if isinstance(exc, DeviceUnavailable):
        flag = "--accelerator" if about == "accelerator" else "--device"
        value = getattr(args, about, "cuda") if args is not None else "cuda"
        hint = f"{flag} cpu (or auto)" if about == "accelerator" else f"{flag} cpu"
        return f"error: {flag} {value}: {message}; use {hint}"
    if about == "force":
        return f"error: {message}; pass --force to replace it"
    if about in PARAMETERS or about == "sampling":
        for name, flag in PARAMETERS.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        return f"error: {message}"
    flag = COMMAND_FLAGS.get(command, {}).get(about) or FLAGS.get(about)
    return f"error: {flag}: {message}" if flag else f"error: {message}"


def run(command: str, handler, args: argparse.Namespace) -> int:
    """Call ``handler(args)``; a UserError becomes one line and exit status 2, and a Ctrl-C
    outside training one line and exit status 130."""
    keep_freed_memory()
    freeze_imports()
    try:
        return handler(args) or 0
    except UserError as exc:
        print(error_line(exc, command, args), file=sys.stderr)
        return 2
    except PeerStopped:  # another process of this distributed run stopped first and said why
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def keep_freed_memory() -> bool:
    """Have glibc keep the memory this process frees for its next allocations; True where it was set.

    By default glibc hands every freed block over a few hundred kilobytes back to the system, so a
    training step's temporaries (a layer's gates: about 1.4 MB for medium) come back each step as fresh
    pages the kernel must zero: thousands of page faults a step, about a tenth of small's epoch on a CPU.
    With the thresholds raised they are reused; nothing else changes. Only namegen's own processes (the
    command line), only with glibc, and not where the user set glibc's MALLOC_* variables.
    """
    if sys.platform != "linux" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # malloc.h's M_* codes
    return all(mallopt(code, value) == 1 for code, value in
               ((mmap_threshold, 32 << 20), (trim_threshold, 256 << 20), (top_pad, 64 << 20)))


_FROZEN = False  # freeze_imports has run in this process


def freeze_imports() -> None:
    """Put the objects alive now (the imports': torch's alone makes about a million) beyond the cyclic
    garbage collector's reach, with ``gc.freeze``, the first time a process runs a command: its full
    collections, and the interpreter's at exit (half a second with torch imported), no longer walk them.
    Once a process: a process running several commands (a test session) keeps its later garbage collectable."""
    global _FROZEN
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True


@contextmanager
def importing():
    """The lazy imports of the training stack (Lightning, W&B, Optuna) with the collector paused, as
    ``namegen/__init__`` imports torch (a third of the import time goes to its passes otherwise), and what
    they made frozen as ``freeze_imports`` freezes the rest; the collector is then left as it was found."""
    collecting, before = gc.isenabled(), len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > before:  # a first import: long-lived modules, classes and functions
            gc.freeze()
        if collecting:
            gc.enable()


# ----------------------------------------------------------------------------- train


def add_train_arguments(p: Parser) -> None:
    p.description = ("Train a GRU name generator with the Lightning Trainer. Hyperparameters come from "
                     "configs/<size>.yaml (at the top of the repository; an installed namegen ships the same "
                     "files) or from your own .yaml; the flags below override them.")
    p.add_argument("--model", default=None,
                   help=f"size to train: {', '.join(SIZES)} (reads configs/<size>.yaml), or the path of your own "
                        "config .yaml, such as a copy of configs/small.yaml (default: small). With --init-from it "
                        "names a recipe only, the architecture being the base's (default: configs/finetune.yaml)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from a trained model's weights and architecture: a namegen .ckpt, a converted one or "
                        "the notebook's .pth. Characters of --data it lacks get new rows (see docs/finetuning.md); "
                        "the run goes to checkpoints/<base size>-<data file's name>")
    p.add_argument("--data", default=None,
                   help="names file, UTF-8, one name per line (default: makemore's names.txt, shipped with namegen)")
    p.add_argument("--out", default=None,
                   help="directory for best.ckpt, last.ckpt, metrics.csv and the W&B run (default: checkpoints/<model>)")
    p.add_argument("--max-epochs", type=positive_int, help="epochs to train (default: the config's max_epochs)")
    p.add_argument("--batch-size", type=positive_int, help="names per batch (default: the config's batch_size)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the config's lr)")
    p.add_argument("--seed", type=int, help="seed for initialisation, shuffling and dropout masks, and for the "
                   "train/validation split when the config sets no split_seed (default: the config's seed, 42)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace checkpoints from an earlier run in --out (without it, train.py refuses to)")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="continue an interrupted run: from <out>/last.ckpt, or from CKPT (then --out defaults "
                        "to CKPT's directory). Epoch, optimizer, schedule and the W&B run carry on; the model's "
                        "config and vocabulary come from the checkpoint, --max-epochs may raise the target")
    p.add_argument("--group-by-length", action="store_true",
                   help="batch names of similar length together (less padding, faster epochs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (CUDA: mode reduce-overhead, CUDA graphs); off by default. "
                        "Each distinct batch length compiles once: minutes of compiling up front, worth it "
                        "only for long runs")
    _add_trainer_arguments(p.add_argument_group("Lightning Trainer (passed through)"))
    _add_monitoring_arguments(p.add_argument_group("Monitoring"))


def _add_trainer_arguments(g) -> None:
    g.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto)")
    g.add_argument("--devices", type=devices, default="auto", help="number of devices, or a list such as 0,1 "
                   "(default: auto)")
    g.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ... (default: auto)")
    g.add_argument("--num-nodes", type=positive_int, default=1, help="machines taking part (default: 1)")
    g.add_argument("--precision", default=None,
                   help="32-true, bf16-mixed (CPU or GPU) or 16-mixed (GPU). Default: bf16-mixed where the CPU or "
                        "GPU computes bf16 natively, else 32-true; start-up says which. Weights, optimizer state "
                        "and val/loss stay float32 either way")
    g.add_argument("--limit-train-batches", type=int_or_float, default=None,
                   help="train on this many batches per epoch (int) or this fraction (float), for quick runs")
    g.add_argument("--limit-val-batches", type=int_or_float, default=None,
                   help="validate on this many batches (int) or this fraction (float)")


def _add_monitoring_arguments(g) -> None:
    g.add_argument("--logger", choices=("wandb", "csv", "none"), default="wandb",
                   help="wandb (default; also writes metrics.csv), csv (metrics.csv only) or none")
    g.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default, upload later with `wandb sync`) or online (needs `wandb login`); "
                        "WANDB_MODE=online also selects online")
    g.add_argument("--wandb-group", default="sizes",
                   help="W&B group, so runs of the sizes overlay on one dashboard (default: sizes)")


def train_command(args: argparse.Namespace) -> int:
    with importing():  # here, not at the top: sampling and conversion never pay for importing Lightning
        from namegen.training import TrainOptions, train

    opts = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)},
                        sample_command=sample_invocation(args))
    try:
        result = train(opts)
    except Interrupted as exc:
        if exc.quiet:
            return INTERRUPTED
        if exc.last is None:
            print("interrupted before the first epoch finished, so there is no checkpoint to resume from; "
                  "run the same command again to start over", file=sys.stderr)
        else:
            kept = exc.shown + (f" (after epoch {exc.epoch})" if exc.epoch else "")
            print(f"interrupted: {kept} is kept; resume with: {resume_command(args, exc.shown)}", file=sys.stderr)
        return INTERRUPTED
    return 0 if result.best_score is not None else 1


def sample_invocation(args: argparse.Namespace) -> str:
    """How this user runs sampling: ``python sample.py`` beside ``python train.py``, else ``namegen sample``."""
    if args.invocation[0] == "python" and args.invocation[1].endswith("train.py"):
        return "python sample.py"
    return " ".join(args.invocation[:-1] + ["sample"])


def resume_command(args: argparse.Namespace, last: str) -> str:
    """The command line that continues this run from its ``last.ckpt`` (``last``, as printed). A run
    started with --init-from continues without it (and without --model: the checkpoint has both)."""
    dropped = ("--init-from", "--model") if getattr(args, "init_from", None) else ()
    argv, skip = [], False
    for i, a in enumerate(args.argv):
        if skip:
            skip = False
            continue
        if a == "--overwrite" or a.startswith("--resume=") or a.startswith(tuple(f"{d}=" for d in dropped)):
            continue
        if a in dropped:
            skip = True
            continue
        if a == "--resume":
            following = args.argv[i + 1] if i + 1 < len(args.argv) else None
            skip = following is not None and following == args.resume and args.resume != "last"
            continue
        argv.append(a)
    if args.out is None and (args.resume not in (None, "last") or dropped):
        argv += ["--resume", last]
    else:
        argv.append("--resume")
    return " ".join(shlex.quote(a) for a in [*args.invocation, *argv])


# ----------------------------------------------------------------------------- sample


def add_sample_arguments(p: Parser) -> None:
    p.description = ("Print names sampled from a trained checkpoint, one per line. The checkpoint carries the "
                     "model's config and vocabulary: no --model and no data file are needed. A notebook .pth "
                     "(from its save_model) is read as well, recognised by its keys.")
    p.epilog = ("--unique and --new-only resample in bounded rounds (at most 20 x N + 1000 draws). If that is not "
                "enough, sample.py prints the names it found, says how many are missing on stderr and exits with "
                "status 1.")
    p.add_argument("--ckpt", required=True,
                   help="checkpoint to sample from (namegen .ckpt or notebook .pth); a bare name such as "
                        "best.ckpt that is not in the current directory resolves to the newest "
                        "checkpoints/*/best.ckpt")
    p.add_argument("-n", "--num", type=positive_int, default=20, help="how many names (default: 20)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature, > 0: below 1 is safer, above 1 more adventurous (default: 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample only among the k likeliest characters at each step (default: all)")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same names")
    p.add_argument("--prefix", default="", help="names start with these letters (the model is conditioned on them)")
    p.add_argument("--max-len", type=positive_int, default=None,
                   help="longest name in characters, enforced while generating (default: the model's block_size)")
    p.add_argument("--min-len", type=positive_int, default=1,
                   help="shortest name in characters, enforced while generating (default: 1)")
    p.add_argument("--unique", action="store_true", help="no name twice in the output")
    p.add_argument("--new-only", action="store_true",
                   help="leave out names of the training file (the one recorded in the checkpoint, which must be "
                        "unchanged, or --data)")
    p.add_argument("--data", default=None,
                   help="training names file for --new-only and is_new (default: the file recorded in the "
                        "checkpoint; notebook models record none)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: one name per line (default); json: one JSON object per line with name, logprob "
                        "(nats, under the model at temperature 1) and is_new (not in the training file; null when "
                        "that file is unavailable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model before sampling (CUDA: CUDA graphs); pays off only for large -n")


def sample_command(args: argparse.Namespace) -> int:
    path = resolve_checkpoint(args.ckpt)
    if str(path) != args.ckpt:
        print(f"using {path}", file=sys.stderr)
    gen = NameGenerator.from_checkpoint(path, device=args.device)
    if args.compile:
        compile_model(gen.model, gen.device.type)
    if gen.loaded.from_notebook:
        print(START_NOTE.format(path=path, model_class=gen.meta["source"]["model_class"]), file=sys.stderr)
    known = _known_names(gen, args)
    status, shortfall, scored = 0, None, args.format == "json"
    try:
        draw = gen.sample_with_logprob if scored else gen.sample  # text needs no log-probabilities
        found = draw(
            args.num, temperature=args.temperature, top_k=args.top_k, prefix=args.prefix, seed=args.seed,
            max_len=args.max_len, min_len=args.min_len, unique=args.unique,
            exclude=known if args.new_only else None,
        )
    except NotEnoughNames as exc:
        found = exc.found if scored else [name for name, _ in exc.found]  # (name, log-probability) pairs
        shortfall, status = error_line(exc, "sample", args), 1
    if scored:
        lines = [json.dumps({"name": name, "logprob": round(lp, 6),
                             "is_new": None if known is None else name not in known}) for name, lp in found]
    else:
        lines = found
    sys.stdout.write("\n".join(lines) + "\n" if lines else "")
    if shortfall:
        sys.stdout.flush()
        print(shortfall, file=sys.stderr)
    return status


def _known_names(gen: NameGenerator, args: argparse.Namespace) -> set[str] | None:
    """The training names, when --new-only or --format json needs them (json makes do without)."""
    if args.new_only:
        return gen.training_names(args.data)
    if args.format == "json":
        try:
            return gen.training_names(args.data)
        except UserError as exc:
            print(f"note: is_new is null: {error_line(exc, 'sample', args).removeprefix('error: ')}", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_arguments(p: Parser) -> None:
    p.description = ("Evaluate a checkpoint: mean NLL per character and perplexity (the definition of val/loss) on "
                     "the validation split it was trained with, or on every name of --data; and statistics of N "
                     "seeded samples against its training data.")
    p.add_argument("--ckpt", required=True, help="checkpoint to evaluate (train.py prints its path)")
    p.add_argument("--data", default=None,
                   help="evaluate on every name of this file instead of the checkpoint's validation split")
    p.add_argument("--train-data", default=None,
                   help="the training file, when it moved from the path the checkpoint records (its sha256 must "
                        "match the record); sample statistics and the validation split come from it")
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000,
                   help="samples for the statistics (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0): same seed, same statistics")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")


def evaluate_command(args: argparse.Namespace) -> int:
    ev = evaluate_checkpoint(args.ckpt, data=args.data, train_data=args.train_data, num_samples=args.num_samples,
                             seed=args.seed, temperature=args.temperature, device=args.device)
    print(json.dumps(ev.to_dict()) if args.json else format_evaluation(ev))
    return 0


# ----------------------------------------------------------------------------- compare


def add_compare_arguments(p: Parser) -> None:
    p.description = ("Compare GRU sizes: evaluate checkpoints (--ckpt) and/or train sizes with their configs "
                     "(--train), then write reports/<date>/report.md (a table, one row a run) and loss_curves.png "
                     "(train and validation loss per epoch for every run on one figure, from the metrics.csv "
                     "beside each checkpoint).")
    p.add_argument("--ckpt", nargs="+", action="extend", default=[], metavar="PATH",
                   help="checkpoints to compare (best.ckpt of each run; metrics.csv must sit beside it for the "
                        "curves, wall time and tokens/s)")
    p.add_argument("--train", nargs="+", action="extend", default=[], metavar="SIZE", choices=SIZES,
                   help=f"sizes to train first with their configs, then compare: {', '.join(SIZES)}")
    p.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                   help="row names, one per run in order (--ckpt runs first, then --train sizes); default: the "
                        "size each checkpoint records")
    p.add_argument("--runs-dir", default="checkpoints",
                   help="where --train writes each size's run, as <runs-dir>/<size> (default: checkpoints)")
    p.add_argument("--reports-dir", default="reports", help="the report goes to <reports-dir>/<date>/ "
                   "(default: reports)")
    p.add_argument("--date", default=None, help="name of the report's folder (default: today's UTC date)")
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000,
                   help="samples per run for the statistics (default: 1000)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument("--device", default="cpu", help="device for evaluation and sampling: cpu or cuda (default: cpu)")
    p.add_argument("--update-readme", nargs="?", const="README.md", default=None, metavar="README",
                   help="also put the table and figure into README between the lines <!-- compare:start --> and "
                        "<!-- compare:end --> (default file when given without a value: README.md)")
    _add_compare_training_arguments(p.add_argument_group("passed to training (--train only)"))


def _add_run_arguments(t, epochs_help: str) -> None:
    """The training flags that compare and tune pass to each run they start."""
    t.add_argument("--data", default=None, help="names file to train on (default: the shipped names.txt)")
    t.add_argument("--max-epochs", type=positive_int, default=None, help=epochs_help)
    t.add_argument("--limit-train-batches", type=int_or_float, default=None,
                   help="batches per epoch (int) or fraction (float), for quick runs")
    t.add_argument("--limit-val-batches", type=int_or_float, default=None,
                   help="validation batches (int) or fraction (float)")
    t.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto)")
    t.add_argument("--precision", default=None, help="as train's --precision (default: train's)")


def _add_compare_training_arguments(t) -> None:
    _add_run_arguments(t, "epochs (default: each config's)")
    t.add_argument("--group-by-length", action="store_true", help="batch names of similar length together")
    t.add_argument("--overwrite", action="store_true", help="replace earlier runs in <runs-dir>/<size>")
    t.add_argument("--resume", action="store_const", const="last", default=None,
                   help="continue each size's interrupted run in <runs-dir>/<size> (finished sizes: pass --ckpt)")
    t.add_argument("--logger", choices=("wandb", "csv", "none"), default="wandb",
                   help="wandb (default): training runs log to W&B and the figure and table go to a W&B run named "
                        "'compare'; csv: metrics.csv only, no W&B; none: no logs (no curves for trained runs)")
    t.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default) or online (needs `wandb login`)")


def compare_command(args: argparse.Namespace) -> int:
    with importing():  # here, not at the top: sampling and conversion never pay for importing Lightning
        from namegen.compare import CompareOptions, compare
        from namegen.training import TrainOptions

    training = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)
                               and f.name not in ("model", "out")})
    compare(CompareOptions(
        ckpt=[Path(c) for c in args.ckpt], train=args.train, labels=args.labels, runs_dir=Path(args.runs_dir),
        reports_dir=Path(args.reports_dir), date=args.date, num_samples=args.num_samples,
        sample_seed=args.sample_seed, device=args.device, training=training,
        update_readme=Path(args.update_readme) if args.update_readme else None,
        command=" ".join(shlex.quote(a) for a in [*args.invocation, *args.argv]),
    ))
    return 0


# ----------------------------------------------------------------------------- tune


def add_tune_arguments(p: Parser) -> None:
    p.description = ("Search one size's training recipe with Optuna (TPE sampler, median pruning on each epoch's "
                     "val/loss). The space is configs/search/<model>.yaml; every trial is a normal training run in "
                     "<runs-dir>/<study>/trial-NNNN. Running the same command again continues the study. Writes "
                     "reports/<date>/tune-<study>.md, the best recipe as a ready config, and Optuna's plots.")
    p.add_argument("--model", default=None, help=f"size whose recipe is searched: {', '.join(SIZES)} "
                   "(default: small; with --init-from: finetune, configs/search/finetune.yaml)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="every trial starts from this trained model (as train --init-from), on --data")
    p.add_argument("--space", default=None, help="search-space YAML (default: configs/search/<model>.yaml)")
    p.add_argument("--trials", type=trial_count, default=40,
                   help="finished (complete or pruned) trials the study should hold; trials run until it does "
                        "(default: 40; 0 runs none and writes the report of the study as it stands)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="seconds after which no new trial starts (the running one finishes)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a database URL (sqlite:///..., postgresql://..., mysql://...) or a journal "
                        "file ending in .journal; many processes or machines can share one study through it "
                        "(default: sqlite:///<runs-dir>/optuna.db)")
    p.add_argument("--study", default=None, help="study name (default: the model's name)")
    p.add_argument("--runs-dir", default="runs/tune", help="where trials run, as <runs-dir>/<study>/trial-NNNN "
                   "(default: runs/tune)")
    p.add_argument("--reports-dir", default="reports", help="the report goes to <reports-dir>/<date>/ "
                   "(default: reports)")
    p.add_argument("--date", default=None, help="name of the report's folder (default: today's UTC date)")
    p.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the TPE sampler (default: none; processes sharing a study need different seeds)")
    t = p.add_argument_group("passed to every trial's training run")
    _add_run_arguments(t, "epochs of every trial, overriding the searched max_epochs (smoke runs)")
    t.add_argument("--logger", choices=("wandb", "csv", "none"), default="csv",
                   help="csv (default): metrics.csv per trial; wandb: also a W&B run per trial, grouped by study")
    t.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default) or online (needs `wandb login`)")


def tune_command(args: argparse.Namespace) -> int:
    with importing():  # here, not at the top: sampling and conversion never pay for importing Lightning, Optuna
        from namegen.training import TrainOptions
        from namegen.tune import TuneOptions, tune

    args.model = args.model or ("finetune" if args.init_from else "small")
    training = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)
                               and f.name not in ("model", "out")}, wandb_group=f"tune-{args.study or args.model}")
    try:
        tune(TuneOptions(model=args.model, space=args.space, trials=args.trials, timeout=args.timeout,
                         storage=args.storage, study=args.study, runs_dir=Path(args.runs_dir),
                         reports_dir=Path(args.reports_dir), date=args.date, sampler_seed=args.sampler_seed,
                         training=training))
    except Interrupted:
        print("interrupted: the running trial is marked failed; run the same command again to continue the study",
              file=sys.stderr)
        return INTERRUPTED
    return 0


# ----------------------------------------------------------------------------- convert


def add_convert_arguments(p: Parser) -> None:
    p.description = ("Convert the GRU notebook's .pth file (written by its save_model) into a namegen checkpoint "
                     "that sample.py, the Python API and the evaluation read like one from train.py. The weights "
                     "are copied unchanged; the model keeps sampling from padding, as the notebook did.")
    p.add_argument("src", metavar="IN.pth", help="the notebook's file, e.g. saved_models/GRU_beta_model_v1.pth")
    p.add_argument("dst", metavar="OUT.ckpt", help="the namegen checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace OUT.ckpt if it exists")


def convert_command(args: argparse.Namespace) -> int:
    meta = convert(args.src, args.dst, force=args.force)
    print(f"wrote {args.dst}: {meta['source']['model_class']} ({meta['size']}, {meta['num_parameters']:,} "
          f"parameters, vocabulary of {len(meta['vocab']) + 2} symbols, samples from padding)")
    print(f"sample with: python sample.py --ckpt {args.dst}")
    return 0


# ----------------------------------------------------------------------------- export


def add_export_arguments(p: Parser) -> None:
    p.description = ("Export a checkpoint as a one-step ONNX graph (token, h -> logits, h_next) that onnxruntime "
                     "runs without PyTorch; the vocabulary and start token go into its metadata. "
                     "examples/onnx_sample.py samples names from it with onnxruntime and numpy alone. "
                     "With --web, write a static web page that samples names in the browser instead.")
    p.add_argument("--ckpt", required=True, help="checkpoint to export (namegen .ckpt or notebook .pth)")
    p.add_argument("--out", default=None, help="the .onnx file to write")
    p.add_argument("--web", default=None, metavar="DIR",
                   help="write a static site into DIR (new or empty): index.html, the model, the training names "
                        f"and onnxruntime-web {ORT_WEB_VERSION} (fetched once from the npm registry with npm, "
                        "then cached); serve it with any static file server")
    p.add_argument("--data", default=None,
                   help="with --web: the training names file for the page's \"new names only\" (default: the file "
                        "recorded in the checkpoint; notebook models record none)")
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset, 17 or more (default: 18)")
    p.add_argument("--force", action="store_true", help="replace --out, or the earlier site in --web, if it exists")


def export_command(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.web is None):
        raise UserError("give one of --out FILE.onnx (the ONNX model) or --web DIR (a static web page)")
    if args.web is not None:
        return _export_web(args)
    if args.data is not None:
        raise UserError("--data is for --web (the page's training names); --out writes the model alone")
    info = export_onnx(resolve_checkpoint(args.ckpt), args.out, force=args.force, opset=args.opset)
    print(f"wrote {info.path}: opset {info.opset}, {info.n_layer} layer(s) of {info.hidden}, vocabulary of "
          f"{info.vocab_size} symbols, start token {info.start_token}")
    print(f"sample with: python examples/onnx_sample.py {info.path}")
    return 0


def _export_web(args: argparse.Namespace) -> int:
    if args.opset is not None:
        raise UserError("--opset is for --out; the page's model is written at the default opset")
    info = export_web(resolve_checkpoint(args.ckpt), args.web, force=args.force, data=args.data)
    print(f"wrote {info.path}: {len(info.files)} files, {info.total_bytes / 1e6:.1f} MB "
          f"(onnxruntime-web {ORT_WEB_VERSION}); model {info.onnx.n_layer} layer(s) of {info.onnx.hidden}, "
          f"start token {info.onnx.start_token}")
    if info.names_note:
        print(f"note: no \"new names only\" on this page: {info.names_note}; pass --data NAMES.txt to add it",
              file=sys.stderr)
    else:
        print(f"training names for \"new names only\": {info.n_training_names:,} ({info.names_bytes:,} bytes)")
    print(f"try it: python -m http.server -d {shlex.quote(str(info.path))} 8000, then open http://127.0.0.1:8000/")
    return 0


# ----------------------------------------------------------------------------- entry points

COMMANDS = {
    "train": (add_train_arguments, train_command, "train a model with the Lightning Trainer", "train.py"),
    "sample": (add_sample_arguments, sample_command, "print names sampled from a checkpoint", "sample.py"),
    "evaluate": (add_evaluate_arguments, evaluate_command, "NLL, perplexity and sample statistics of a checkpoint",
                 "evaluate.py"),
    "compare": (add_compare_arguments, compare_command, "train and/or evaluate sizes, write a report", "compare.py"),
    "tune": (add_tune_arguments, tune_command, "search a size's training recipe with Optuna", "python -m namegen tune"),
    "convert": (add_convert_arguments, convert_command, "convert a notebook .pth into a namegen checkpoint",
                "python -m namegen convert"),
    "export": (add_export_arguments, export_command, "export a checkpoint to ONNX (runs without PyTorch)",
               "python -m namegen export"),
}


def build_parser(prog: str = "namegen") -> Parser:
    parser = Parser(prog=prog, description="Character-level name generators on a hand-written GRU cell.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (add_arguments, _, summary, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: list[str] | None = None, prog: str = "namegen") -> int:
    """``namegen COMMAND [flags]``: the whole command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    launcher = ["python", "-m", "namegen"] if Path(sys.argv[0]).name == "__main__.py" else [prog]
    args.argv, args.invocation = argv[1:], [*launcher, args.command]
    return run(args.command, COMMANDS[args.command][1], args)


def script_main(command: str, argv: list[str] | None = None) -> int:
    """One subcommand as its own script (``train.py`` is ``namegen train``), with the script's name in messages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    add_arguments, handler, _, script = COMMANDS[command]
    parser = Parser(prog=script)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv, args.invocation = argv, ["python", sys.argv[0] if Path(sys.argv[0]).name == script else script]
    return run(command, handler, args)
