"""Command lines of ``train.py`` and ``sample.py``: argument parsing, then the work.

User mistakes surface as one line, ``error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path

from namegen.errors import UserError


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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def run(main, argv=None) -> int:
    """Call ``main(argv)``; turn a UserError into ``error: ...`` and exit status 2."""
    try:
        return main(argv) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- train.py


def train_parser() -> Parser:
    from namegen.config import SIZES

    p = Parser(
        prog="train.py",
        description="Train a GRU name generator with the Lightning Trainer. Hyperparameters come from "
        "configs/<model>.yaml; the flags below override them.",
    )
    p.add_argument("--model", default="small",
                   help=f"size to train: {', '.join(SIZES)} (reads configs/<size>.yaml), or a path to a config .yaml "
                        "(default: small)")
    p.add_argument("--data", default=None,
                   help="names file, UTF-8, one name per line (default: data/names.txt, downloaded and "
                        "checksum-verified when missing)")
    p.add_argument("--out", default=None,
                   help="directory for best.ckpt, last.ckpt, metrics.csv and the W&B run (default: checkpoints/<model>)")
    p.add_argument("--max-epochs", type=positive_int, help="epochs to train (default: the config's max_epochs)")
    p.add_argument("--batch-size", type=positive_int, help="names per batch (default: the config's batch_size)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the config's lr)")
    p.add_argument("--seed", type=int, help="seed for the train/validation split, initialisation and "
                   "shuffling (default: the config's seed, 42)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace checkpoints from an earlier run in --out (without it, train.py refuses to)")
    p.add_argument("--group-by-length", action="store_true",
                   help="batch names of similar length together (less padding, faster epochs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (CUDA: mode reduce-overhead, CUDA graphs); off by default. "
                        "Each distinct batch length compiles once: minutes of compiling up front, worth it "
                        "only for long runs")
    g = p.add_argument_group("Lightning Trainer (passed through)")
    g.add_argument("--accelerator", default="auto", help="auto, cpu or gpu (default: auto)")
    g.add_argument("--devices", type=_devices, default="auto", help="number of devices, or a list such as 0,1 (default: auto)")
    g.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ... (default: auto)")
    g.add_argument("--num-nodes", type=positive_int, default=1, help="machines taking part (default: 1)")
    g.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ... (default: Lightning's, 32)")
    g.add_argument("--limit-train-batches", type=_int_or_float, default=None,
                   help="train on this many batches per epoch (int) or this fraction (float), for quick runs")
    g.add_argument("--limit-val-batches", type=_int_or_float, default=None,
                   help="validate on this many batches (int) or this fraction (float)")
    w = p.add_argument_group("Monitoring")
    w.add_argument("--logger", choices=("wandb", "csv", "none"), default="wandb",
                   help="wandb (default; also writes metrics.csv), csv (metrics.csv only) or none")
    w.add_argument("--wandb-mode", choices=("offline", "online"), default=None,
                   help="offline (default, upload later with `wandb sync`) or online (needs `wandb login`); "
                        "WANDB_MODE=online also selects online")
    w.add_argument("--wandb-group", default="sizes",
                   help="W&B group, so runs of the sizes overlay on one dashboard (default: sizes)")
    return p


def _int_or_float(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or a fraction, got {text!r}") from None


def _devices(text: str):
    if text == "auto":
        return text
    if text.isdigit() or text == "-1":
        return int(text)
    return text


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    from namegen.training import train

    best = train(args)
    return 0 if best is not None else 1


# ---------------------------------------------------------------------------- sample.py


def sample_parser() -> Parser:
    p = Parser(
        prog="sample.py",
        description="Print names sampled from a trained checkpoint, one per line. The checkpoint carries "
        "the model's config and vocabulary: no --model and no data file are needed. A notebook .pth "
        "(from its save_model) is read as well, recognised by its keys.",
        epilog="--unique and --new-only resample in bounded rounds (at most 20 x N + 1000 draws). If that "
        "is not enough, sample.py prints the names it found, says how many are missing on stderr and exits "
        "with status 1.",
    )
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
                   help="text: one name per line (default); json: one JSON object per line with name, "
                        "logprob (nats, under the model at temperature 1) and is_new (not in the training file; "
                        "null when that file is unavailable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model before sampling (CUDA: CUDA graphs); pays off only for large -n")
    return p


def sample_main(argv=None) -> int:
    args = sample_parser().parse_args(argv)
    from namegen.api import NameGenerator, NotEnoughNames
    from namegen.checkpoint import resolve_checkpoint
    from namegen.notebook import START_NOTE

    path = resolve_checkpoint(args.ckpt)
    if str(path) != args.ckpt:
        print(f"using {path}", file=sys.stderr)
    gen = NameGenerator.from_checkpoint(path, device=args.device)
    if args.compile:
        from namegen.model import compile_model

        compile_model(gen.model, gen.device.type)
    if gen.loaded.from_notebook:
        print(START_NOTE.format(path=path, model_class=gen.meta["source"]["model_class"]), file=sys.stderr)
    known = None  # the training names, when needed and available
    if args.new_only:
        known = gen.training_names(args.data)
    elif args.format == "json":
        try:
            known = gen.training_names(args.data)
        except UserError as exc:
            print(f"note: is_new is null: {exc}", file=sys.stderr)
    status, shortfall = 0, None
    try:
        found = gen.sample_with_logprob(
            args.num,
            temperature=args.temperature,
            top_k=args.top_k,
            prefix=args.prefix,
            seed=args.seed,
            max_len=args.max_len,
            min_len=args.min_len,
            unique=args.unique,
            exclude=known if args.new_only else None,
        )
    except NotEnoughNames as exc:
        found, shortfall, status = exc.found, str(exc), 1
    if args.format == "json":
        lines = [
            json.dumps({"name": name, "logprob": round(lp, 6), "is_new": None if known is None else name not in known})
            for name, lp in found
        ]
    else:
        lines = [name for name, _ in found]
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    if shortfall:
        sys.stdout.flush()
        print(f"error: {shortfall}", file=sys.stderr)
    return status


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


warnings.filterwarnings("ignore", message=".*does not have many workers.*")
