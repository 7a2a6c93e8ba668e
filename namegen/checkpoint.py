"""Reading checkpoints safely: ``weights_only=True`` always, clear errors for bad files."""

from __future__ import annotations

import pickle
import zipfile
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


def read_checkpoint(path: Path) -> dict:
    """``torch.load(weights_only=True)``: a file that would run code when unpickled is refused."""
    if path.is_dir():
        raise UserError(f"--ckpt: {path} is a directory; give the path of a .ckpt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise UserError(
                f"--ckpt: {path} was refused: it holds Python objects that would run code when loaded "
                f"(only tensors and plain data are accepted) [{first[:160]}]"
            ) from None
        raise UserError(f"--ckpt: {path} is not a readable checkpoint ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--ckpt: {path} is not a readable checkpoint (truncated or not a torch file: {first[:160]})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"--ckpt: {path} does not hold a checkpoint dictionary")
    return obj


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a namegen checkpoint, or from the notebook's ``.pth``
    (recognised by its keys, see ``namegen.notebook``), with nothing else needed."""
    from namegen.notebook import from_notebook, is_notebook_checkpoint

    path = Path(path)
    obj = read_checkpoint(path)
    if is_notebook_checkpoint(obj):
        model, vocab, meta, _ = from_notebook(obj, path)
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
        raise UserError(f"--ckpt: {path} has an inconsistent vocabulary or config ({exc})") from None
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
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, meta=meta, path=path)
