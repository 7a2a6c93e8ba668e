"""The namegen checkpoint format, its one home: what a checkpoint holds, writing it
atomically, reading it safely, rebuilding the model from it.

A checkpoint is a ``torch.save``\\ d dictionary of tensors and plain types only, so
``torch.load(weights_only=True)`` reads it and nothing in it can run code::

    {"namegen": meta,                      # see build_meta: format, config, vocab, size, data, ...
     "state_dict": {"model.<key>": tensor},
     # and, in the ones train.py writes, Lightning's training state:
     "epoch", "global_step", "optimizer_states", "lr_schedulers", "loops", "callbacks", "hyper_parameters",
     "namegen_rng"}
     # and, when the config sets ema_decay: "state_dict" is the weights' moving average (what validation
     # measured), "current_model_state" the trained weights, "averaging_state" the average's step count

``FORMAT`` is the version of ``meta``; format 1 is the only one so far
(tests/fixtures/format1 holds one written before the package was reorganised).
The notebook's ``.pth`` is another format, with its own home in ``namegen.notebook``.

Writes go to a temporary file beside the target, are fsynced, then
``os.replace``\\ d over it: a kill at any moment leaves the old file or the new
one, never a partial file. ``remove_stale_temporaries`` clears what a kill left.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from namegen.config import Config
from namegen.data import AS_IS, END, Vocab
from namegen.errors import UserError, WriteFailed
from namegen.model import GRULanguageModel

FORMAT = 1
STATE_PREFIX = "model."  # the LightningModule holds the GRULanguageModel as ``self.model``
TEMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------- what it holds


def build_meta(config: Config, vocab: Vocab, num_parameters: int, size: str | None = None, data: dict | None = None,
               **extra) -> dict:
    """The ``"namegen"`` entry: everything needed to rebuild the model, in plain types.

    ``data`` records the training file (``path``, ``sha256``, ``n_names``; Nones when
    unknown); ``extra`` adds optional entries: ``start_token`` (0 for notebook models),
    ``source`` (where a converted model came from), ``wandb_run_id``.
    """
    return {
        "format": FORMAT,
        "config": config.to_dict(),
        "vocab": list(vocab.chars),
        "num_parameters": int(num_parameters),
        "size": size,
        "data": dict(data) if data else {"path": None, "sha256": None, "n_names": None},
        **extra,
    }


def is_notebook_meta(meta: dict) -> bool:
    """True for the metadata of a notebook model (read from its ``.pth`` or converted)."""
    source = meta.get("source")
    return isinstance(source, dict) and source.get("kind") == "notebook"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what the checkpoint says about it."""

    model: GRULanguageModel
    vocab: Vocab
    config: Config
    meta: dict = field(default_factory=dict)  # the checkpoint's "namegen" entry
    path: Path | None = None

    @property
    def start_token(self) -> int:
        """The first input token of every name: ``.`` (1), or padding (0) for notebook models."""
        return int(self.meta.get("start_token", END))

    @property
    def case(self) -> str:
        """How the model learned its names: ``"title"`` (in lower case, shown capitalised) or ``"as-is"``."""
        return str(self.meta.get("case") or AS_IS)

    @property
    def from_notebook(self) -> bool:
        return is_notebook_meta(self.meta)

    @property
    def size(self) -> str:
        return str(self.meta.get("size") or (self.path.parent.name if self.path else "model"))


# ---------------------------------------------------------------------------- writing


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], about: str | None = "out") -> Path:
    """Call ``write(f)`` on ``.<name>.<random>.tmp`` beside ``path``, fsync, then ``os.replace`` it
    over ``path``. The one way namegen writes a file that must never be seen half-written.

    When the OS refuses (a full disk, a read-only filesystem, a parent that is a file), the
    temporary is removed, ``path`` keeps its old content, and ``WriteFailed`` (a UserError about
    ``about``) names the file and the OS's reason."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() gives, not mkstemp's 0o600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise WriteFailed(path, exc, about=about) from None
    except BaseException:  # KeyboardInterrupt included: never leave the temporary behind
        _remove(tmp)
        raise
    _fsync_directory(path.parent)
    return path


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass


def make_dirs(directory: str | os.PathLike, about: str | None = "out") -> Path:
    """``mkdir -p``; a directory the OS refuses to make (a file in its way, a read-only
    filesystem) is a ``WriteFailed`` naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed(directory, exc, about=about) from None
    return directory


def write_bytes(path: str | os.PathLike, data: bytes, about: str | None = "out") -> Path:
    """``data`` into ``path``, atomically (see ``atomic_write``), making its directory first."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteFailed(path, exc, about=about) from None
    return atomic_write(path, lambda f: f.write(data), about=about)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (where the platform allows it)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike, about: str | None = "out") -> Path:
    """``torch.save(obj)`` into ``path`` atomically. Serialised in memory first, so that a write the OS
    refuses surfaces as the OSError it is (torch's zip writer turns it into a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer(), about=about)


def write_checkpoint(path: str | os.PathLike, meta: dict, state_dict: dict, about: str | None = "out") -> Path:
    """A weights-only namegen checkpoint (no training state): for converted and exported models."""
    obj = {"namegen": meta, "state_dict": {f"{STATE_PREFIX}{k}": v for k, v in state_dict.items()}}
    return atomic_torch_save(obj, path, about=about)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files a killed write left in ``directory``; return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(f".*.*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------- reading


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
    raise UserError(f"{path} not found; give the path of a .ckpt file (train.py prints it)", about="ckpt")


def read_checkpoint(path: str | Path, about: str = "ckpt") -> dict:
    """``torch.load(weights_only=True)``: a file that would run code when unpickled is refused.

    Any file that is not a readable checkpoint (missing, a directory, truncated,
    text, a pickle of arbitrary objects) raises UserError naming the file;
    nothing in the file is ever executed.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; give the path of a .ckpt file (train.py prints it)", about=about)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the path of a .ckpt file", about=about)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's "Detected pickle protocol 4" on foreign pickles
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(_unpickling_message(path, exc), about=about) from None
    except Exception as exc:  # truncated zip, text file, garbage: torch raises many kinds
        raise UserError(
            f"{path} is not a readable checkpoint: it is truncated, damaged or not a torch file "
            f"({_first_line(exc)}); use the best.ckpt or last.ckpt that train.py wrote",
            about=about,
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a checkpoint dictionary (it holds a {type(obj).__name__})",
                        about=about)
    return obj


def _unpickling_message(path: Path, exc: pickle.UnpicklingError) -> str:
    text = str(exc)
    if "Weights only load failed" not in text:
        return f"{path} is not a readable checkpoint ({_first_line(exc)})"
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    what = (f"it would call {glob.group(1)} when loaded" if glob
            else "it is a pickle of Python objects, not tensors and plain data")
    return (f"{path} was refused and nothing in it was run: {what}; only checkpoints of tensors "
            "and plain data are loaded (weights_only=True). Use a checkpoint that train.py wrote")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.split(". ")[0]  # torch's messages run on ("This is an internal miniz error. If ...")
    return f"{type(exc).__name__}: {first[:160]}"


def from_checkpoint_dict(obj: dict, path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a namegen checkpoint dictionary (as ``read_checkpoint`` returns it)."""
    meta = obj.get("namegen")
    if not isinstance(meta, dict) or "state_dict" not in obj:
        raise UserError(
            f"{path} is not a namegen checkpoint (no 'namegen' entry); train one with train.py, or give a "
            "notebook .pth (state_dict, model_class, n_classes, ...)",
            about="ckpt",
        )
    vocab, config = _vocab_and_config(meta, path)
    state = {k[len(STATE_PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(STATE_PREFIX)}
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    load_weights(model, state, f"{path}: its weights do not match its own config and vocabulary", path)
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, config=config, meta=meta, path=path)


def _vocab_and_config(meta: dict, path: Path) -> tuple[Vocab, Config]:
    try:
        return Vocab(meta["vocab"]), Config.from_dict(meta["config"], source=f"{path}: config")
    except (KeyError, TypeError, ValueError, UserError) as exc:
        detail = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"{path} has an inconsistent vocabulary or config ({detail})", about="ckpt") from None


def load_weights(model: torch.nn.Module, state: dict, mismatch: str, path: Path) -> None:
    """``model.load_state_dict(state)``, refusing weights that do not fit or are not finite (a diverged
    run's NaNs would otherwise surface much later, as a traceback from torch.multinomial)."""
    for name, tensor in state.items():
        if torch.is_floating_point(tensor) and not torch.isfinite(tensor).all():
            raise UserError(
                f"{path} holds non-finite weights ({name} has NaN or inf): the run it came from diverged; "
                "use an earlier checkpoint, or retrain with a lower learning rate",
                about="ckpt",
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"{mismatch} ({detail[:200]})", about="ckpt") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a namegen checkpoint file, with nothing else needed.
    (``namegen.api.load_model`` also reads the notebook's ``.pth``.)"""
    path = Path(path)
    return from_checkpoint_dict(read_checkpoint(path), path, device)


def read_training_checkpoint(path: Path) -> dict:
    """A namegen checkpoint that training can continue from (UserErrors about ``"resume"``)."""
    ckpt = read_checkpoint(path, about="resume")
    meta = ckpt.get("namegen")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "vocab" not in meta:
        raise UserError(
            f"{path} is not a namegen checkpoint (no 'namegen' entry with config and vocabulary); "
            "resume from the last.ckpt that train.py wrote",
            about="resume",
        )
    if not {"loops", "optimizer_states", "epoch"} <= set(ckpt):
        raise UserError(
            f"{path} holds weights only, no training state (epoch, optimizer); "
            "resume from the last.ckpt that train.py wrote",
            about="resume",
        )
    try:
        Vocab(meta["vocab"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path} has an inconsistent vocabulary ({exc})", about="resume") from None
    return ckpt
