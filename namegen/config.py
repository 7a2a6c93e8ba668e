"""Model and training configuration: one YAML file per size in the top-level ``configs/``.

A config carries every column of the notebook's table plus the parts of the
training recipe that namegen adds (weight decay, learning-rate schedule,
gradient clipping, early stopping). Loading validates it: an unknown key, a
missing key or a value of the wrong type is an error, never silently ignored.

``block_size`` keeps the notebook's name but has one documented meaning here:
the longest name, in characters, that the model is sized for. It is the
default ``--max-len`` when sampling, and training warns about (but keeps whole)
any name longer than it. A GRU has no fixed context window, so nothing is ever
truncated to fit it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from namegen.errors import UserError, brief



def _config_dir() -> Path:
    """``configs/`` at the top of a checkout; in an installed namegen, the same files shipped as
    package data (``pyproject.toml`` maps ``configs/`` to ``namegen/configs`` in the build)."""
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "small.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "configs"


CONFIG_DIR = _config_dir()
SIZES = ("small", "medium", "large")
#: the recipe ``--init-from`` runs take by default: training keys only, the architecture is the base model's
FINETUNE = "finetune"
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
#: the dropout rates, each in [0, 1)
DROPOUTS = ("dropout", "variational_dropout", "weight_drop", "embd_dropout", "layer_dropout")
#: the keys that fix the model's shape and parameter count (a recipe search may not change them)
ARCHITECTURE = ("n_layer", "n_embd", "n_hidden", "layer_norm")
#: the largest value of each integer key: far beyond any useful model, far below what a file's numbers
#: could otherwise ask of memory (n_hidden 10^9) or time (block_size 10^12 is the default --max-len)
LIMITS = {"n_layer": 64, "n_embd": 16384, "n_hidden": 16384, "max_epochs": 100_000, "batch_size": 1 << 20,
          "block_size": 10_000, "early_stopping_patience": 100_000, "seed": 2**32 - 1, "split_seed": 2**32 - 1}
#: the largest config file read (the shipped ones are under 2 KB)
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Config:
    # architecture
    n_layer: int  # stacked GRU layers
    n_embd: int  # character embedding width
    n_hidden: int  # GRU hidden-state width
    dropout: float  # state dropout: each step's carried hidden state, a fresh mask per step (the notebook's)
    layer_norm: bool  # LayerNorm before the output head (large)
    # training recipe
    max_epochs: int
    lr: float
    batch_size: int
    block_size: int  # longest name (characters) the model is sized for; see module doc
    optimizer: str  # adam | adamw
    weight_decay: float
    lr_schedule: str  # constant | cosine (annealed per step to lr * 0.1)
    grad_clip: float  # gradient-norm clipping, 0 = off
    early_stopping_patience: int  # epochs without val/loss improvement, 0 = off
    seed: int = 42  # initialisation, shuffling and dropout masks (and the split, unless split_seed is set)
    split_seed: int | None = None  # the 80/20 train/validation split; None: seed
    # regularisation made for recurrent nets (namegen.model.Regularisation); 0 = off, the notebook's way
    variational_dropout: float = 0.0  # one mask per name on the state entering the hidden matmuls
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices, a fresh mask per batch
    embd_dropout: float = 0.0  # on the embedding's output
    layer_dropout: float = 0.0  # on each layer's output, into the next layer and the head
    # weight averaging (Lightning's EMAWeightAveraging), 0 = off: validation and the checkpoints use an
    # exponential moving average of the weights, updated every step with this decay
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_ranges(self)
        positive = ("n_layer", "n_embd", "n_hidden", "max_epochs", "batch_size", "block_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"config: {name} must be a positive integer, got {brief(getattr(self, name))}")
        for name in DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"config: {name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"config: ema_decay must be in [0, 1) (0 = no weight averaging), got {self.ema_decay}")
        if self.lr <= 0:
            raise UserError(f"config: lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"config: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(
                f"config: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.weight_decay < 0 or self.grad_clip < 0 or self.early_stopping_patience < 0:
            raise UserError("config: weight_decay, grad_clip and early_stopping_patience must be >= 0")

    @property
    def data_seed(self) -> int:
        """The seed of the train/validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "Config":
        """A copy with the given fields changed; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "Config":
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a mapping of keys to values")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(k if isinstance(k, str) and len(k) <= 40 else brief(k) for k in set(raw) - set(known))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise UserError(f"{source}: unknown key(s) {shown}; allowed: {', '.join(known)}")
        missing = [
            f.name for f in fields(cls)
            if f.name not in raw and f.default is dataclasses.MISSING
        ]
        if missing:
            raise UserError(f"{source}: missing key(s) {', '.join(missing)}")
        values = {}
        for name, value in raw.items():
            expected = known[name].type
            values[name] = _coerce(value, expected, f"{source}: {name}")
        return cls(**values)


def _check_ranges(config: Config) -> None:
    """Every float finite (a NaN passes ``lr <= 0``), every integer within LIMITS, seeds not negative."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config: {f.name} must be a finite number, got {value}")
        if f.name in LIMITS and value is not None and value > LIMITS[f.name]:
            raise UserError(f"config: {f.name} is at most {LIMITS[f.name]}, got {brief(value)}")
        if f.name in ("seed", "split_seed") and value is not None and value < 0:
            raise UserError(f"config: {f.name} must be 0 or more, got {brief(value)}")


def _coerce(value, expected: str, where: str):
    """Check a YAML value against a field's annotated type (annotations are strings here)."""
    if expected.endswith(" | None"):
        if value is None:
            return None
        expected = expected.removesuffix(" | None")
    if expected == "bool":
        if isinstance(value, bool):
            return value
    elif expected == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected == "str":
        if isinstance(value, str):
            return value
    raise UserError(f"{where} must be of type {expected}, got {brief(value)}")


def run_name_of(size_or_path: str) -> str:
    """A run's name: the size (``small``), or the stem of a config file (``my.yaml`` -> ``my``)."""
    return size_or_path if size_or_path in SIZES else Path(size_or_path).stem


def config_path(size_or_path: str) -> Path:
    """The file ``--model`` names: ``configs/<size>.yaml`` (the checkout's, or the installed package's
    copy) for a size, else the ``.yaml`` path as given."""
    if size_or_path in SIZES or size_or_path == FINETUNE:
        return CONFIG_DIR / f"{size_or_path}.yaml"
    path = Path(size_or_path)
    if path.suffix not in (".yaml", ".yml"):
        raise UserError(
            f"unknown size {size_or_path!r}; choose one of {', '.join(SIZES)} or give a .yaml file", about="model"
        )
    return path


def load_config(size_or_path: str, base: Config | None = None) -> Config:
    """Load ``configs/<size>.yaml``, or a YAML file given by path.

    With ``base`` (the config of the model a run starts from), the file is a recipe: the architecture
    (``ARCHITECTURE``) is always the base's, and ``block_size`` the base's unless the file sets it."""
    path = config_path(size_or_path)
    if not path.is_file():
        raise UserError(f"config file {path} not found", about="model")
    raw = read_yaml(path, about="model") or {}
    if base is not None and isinstance(raw, dict):
        raw = {"block_size": base.block_size, **raw, **{key: getattr(base, key) for key in ARCHITECTURE}}
    elif isinstance(raw, dict) and raw and set(raw) <= {f.name for f in fields(Config)} - set(ARCHITECTURE):
        raise UserError(f"{path} is a recipe without an architecture ({', '.join(ARCHITECTURE)}): use it "
                        "with --init-from CKPT, which gives the architecture", about="model")
    return Config.from_dict(raw, source=str(path))


def read_yaml(path: Path, about: str | None = "model"):
    """``yaml.safe_load`` of a file of at most MAX_CONFIG_BYTES; whatever is wrong with it (not UTF-8, not
    YAML, nested too deep, an integer too long to read) is one UserError naming the file."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path} is {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES}", about=about)
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start + 1}); save it as UTF-8", about=about) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})", about=about) from None
    except RecursionError:
        raise UserError(f"{path}: its YAML is nested too deep to read", about=about) from None
    except ValueError as exc:  # yaml's int() of a number beyond sys.get_int_max_str_digits()
        raise UserError(f"{path}: a value cannot be read ({str(exc)[:80]})", about=about) from None


def default_cache_dir() -> Path:
    """namegen's cache (onnxruntime-web for the page, the compiled recurrence): ``$NAMEGEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/namegen``, else ``~/.cache/namegen``."""
    if os.environ.get("NAMEGEN_CACHE_DIR"):
        return Path(os.environ["NAMEGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "namegen"
