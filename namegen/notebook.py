"""The GRU notebook's ``.pth`` format, its one home: recognise a file, map its weights onto
``GRULanguageModel``, convert it into a namegen checkpoint.

The notebook's ``save_model`` writes a plain dictionary::

    {"state_dict": model.state_dict(), "model_class": "GRU_SmallModel" | "GRU_MediumModel" | "GRU_LargeModel",
     "n_classes": 28, "embd_dim": 64, "hidden_dim": 128, "timestamp": "2025-12-11 20:34:52", "version": 1}

Tensors and plain types only, so ``torch.load(weights_only=True)`` reads it.
The file is recognised by those keys, never by its name. Its state_dict maps
one to one onto namegen's (same cell, same parameter names)::

    embedding.weight                      -> embedding.weight
    gru.grucell.<p>           (small)     -> layers.0.<p>
    gru_layer_{i}.grucell.<p> (medium/large) -> layers.{i-1}.<p>
    norm.weight, norm.bias    (large)     -> norm.weight, norm.bias
    linear.linear_projection.weight/bias  -> head.weight/bias

Two things differ from a model trained by namegen, and are recorded in the
metadata so every loader honours them:

* **Start token 0.** The notebook trained on inputs that begin with a name's
  first letter and sampled from a padding token (``start_token=0``); it never
  saw the ``.`` start token namegen uses. A notebook model therefore samples
  (and scores) from padding, exactly as the notebook did: ``meta["start_token"] == 0``.
* **Vocabulary.** The notebook hard-codes ``n_classes = 28``: padding, ``.``
  and the 26 letters of names.txt, sorted, from 2. namegen's vocabulary for
  that file is the same mapping; it is written out explicitly here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from namegen.checkpoint import (
    LoadedModel, build_meta, check_model_state, load_weights, read_checkpoint, write_checkpoint,
)
from namegen.config import Config
from namegen.data import PAD, Vocab, sha256_of
from namegen.errors import UserError, brief
from namegen.model import GRULanguageModel

#: the 26 characters of names.txt, which the notebook's ``stoi`` maps to 2..27
NOTEBOOK_CHARS = list("abcdefghijklmnopqrstuvwxyz")
NOTEBOOK_N_CLASSES = len(NOTEBOOK_CHARS) + 2  # + padding (0) and '.' (1)

#: keys of the dictionary the notebook's save_model writes
NOTEBOOK_KEYS = ("state_dict", "model_class", "n_classes", "embd_dim", "hidden_dim", "timestamp", "version")
_REQUIRED = ("state_dict", "model_class", "n_classes", "embd_dim", "hidden_dim")

#: the notebook's GRU family. Dropout is the class default that the notebook's
#: load_model gets (it never passes one; GRU_SmallModel ignores its argument);
#: the recipe columns are what the notebook ran (its DataLoaders used batch 64,
#: a constant learning rate, no clipping, no seed).
NOTEBOOK_CLASSES = {
    "GRU_SmallModel": dict(size="small", n_layer=1, layer_norm=False, dropout=0.0,
                           max_epochs=35, lr=1e-3, optimizer="adam", weight_decay=0.0),
    "GRU_MediumModel": dict(size="medium", n_layer=2, layer_norm=False, dropout=0.1,
                            max_epochs=40, lr=5e-4, optimizer="adam", weight_decay=0.0),
    "GRU_LargeModel": dict(size="large", n_layer=3, layer_norm=True, dropout=0.2,
                           max_epochs=60, lr=3e-4, optimizer="adamw", weight_decay=0.01),  # AdamW's default
}
#: the notebook's generate_names(max_len=20): the longest name it could print
NOTEBOOK_MAX_LEN = 20
NOTEBOOK_START_TOKEN = PAD
#: one line for stderr wherever a notebook model is sampled
START_NOTE = (
    "note: {path} is a notebook model ({model_class}); it never saw a start token, "
    "so sampling starts from padding (token 0), as the notebook's generate_names did"
)


def is_notebook_checkpoint(obj) -> bool:
    """True for the dictionary the notebook's ``save_model`` writes (judged by its keys)."""
    return isinstance(obj, dict) and "namegen" not in obj and "model_class" in obj and "state_dict" in obj


def _layer_prefixes(model_class: str) -> list[str]:
    if model_class == "GRU_SmallModel":
        return ["gru.grucell."]
    return [f"gru_layer_{i + 1}.grucell." for i in range(NOTEBOOK_CLASSES[model_class]["n_layer"])]


def key_map(model_class: str) -> dict[str, str]:
    """Notebook state_dict key -> namegen state_dict key, for one ``model_class``."""
    spec = NOTEBOOK_CLASSES[model_class]
    cell = ["Wx.weight", "Wx.bias", "Wh.weight", "Wzx.weight", "Wzx.bias", "Wzh.weight", "bias_z",
            "Wrx.weight", "Wrx.bias", "Wrh.weight", "bias_r"]
    mapping = {"embedding.weight": "embedding.weight"}
    for i, prefix in enumerate(_layer_prefixes(model_class)):
        mapping.update({prefix + p: f"layers.{i}.{p}" for p in cell})
    if spec["layer_norm"]:
        mapping.update({"norm.weight": "norm.weight", "norm.bias": "norm.bias"})
    mapping.update({"linear.linear_projection.weight": "head.weight", "linear.linear_projection.bias": "head.bias"})
    return mapping


def _int_field(obj: dict, key: str, path) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{path}: notebook file has {key}={brief(value)}; expected a positive integer")
    return value


def notebook_config(model_class: str, embd_dim: int, hidden_dim: int) -> Config:
    spec = NOTEBOOK_CLASSES[model_class]
    return Config(
        n_layer=spec["n_layer"], n_embd=embd_dim, n_hidden=hidden_dim, dropout=spec["dropout"],
        layer_norm=spec["layer_norm"], max_epochs=spec["max_epochs"], lr=spec["lr"], batch_size=64,
        block_size=NOTEBOOK_MAX_LEN, optimizer=spec["optimizer"], weight_decay=spec["weight_decay"],
        lr_schedule="constant", grad_clip=0.0, early_stopping_patience=0,
    )


def from_notebook(obj: dict, path: str | Path, device: str | torch.device = "cpu") -> tuple[LoadedModel, dict]:
    """Build the model from a notebook checkpoint dictionary.

    Returns ``(loaded, state_dict)``: ``loaded.meta`` in the format of a namegen
    checkpoint's ``"namegen"`` entry, ``state_dict`` namegen's keys bound to the
    file's own tensors (not copies). Raises UserError, one line, naming what is wrong.
    """
    path = Path(path)
    model_class, n_classes, embd_dim, hidden_dim = _check_fields(obj, path)
    state = _renamed_state(obj, model_class, path)
    _check_declared(state, model_class, {"n_classes": n_classes, "embd_dim": embd_dim, "hidden_dim": hidden_dim}, path)
    config = notebook_config(model_class, embd_dim, hidden_dim)
    vocab = Vocab(NOTEBOOK_CHARS)
    check_model_state(state, config, vocab, path, about="ckpt")  # every shape, before anything is built
    model = GRULanguageModel.from_config(config, vocab_size=n_classes)
    load_weights(model, state, f"{path}: its tensors do not fit {model_class} with embd_dim={embd_dim}, "
                 f"hidden_dim={hidden_dim}", path)
    meta = build_meta(
        config, vocab, model.num_parameters(), NOTEBOOK_CLASSES[model_class]["size"],
        # the notebook read a names.txt that the .pth does not identify: --new-only needs --data
        data=None,
        start_token=NOTEBOOK_START_TOKEN,
        source={
            "kind": "notebook",
            "file": str(path.resolve()),
            "sha256": sha256_of(path) if path.is_file() else None,
            "model_class": model_class,
            "timestamp": _plain(obj.get("timestamp")),
            "version": _plain(obj.get("version")),
        },
    )
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, config=config, meta=meta, path=path), state


def _check_fields(obj: dict, path: Path) -> tuple[str, int, int, int]:
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise UserError(f"{path}: notebook file lacks {', '.join(missing)} (save_model writes {', '.join(NOTEBOOK_KEYS)})")
    model_class = obj["model_class"]
    if not isinstance(model_class, str) or model_class not in NOTEBOOK_CLASSES:
        raise UserError(
            f"{path}: unknown model_class {brief(model_class)}; namegen reads the notebook's "
            f"{', '.join(NOTEBOOK_CLASSES)}"
        )
    n_classes = _int_field(obj, "n_classes", path)
    if n_classes != NOTEBOOK_N_CLASSES:
        raise UserError(
            f"{path}: n_classes is {n_classes}, but the notebook's vocabulary (names.txt: padding, '.', a-z) "
            f"has {NOTEBOOK_N_CLASSES} symbols; namegen cannot tell which characters this model was trained on"
        )
    return model_class, n_classes, _int_field(obj, "embd_dim", path), _int_field(obj, "hidden_dim", path)


def _check_declared(state: dict, model_class: str, declared: dict, path: Path) -> None:
    """n_classes, embd_dim and hidden_dim against the tensors present, before any model is built."""
    embedding, head = tuple(state["embedding.weight"].shape), tuple(state["head.weight"].shape)
    found = {"n_classes": (embedding[:1], "rows in embedding.weight"),
             "embd_dim": (embedding[1:2], "columns in embedding.weight"),
             "hidden_dim": (head[1:2], "columns in linear.linear_projection.weight")}
    for key, value in declared.items():
        if found[key][0] != (value,):
            raise UserError(f"{path}: its tensors do not fit {model_class} with embd_dim={declared['embd_dim']}, "
                            f"hidden_dim={declared['hidden_dim']}: {key} is {value}, but there are "
                            f"{found[key][0][0] if found[key][0] else 'no'} {found[key][1]}", about="ckpt")


def _renamed_state(obj: dict, model_class: str, path: Path) -> dict:
    """The file's state_dict under namegen's keys; UserError when its keys are not the class's."""
    state = obj["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: notebook file's state_dict is not a dictionary of tensors")
    mapping = key_map(model_class)
    absent = [k for k in mapping if k not in state]
    extra = [brief(k) for k in sorted(set(state) - set(mapping))]
    if absent or extra:
        parts = []
        if absent:
            parts.append(f"missing {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise UserError(f"{path}: its state_dict does not match {model_class} ({'; '.join(parts)})")
    return {mapping[k]: v for k, v in state.items()}


def convert(src: str | Path, dst: str | Path, force: bool = False) -> dict:
    """Convert notebook file ``src`` to the namegen checkpoint ``dst``; returns the metadata written.

    The output holds ``{"namegen": meta, "state_dict": {"model.<key>": tensor}}``, the
    layout train.py writes, so every loader reads it like any other checkpoint: the
    notebook's tensors unchanged under namegen's names, the notebook's vocabulary and
    config, ``start_token: 0`` and where it came from (``source``).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise UserError(f"{src} not found; give the notebook's .pth file (saved_models/GRU_..._v1.pth)")
    obj = read_checkpoint(src, about=None)
    if not is_notebook_checkpoint(obj):
        what = "already a namegen checkpoint" if "namegen" in obj else "not a notebook checkpoint"
        raise UserError(
            f"{src} is {what}: the notebook's save_model writes a dictionary with "
            "state_dict, model_class, n_classes, embd_dim, hidden_dim, timestamp and version"
        )
    if dst.is_dir():
        raise UserError(f"{dst} is a directory; give the output file, e.g. {dst / (src.stem + '.ckpt')}")
    if dst.exists() and not force:
        raise UserError(f"{dst} exists", about="force")  # the caller says how to replace it
    if not dst.parent.is_dir():
        raise UserError(f"{dst.parent} does not exist; create it first")
    if dst.resolve() == src.resolve():
        raise UserError(f"{dst} is the input file; write the checkpoint elsewhere")
    loaded, state = from_notebook(obj, src)
    write_checkpoint(dst, loaded.meta, state, about="dst")
    return loaded.meta


def _plain(value):
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
