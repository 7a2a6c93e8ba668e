"""Export a trained model as ONNX: one GRU step, for sampling and scoring without PyTorch.

    from namegen.export import export_onnx
    info = export_onnx("checkpoints/small/best.ckpt", "small.onnx")  # ExportInfo(path, n_layer, hidden, ...)

The graph is a single step of the model, so a runtime drives the recurrence
itself (``examples/onnx_sample.py`` does it in numpy with ``onnxruntime``)::

    inputs   token   int64   [batch]                    the current token id
             h       float32 [n_layer, batch, hidden]   the state (zeros before the first step)
    outputs  logits  float32 [batch, vocab]             scores of the next token (not normalised)
             h_next  float32 [n_layer, batch, hidden]   the state after this token

``batch`` is dynamic. A name is scored or sampled from ``start_token`` (``.`` = 1
for namegen models, padding = 0 for notebook models) until ``end_token`` (1).
The model's ``metadata_props`` carry everything a runtime needs: ``vocab`` (JSON
list of the characters of ids 2, 3, ...), ``pad_token``, ``end_token``,
``start_token``, ``n_layer``, ``hidden``, ``block_size`` (the default longest
name), ``size``, ``namegen_version``, ``format`` (all strings, as ONNX stores them).

This module needs torch (to trace the model) and the optional ``onnx`` and
``onnxscript`` packages (the exporter); it imports no training code itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from namegen import __version__
from namegen.api import load_model
from namegen.checkpoint import write_bytes
from namegen.data import END, PAD
from namegen.errors import UserError
from namegen.model import GRULanguageModel

#: ``metadata_props["format"]``: bumped if the graph's interface ever changes
ONNX_FORMAT = "namegen-gru-step/1"
#: the opset written when none is asked for: the exporter's own (torchlib) opset, so no
#: version conversion runs; onnxruntime reads it from 1.14 on
DEFAULT_OPSET = 18
#: the lowest opset accepted: LayerNormalization (the large model's norm) exists from 17
MIN_OPSET = 17
_INSTALL = "pip install namegen[export] (or: pip install onnx onnxscript)"


@dataclass(frozen=True)
class ExportInfo:
    """What ``export_onnx`` wrote."""

    path: Path
    n_layer: int
    hidden: int
    vocab_size: int  # token ids, padding and '.' included
    start_token: int  # 1 ('.'), or 0 (padding) for notebook models
    parameters: int
    opset: int


class OnnxStep(nn.Module):
    """One step of ``GRULanguageModel``, written for export: token (B,), h (n_layer, B, H) ->
    logits (B, V), h_next (n_layer, B, H).

    It steps each layer's ``GRUCell.forward`` (the cell's equations) instead of
    calling ``model(token[:, None], h)``: the model's fused recurrence writes into
    preallocated buffers in place, which the TorchScript exporter silently drops
    (its graph had no Sigmoid/Tanh) and the dynamo exporter only turns into
    scatters. Same math as ``model.forward`` in eval mode (no dropout); the
    tests check the exported graph against ``NameGenerator.score``.
    """

    def __init__(self, model: GRULanguageModel):
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.model.embedding(token)  # (B, n_embd)
        states = []
        for layer, h_l in zip(self.model.layers, h.unbind(0)):
            x = layer(x, h_l)  # (B, H)
            states.append(x)
        logits = self.model.head(self.model.norm(x))  # (B, V)
        return logits, torch.stack(states)


def export_onnx(ckpt: str | Path, out: str | Path, *, force: bool = False, opset: int | None = None) -> ExportInfo:
    """Write checkpoint ``ckpt`` (a namegen ``.ckpt`` or a notebook ``.pth``) to ``out`` as
    a one-step ONNX model (see the module doc), atomically.

    Refuses to replace an existing ``out`` unless ``force``. ``opset`` defaults to
    ``DEFAULT_OPSET``. Raises UserError, one line naming the file or value, for
    anything the caller can fix (a missing or unreadable checkpoint, an existing
    output, an opset out of range, onnx not installed).
    """
    ckpt, out = Path(ckpt), Path(out)
    onnx = _import_onnx()
    opset = _check_opset(opset, onnx)
    if not ckpt.exists():
        raise UserError(f"{ckpt} not found; give the path of a .ckpt file (train.py prints it) or a notebook .pth")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give the path of the .onnx file to write")
    if out.exists():
        if _same_file(out, ckpt):
            raise UserError(f"{out} is the checkpoint being exported; choose another file for the ONNX model")
        if not force:
            raise UserError(f"{out} exists", about="force")  # the caller says how to replace it
    loaded = load_model(ckpt, "cpu")
    model = loaded.model.float().eval()
    proto = _export_step(model, opset)

    config = loaded.meta.get("config") or {}
    metadata = {
        "format": ONNX_FORMAT,
        "vocab": json.dumps(loaded.vocab.chars, ensure_ascii=False),
        "pad_token": PAD,
        "end_token": END,
        "start_token": loaded.start_token,
        "n_layer": model.n_layer,
        "hidden": model.n_hidden,
        "n_embd": model.n_embd,
        "vocab_size": model.vocab_size,
        "block_size": config.get("block_size", ""),
        "size": loaded.meta.get("size") or "",
        "case": loaded.case,
        "namegen_version": __version__,
        "source": ckpt.name,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    proto.doc_string = (
        "namegen GRU language model, one step: token int64 [batch], h float32 [n_layer, batch, hidden] -> "
        "logits float32 [batch, vocab], h_next float32 [n_layer, batch, hidden]. Start from start_token with "
        "h = 0; vocab lists the characters of ids 2.. (0 = padding, 1 = '.', the end of a name)."
    )
    onnx.checker.check_model(proto, full_check=True)  # a failure here is a bug, not the user's: let it raise

    write_bytes(out, proto.SerializeToString(), about="out_file")  # a refused write: one line, no temporary
    return ExportInfo(
        path=out, n_layer=model.n_layer, hidden=model.n_hidden, vocab_size=model.vocab_size,
        start_token=loaded.start_token, parameters=model.num_parameters(), opset=opset,
    )


# ------------------------------------------------------------------------------------------- helpers


def _import_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError as exc:
        raise UserError(f"exporting to ONNX needs the optional package {exc.name or 'onnx'}: {_INSTALL}") from None
    return onnx


def _check_opset(opset, onnx) -> int:
    if opset is None:
        return DEFAULT_OPSET
    highest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise UserError(
            f"opset must be an integer from {MIN_OPSET} to {highest} (the installed onnx's newest), got {opset!r}; "
            f"{DEFAULT_OPSET} is the default"
        )
    return opset


def _export_step(model: GRULanguageModel, opset: int):
    """The one-step graph as an ``onnx.ModelProto`` (torch's dynamo exporter, nothing printed)."""
    batch = 2  # any size but 0 and 1, which torch.export would specialise on
    example = (torch.zeros(batch, dtype=torch.long), model.init_hidden(batch))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            OnnxStep(model).eval(),
            example,
            None,  # return the ONNXProgram: metadata is added before anything is written
            dynamo=True,
            opset_version=opset,
            input_names=["token", "h"],
            output_names=["logits", "h_next"],
            dynamic_shapes={"token": {0: "batch"}, "h": {1: "batch"}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter keeps its own opset when it cannot convert, and only logs it
        raise UserError(f"opset {opset}: this model cannot be written at that opset (the exporter produced "
                        f"{written}); use {DEFAULT_OPSET}, the default")
    return proto


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's warnings and log lines (torch.export, onnxscript's optimiser and converter)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "torch.fx",
                                                     "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
