"""Convert a notebook ``.pth`` into a namegen checkpoint.

    python -m namegen.convert saved_models/GRU_beta_model_v1.pth checkpoints/beta.ckpt

The output holds ``{"namegen": meta, "state_dict": {"model.<key>": tensor}}``,
the layout ``train.py`` writes, so ``sample.py``, the Python API and the
evaluation load it like any other checkpoint. Its tensors are the notebook's,
unchanged, under namegen's names; its metadata carries the notebook's
vocabulary, the config the notebook used, ``start_token: 0`` (the model was
trained without a start token, so it samples from padding, as the notebook
did) and where it came from (``source``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from namegen.cli import Parser, run
from namegen.errors import UserError


def write_checkpoint(path: str | Path, meta: dict, state_dict: dict) -> Path:
    """Write a namegen checkpoint (``weights_only``-readable), atomically."""
    path = Path(path)
    obj = {"namegen": meta, "state_dict": {f"model.{k}": v for k, v in state_dict.items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def convert(src: str | Path, dst: str | Path, force: bool = False) -> dict:
    """Convert notebook file ``src`` to namegen checkpoint ``dst``; returns the metadata written."""
    from namegen.checkpoint import read_checkpoint
    from namegen.notebook import from_notebook, is_notebook_checkpoint

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise UserError(f"{src} not found; give the notebook's .pth file (saved_models/GRU_..._v1.pth)")
    try:
        obj = read_checkpoint(src)
    except UserError as exc:  # its messages name the --ckpt flag of sample.py
        raise UserError(str(exc).removeprefix("--ckpt: ")) from None
    except Exception as exc:  # torch's unpickler fails in many ways on a file that is not a torch file
        raise UserError(f"{src} is not a readable checkpoint ({type(exc).__name__}: {exc})"[:300]) from None
    if not is_notebook_checkpoint(obj):
        what = "already a namegen checkpoint" if "namegen" in obj else "not a notebook checkpoint"
        raise UserError(
            f"{src} is {what}: the notebook's save_model writes a dictionary with "
            "state_dict, model_class, n_classes, embd_dim, hidden_dim, timestamp and version"
        )
    if dst.is_dir():
        raise UserError(f"{dst} is a directory; give the output file, e.g. {dst / (src.stem + '.ckpt')}")
    if dst.exists() and not force:
        raise UserError(f"{dst} exists; pass --force to replace it")
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent} does not exist; create it first")
    if dst.resolve() == src.resolve():
        raise UserError(f"{dst} is the input file; write the checkpoint elsewhere")
    _, _, meta, state = from_notebook(obj, src)
    write_checkpoint(dst, meta, state)
    return meta


def parser() -> Parser:
    p = Parser(
        prog="python -m namegen.convert",
        description="Convert the GRU notebook's .pth file (written by its save_model) into a namegen checkpoint "
        "that sample.py, the Python API and the evaluation read like one from train.py. The weights are copied "
        "unchanged; the model keeps sampling from padding, as the notebook did.",
    )
    p.add_argument("src", metavar="IN.pth", help="the notebook's file, e.g. saved_models/GRU_beta_model_v1.pth")
    p.add_argument("dst", metavar="OUT.ckpt", help="the namegen checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace OUT.ckpt if it exists")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    meta = convert(args.src, args.dst, force=args.force)
    src = meta["source"]
    print(
        f"wrote {args.dst}: {src['model_class']} ({meta['size']}, {meta['num_parameters']:,} parameters, "
        f"vocabulary of {len(meta['vocab']) + 2} symbols, samples from padding)"
    )
    print(f"sample with: python sample.py --ckpt {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
