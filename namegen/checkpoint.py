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

import contextlib
import io
import math
import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from namegen.config import Config
from namegen.data import AS_IS, END, TITLE, Vocab
from namegen.errors import UserError, WriteFailed, brief
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
    if not path.is_file():  # /dev/zero, a FIFO: reading would never end
        raise UserError(f"{path} is not a regular file; give the path of a .ckpt file", about=about)
    data_bytes = check_torch_file(path, about)
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
    check_tensor_bytes(obj, data_bytes, path, about)
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


# ---------------------------------------------------------------------------- what a file may declare
#
# A checkpoint comes from anyone. torch.load(weights_only=True) runs no code, but it still does what the
# file asks within its allow-list: inflate a compressed record of any declared size, call bytearray(n)
# or a tensor constructor with any n, rebuild a (10^5, 10^5) tensor over one stored float (stride 0).
# So before torch.load the archive and its pickle are checked (check_torch_file), after it every tensor
# must be backed by bytes in the file (check_tensor_bytes), and before a model is built every number the
# metadata declares is checked against the tensors (check_model_state). Together: loading never costs
# more than a small multiple of the file's size.

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
#: the globals a checkpoint's pickle may name: what torch.save writes for namegen, Lightning and the notebook
ALLOWED_GLOBALS = frozenset({"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                             "torch._utils _rebuild_parameter", *(f"torch {s}Storage" for s in _STORAGES)})
#: the largest pickled part of a checkpoint read (namegen's own are under 100 KB)
MAX_PICKLE_BYTES = 1 << 20
MAX_RECORDS = 100_000
_DAMAGED = "use the best.ckpt or last.ckpt that train.py wrote"


def check_torch_file(path: Path, about: str | None = "ckpt") -> int:
    """Check what ``torch.load`` would be asked to do, without doing it; return the bytes of tensor data.

    The file must be a zip archive (torch.save's format since PyTorch 1.6) whose records are stored, not
    compressed, and fit in the file; its pickle at most MAX_PICKLE_BYTES, naming only ALLOWED_GLOBALS."""
    if not zipfile.is_zipfile(path):
        _refuse_other_format(path, about)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            problem = _archive_problem(infos, size)
            if problem is None:
                called = _pickle_problem(archive.read(next(i for i in infos if i.filename.endswith("/data.pkl"))))
    except Exception as exc:  # noqa: BLE001 (zipfile raises many kinds on garbage)
        raise UserError(f"{path} is not a readable checkpoint: it is truncated, damaged or not a torch file "
                        f"({_first_line(exc)}); {_DAMAGED}", about=about) from None
    if problem is not None:
        raise UserError(f"{path} was refused before loading: {problem}; {_DAMAGED}", about=about)
    if called is not None:
        _refuse_call(path, called, about)
    return sum(i.file_size for i in infos if "/data/" in i.filename)


def _refuse_other_format(path: Path, about: str | None) -> None:
    """A file that is no zip archive: a plain pickle naming a global is refused as such; anything else (text,
    a torch file older than PyTorch 1.6, whose header declares storage sizes read before their data) is
    not a readable checkpoint."""
    with open(path, "rb") as f:
        head = f.read(MAX_PICKLE_BYTES)
    problem = None
    try:
        problem = _pickle_problem(head)
    except Exception:  # noqa: BLE001 (not a pickle, or one cut short: said below)
        pass
    if problem is not None:
        _refuse_call(path, problem, about)
    raise UserError(f"{path} is not a readable checkpoint: it is truncated, damaged or not a torch file (not the "
                    f"zip archive torch.save writes); {_DAMAGED}", about=about)


def _refuse_call(path: Path, problem: str, about: str | None) -> None:
    raise UserError(f"{path} was refused and nothing in it was run: {problem}; only checkpoints of tensors and "
                    "plain data are loaded (weights_only=True). Use a checkpoint that train.py wrote", about=about)


def _archive_problem(infos: list[zipfile.ZipInfo], size: int) -> str | None:
    if len(infos) > MAX_RECORDS:
        return f"it holds {len(infos)} records (a checkpoint holds a few hundred)"
    pickles = [i for i in infos if i.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        return f"it holds {len(pickles)} data.pkl records, not 1"
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            return f"record {brief(info.filename)} is compressed (torch.save stores records as they are)"
    declared = sum(i.file_size for i in infos)
    if declared > size:
        return f"its records declare {declared} bytes, more than the file's {size}"
    if pickles[0].file_size > MAX_PICKLE_BYTES:
        return f"its pickled part is {pickles[0].file_size} bytes (namegen reads up to {MAX_PICKLE_BYTES})"
    return None


def _pickle_problem(data: bytes) -> str | None:
    """The first global outside ALLOWED_GLOBALS the pickle names (it would be called when loaded)."""
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        name = arg if op.name in ("GLOBAL", "INST") else " ".join(strings[-2:]) if op.name == "STACK_GLOBAL" else None
        if name is not None and name not in ALLOWED_GLOBALS:
            return f"it would call {brief(name).replace(' ', '.')} when loaded"
        if isinstance(arg, str):
            strings = [*strings[-1:], arg]
    return None


def check_tensor_bytes(obj, data_bytes: int, path: Path, about: str | None = "ckpt") -> None:
    """Every tensor in ``obj`` is a plain CPU tensor, and together they fit in the file's tensor data: a
    tensor that repeats one stored number (stride 0) or one stored tensor used many times is refused."""
    total = 0
    for tensor in _tensors_in(obj):
        if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.is_quantized:
            raise UserError(f"{path} holds a {tensor.layout} {tensor.device.type} tensor; a checkpoint holds "
                            f"dense CPU tensors; {_DAMAGED}", about=about)
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        if total > data_bytes or nbytes > tensor.untyped_storage().nbytes():
            raise UserError(f"{path} was refused: its tensors declare more numbers than the file stores "
                            f"({total} bytes or more, in {data_bytes} bytes of tensor data): repeated or "
                            f"overlapping tensors; {_DAMAGED}", about=about)


def _tensors_in(obj):
    """Each tensor in ``obj`` (dicts, lists, tuples, sets), once however often it is referred to."""
    seen, stack = set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (dict, list, tuple, set, frozenset)):
            stack.extend(item.values() if isinstance(item, dict) else item)


_LAYER_KEY = re.compile(r"layers\.(\d+)\.")


def check_model_state(state: dict, config: Config, vocab: Vocab, path: Path, about: str = "ckpt") -> None:
    """Every number the metadata declares agrees with the tensors present, checked before a model is built
    (so a config that declares n_hidden 10^9 over a few kilobytes of weights builds nothing)."""
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: its state_dict is not a dictionary of named tensors", about=about)
    if len({v.untyped_storage().data_ptr() for v in state.values()}) < len(state):  # one stored tensor, used twice
        raise UserError(f"{path}: its state_dict uses one stored tensor for several weights; the file is damaged "
                        "or was edited", about=about)
    shape = {k: tuple(v.shape) for k, v in state.items()}
    layers = {int(m.group(1)) for k in shape if (m := _LAYER_KEY.match(k))}
    present = {
        "n_layer": (config.n_layer, len(layers), "layers of weights"),
        "vocab": (len(vocab.chars), _dim(shape, "embedding.weight", 0, -2), "characters (embedding.weight's rows less 2)"),
        "n_embd": (config.n_embd, _dim(shape, "embedding.weight", 1), "columns in embedding.weight"),
        "n_hidden": (config.n_hidden, _dim(shape, "head.weight", 1), "columns in head.weight"),
        "layer_norm": (config.layer_norm, "norm.weight" in shape, "a norm.weight present"),
    }
    for field_name, (declared, found, what) in present.items():
        if declared != found:
            raise UserError(f"{path}: its weights do not match its own config and vocabulary: its {field_name} is "
                            f"{brief(declared)} but its tensors have {brief(found)} {what}", about=about)
    _check_shapes(shape, config, len(vocab), path, about)


def _dim(shape: dict, key: str, axis: int, add: int = 0) -> int | None:
    """Dimension ``axis`` of tensor ``key`` (plus ``add``), or None when it has no such tensor or axis."""
    dims = shape.get(key, ())
    return dims[axis] + add if len(dims) == 2 else None


@contextlib.contextmanager
def _initialisers_off():
    """Modules built inside skip ``nn.init.normal_`` (the embedding's), for a model built on the meta device
    only for its shapes: on meta tensors it runs torch's reference implementation, whose first call imports
    torch's compiler, a second of every ``sample``'s start-up."""
    normal = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        torch.nn.init.normal_ = normal


def _check_shapes(shape: dict, config: Config, vocab_size: int, path: Path, about: str) -> None:
    """The tensors' shapes are exactly those of the model the config makes (built on the meta device:
    no memory; its size is now bounded by the tensors the numbers were checked against)."""
    with torch.device("meta"), _initialisers_off():
        expected = {k: tuple(v.shape) for k, v in GRULanguageModel.from_config(config, vocab_size).state_dict().items()}
    for key in sorted(set(expected) | set(shape)):
        if shape.get(key) != expected.get(key):
            got = "absent" if key not in shape else f"of shape {shape[key]}"
            want = "no such tensor" if key not in expected else f"shape {expected[key]}"
            raise UserError(f"{path}: its weights do not match its own config and vocabulary ({brief(key)} is "
                            f"{got}; the config makes {want})", about=about)


def from_checkpoint_dict(obj: dict, path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a namegen checkpoint dictionary (as ``read_checkpoint`` returns it)."""
    meta = obj.get("namegen")
    if not isinstance(meta, dict) or "state_dict" not in obj:
        raise UserError(
            f"{path} is not a namegen checkpoint (no 'namegen' entry); train one with train.py, or give a "
            "notebook .pth (state_dict, model_class, n_classes, ...)",
            about="ckpt",
        )
    vocab, config, state = checked_model_parts(obj, path)
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    load_weights(model, state, f"{path}: its weights do not match its own config and vocabulary", path)
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, config=config, meta=meta, path=path)


def checked_model_parts(obj: dict, path: Path, about: str = "ckpt") -> tuple[Vocab, Config, dict]:
    """The vocabulary, config and weights (``"model."`` stripped) of a namegen checkpoint dictionary, every
    number its metadata declares checked against its tensors: nothing is built or allocated here."""
    meta = obj["namegen"]
    vocab, config = _vocab_and_config(meta, path, about)
    state = _model_state(obj.get("state_dict"), path, about)
    check_model_state(state, config, vocab, path, about)
    _check_meta_fields(meta, state, path, about)
    return vocab, config, state


def _vocab_and_config(meta: dict, path: Path, about: str = "ckpt") -> tuple[Vocab, Config]:
    try:
        return Vocab(meta["vocab"]), Config.from_dict(meta["config"], source=f"{path}: config")
    except (KeyError, TypeError, ValueError, UserError) as exc:
        detail = f"no {brief(exc.args[0])} entry" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"{path} has an inconsistent vocabulary or config ({detail})", about=about) from None


def _model_state(state, path: Path, about: str) -> dict:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UserError(f"{path}: its state_dict is not a dictionary of named tensors", about=about)
    return {k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}


def _check_meta_fields(meta: dict, state: dict, path: Path, about: str) -> None:
    """The metadata's other entries: their types, and num_parameters against the tensors."""
    def bad(name: str, expected: str):
        return UserError(f"{path}: its {name} is {brief(meta.get(name))}; expected {expected}", about=about)

    if meta.get("format", FORMAT) != FORMAT or isinstance(meta.get("format"), bool):
        raise bad("format", f"{FORMAT} (a newer namegen may have written it: upgrade namegen)")
    if meta.get("start_token", END) not in (0, 1) or isinstance(meta.get("start_token"), bool):
        raise bad("start_token", "0 (padding, notebook models) or 1 ('.')")
    if not (meta.get("size") is None or isinstance(meta["size"], str) and len(meta["size"]) <= 100):
        raise bad("size", "a short name such as small")
    data = meta.get("data")
    if data is not None and not (isinstance(data, dict) and all(
            data.get(k) is None or isinstance(data[k], t) and not isinstance(data[k], bool)
            for k, t in (("path", str), ("sha256", str), ("n_names", int)))):
        raise bad("data", "{path: text, sha256: text, n_names: integer}")
    if meta.get("case", AS_IS) not in (AS_IS, TITLE):
        raise bad("case", f"{TITLE} or {AS_IS}")
    if not isinstance(meta.get("base") or {}, dict):
        raise bad("base", "a record of the model the run started from")
    count = sum(t.numel() for t in state.values())
    if "num_parameters" in meta and meta["num_parameters"] != count:
        raise bad("num_parameters", f"{count}, the numbers its tensors hold")


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
    check_training_state(ckpt, path)
    return ckpt


def check_training_state(ckpt: dict, path: Path) -> None:
    """What resuming reads beyond the weights: the weights (and the EMA's trained ones) against the config,
    and the epoch, a count."""
    checked_model_parts(ckpt, path, about="resume")
    if "current_model_state" in ckpt:
        current = _model_state(ckpt["current_model_state"], path, "resume")
        vocab, config = _vocab_and_config(ckpt["namegen"], path, "resume")
        check_model_state(current, config, vocab, path, about="resume")
    epoch = ckpt["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 10**7:
        raise UserError(f"{path}: its epoch is {brief(epoch)}; expected a count of epochs", about="resume")
