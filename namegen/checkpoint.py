"""Reading checkpoints safely: ``weights_only=True`` always, clear errors for bad files."""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from namegen.config import Config
from namegen.data import END, Vocab
from namegen.errors import UserError
from namegen.model import GRULanguageModel

_PREFIX = "model."


@dataclass
class LoadedModel:
    model: GRULanguageModel
    vocab: Vocab
    meta: dict = field(default_factory=dict)  # the checkpoint's "namegen" entry
    path: Path | None = None

    @property
    def config(self) -> Config:
        return Config.from_dict(self.meta["config"], source=f"{self.path}: config")

    @property
    def start_token(self) -> int:
        """The first input token of every name: ``.`` (1), or padding (0) for notebook models."""
        return int(self.meta.get("start_token", END))

    @property
    def from_notebook(self) -> bool:
        """True for a notebook ``.pth``, read directly or converted."""
        from namegen.notebook import is_notebook_meta

        return is_notebook_meta(self.meta)


def resolve_checkpoint(path: str | Path, root: Path = Path("checkpoints")) -> Path:
    """``path`` itself if it exists; a bare file name (``best.ckpt``) missing from the
    current directory resolves to the newest ``checkpoints/*/<name>``."""
    path = Path(path)
    if path.exists():
        return path
    if path.parent == Path(".") and root.is_dir():
        found = sorted(root.glob(f"*/{path.name}"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    raise UserError(f"--ckpt: {path} not found; give the path of a .ckpt file (train.py prints it)")


def read_checkpoint(path: Path, flag: str = "--ckpt") -> dict:
    """``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.

    Any file that is not a readable checkpoint (missing, a directory, truncated,
    text, a pickle of arbitrary objects) raises UserError naming ``flag`` and
    the file; nothing in the file is ever executed.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag}: {path} not found; give the path of a .ckpt file (train.py prints it)")
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a directory; give the path of a .ckpt file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's "Detected pickle protocol 4" on foreign pickles
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            glob = re.search(r"GLOBAL ([\w.]+)", text)
            what = (f"it would call {glob.group(1)} when loaded" if glob
                    else "it is a pickle of Python objects, not tensors and plain data")
            raise UserError(
                f"{flag}: {path} was refused and nothing in it was run: {what}; only checkpoints of tensors "
                "and plain data are loaded (weights_only=True). Use a checkpoint that train.py wrote"
            ) from None
        raise UserError(f"{flag}: {path} is not a readable checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # truncated zip, text file, garbage: torch raises many kinds
        raise UserError(
            f"{flag}: {path} is not a readable checkpoint: it is truncated, damaged or not a torch file "
            f"({_first_line(exc)}); use the best.ckpt or last.ckpt that train.py wrote"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{flag}: {path} does not hold a checkpoint dictionary (it holds a {type(obj).__name__})")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.split(". ")[0]  # torch's messages run on ("This is an internal miniz error. If ...")
    return f"{type(exc).__name__}: {first[:160]}"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a namegen checkpoint, or from the notebook's ``.pth``
    (recognised by its keys, see ``namegen.notebook``), with nothing else needed."""
    from namegen.notebook import from_notebook, is_notebook_checkpoint

    path = Path(path)
    obj = read_checkpoint(path)
    if is_notebook_checkpoint(obj):
        model, vocab, meta, _ = from_notebook(obj, path)
        _check_finite(model, path)
        model.to(device).eval()
        return LoadedModel(model=model, vocab=vocab, meta=meta, path=path)
    meta = obj.get("namegen")
    if not isinstance(meta, dict) or "state_dict" not in obj:
        raise UserError(
            f"--ckpt: {path} is not a namegen checkpoint (no 'namegen' entry); "
            "train one with train.py, or give a notebook .pth (state_dict, model_class, n_classes, ...)"
        )
    try:
        vocab = Vocab(meta["vocab"])
        config = Config.from_dict(meta["config"], source=f"{path}: config")
    except (KeyError, TypeError, ValueError, UserError) as exc:
        detail = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"--ckpt: {path} has an inconsistent vocabulary or config ({detail})") from None
    state = {k[len(_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(_PREFIX)}
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise UserError(
            f"--ckpt: {path}: its weights do not match its own config and vocabulary ({detail[:200]})"
        ) from None
    _check_finite(model, path)
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, meta=meta, path=path)


def _check_finite(model: torch.nn.Module, path: Path) -> None:
    """Refuse weights holding inf or nan (a run that diverged): they could only sample garbage."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(
                f"--ckpt: {path} holds non-finite weights ({name} has inf or nan), as a run that diverged "
                "leaves them; use an earlier checkpoint of that run, or train again with a lower --lr"
            )
