"""namegen.export (issue 12): a one-step ONNX graph that onnxruntime drives without PyTorch.

Each tiny random model is exported once (module-scoped fixture); the graph is
then stepped with onnxruntime through whole names and must score them exactly
as ``NameGenerator.score`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from namegen import NameGenerator
from namegen.config import load_config
from namegen.checkpoint import build_meta, write_checkpoint
from namegen.data import Vocab
from namegen.errors import UserError
from namegen.model import GRULanguageModel
from namegen.notebook import key_map

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from namegen.export import DEFAULT_OPSET, ONNX_FORMAT, export_onnx  # noqa: E402  (after the skips)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "onnx_sample.py"

LETTERS = list("abcdefghijklmnopqrstuvwxyz")
ODD_CHARS = sorted(set("abcdeéz-' "))  # non-ASCII, punctuation and a space: JSON round trip of the vocab
NAMES = {
    "small": ["emma", "olivia", "x", "christopher", "ava", "zz", "mia"],
    "deep": ["é", "a-b", "d'e z", "zeé", "abcde", "ea", "c"],
}
NAMES["notebook"] = NAMES["small"]


def _namegen_checkpoint(path: Path, chars: list[str], **arch) -> Path:
    """A tiny random namegen checkpoint."""
    config = load_config("small").replace(n_embd=8, n_hidden=16, **arch)
    model = GRULanguageModel.from_config(config, vocab_size=len(chars) + 2)
    meta = build_meta(config, Vocab(chars), model.num_parameters(), size="tiny")
    return write_checkpoint(path, meta, model.state_dict())


def _notebook_checkpoint(path: Path) -> Path:
    """A notebook ``.pth`` (GRU_SmallModel, 28 classes), as its save_model writes it: start token 0."""
    model = GRULanguageModel(28, n_layer=1, n_embd=8, n_hidden=16)
    to_notebook = {ours: theirs for theirs, ours in key_map("GRU_SmallModel").items()}
    state = {to_notebook[k]: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model_class": "GRU_SmallModel", "n_classes": 28, "embd_dim": 8,
                "hidden_dim": 16, "timestamp": "2025-12-11 20:34:52", "version": 1}, path)
    return path


@pytest.fixture(scope="module")
def export_of(tmp_path_factory):
    """kind -> (kind, checkpoint, onnx path, ExportInfo), each kind exported once per module: "small"
    (the small config, 1 layer), "deep" (2 layers, LayerNorm, dropout in the config, an odd
    vocabulary) and "notebook" (a notebook .pth: start token 0)."""
    done = {}

    def get(kind):
        if kind not in done:
            tmp = tmp_path_factory.mktemp(kind)
            torch.manual_seed({"small": 0, "deep": 1, "notebook": 2}[kind])
            if kind == "small":
                ckpt = _namegen_checkpoint(tmp / "tiny.ckpt", LETTERS)
            elif kind == "deep":
                ckpt = _namegen_checkpoint(tmp / "deep.ckpt", ODD_CHARS, n_layer=2, layer_norm=True, dropout=0.2)
            else:
                ckpt = _notebook_checkpoint(tmp / "GRU_alpha_model_v1.pth")
            done[kind] = kind, ckpt, tmp / "model.onnx", export_onnx(ckpt, tmp / "model.onnx")
        return done[kind]

    return get


@pytest.fixture(params=["small", "deep", "notebook"])
def exported(request, export_of):
    return export_of(request.param)


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_score(session, names: list[str]) -> list[float]:
    """Per-name NLL (nats) with the graph stepped by hand: start token, then each character;
    -log_softmax of every next target, end token included. Names of any length in one batch."""
    meta = session.get_modelmeta().custom_metadata_map
    stoi = {c: i + 2 for i, c in enumerate(json.loads(meta["vocab"]))}
    start, end = int(meta["start_token"]), int(meta["end_token"])
    B, T = len(names), max(len(n) for n in names) + 1
    x = np.full((B, T), end, dtype=np.int64)  # inputs after a name's end are never scored
    y = np.full((B, T), -1, dtype=np.int64)  # -1: no target
    for i, name in enumerate(names):
        ids = [stoi[c] for c in name]
        x[i, : len(ids) + 1] = [start, *ids]
        y[i, : len(ids) + 1] = [*ids, end]
    h = np.zeros((int(meta["n_layer"]), B, int(meta["hidden"])), dtype=np.float32)
    nll = np.zeros(B)
    for t in range(T):
        logits, h = session.run(["logits", "h_next"], {"token": x[:, t], "h": h})
        assert logits.shape == (B, len(stoi) + 2) and h.shape[1] == B
        logits = logits.astype(np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        live = y[:, t] >= 0
        nll[live] -= logp[live, y[live, t]]
    return nll.tolist()


def test_onnx_steps_score_names_as_namegen_does(exported):
    """Stepping the graph through whole names gives NameGenerator.score's NLL to 1e-4 nats,
    one name at a time (batch 1) and all seven at once (batch 7, mixed lengths)."""
    kind, ckpt, path, _ = exported
    names = NAMES[kind]
    expected = NameGenerator.from_checkpoint(ckpt).score(names)
    session = _session(path)
    one_by_one = [_ort_score(session, [name])[0] for name in names]
    batched = _ort_score(session, names)
    assert len(names) == 7
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-4)


def test_graph_interface_and_metadata(exported):
    """token int64 [batch], h float32 [n_layer, batch, hidden] -> logits [batch, vocab], h_next;
    the metadata carries the vocabulary, the special tokens and the sizes; ExportInfo agrees."""
    kind, ckpt, path, info = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    n_layer, vocab_size = {"small": (1, 28), "deep": (2, len(ODD_CHARS) + 2), "notebook": (1, 28)}[kind]

    def sig(values):
        return {v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values}

    F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert sig(model.graph.input) == {"token": (I64, ["batch"]), "h": (F32, [n_layer, "batch", 16])}
    assert sig(model.graph.output) == {"logits": (F32, ["batch", vocab_size]), "h_next": (F32, [n_layer, "batch", 16])}
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    assert not any(n.op_type in ("Loop", "Scan") for n in model.graph.node)  # one step, no recurrence inside

    meta = {p.key: p.value for p in model.metadata_props}
    chars = ODD_CHARS if kind == "deep" else LETTERS
    start = 0 if kind == "notebook" else 1
    assert json.loads(meta["vocab"]) == chars
    assert (meta["pad_token"], meta["end_token"], meta["start_token"]) == ("0", "1", str(start))
    assert (meta["n_layer"], meta["hidden"], meta["vocab_size"]) == (str(n_layer), "16", str(vocab_size))
    loaded_meta = NameGenerator.from_checkpoint(ckpt).meta
    assert meta["block_size"] == str(loaded_meta["config"]["block_size"])
    assert meta["size"] == {"small": "tiny", "deep": "tiny", "notebook": "small"}[kind]
    assert meta["format"] == ONNX_FORMAT and meta["namegen_version"] and meta["source"] == ckpt.name

    assert (info.path, info.n_layer, info.hidden, info.vocab_size, info.start_token, info.opset) == (
        path, n_layer, 16, vocab_size, start, DEFAULT_OPSET)
    assert info.parameters == NameGenerator.from_checkpoint(ckpt).model.num_parameters()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left


@pytest.mark.slow
def test_example_sampler_needs_only_onnxruntime_and_numpy(exported):
    """examples/onnx_sample.py, with torch and namegen made unimportable, prints N non-empty names
    of vocabulary characters, no longer than block_size; the same seed prints the same names."""
    kind, _, path, _ = exported
    block = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    chars, max_len = set(json.loads(block["vocab"])), int(block["block_size"])
    code = ("import sys, runpy; sys.modules.update(torch=None, namegen=None); sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")

    def run(*args):
        proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLE), str(path), *args], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=path.parent)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.rstrip("\n").split("\n")

    names = run("-n", "9", "--seed", "3", "--temperature", "0.8", "--batch-size", "4")
    assert len(names) == 9
    assert all(name and set(name) <= chars and len(name) <= max_len for name in names), names
    assert run("-n", "9", "--seed", "3", "--temperature", "0.8", "--batch-size", "4") == names


def test_refuses_to_overwrite_and_force_replaces_quietly(export_of, tmp_path, capfd):
    """An existing output is left untouched without force; force=True replaces it (here at opset 17,
    which the exporter converts to), prints nothing, and the new file still scores as namegen does."""
    _, ckpt, exported_path, _ = export_of("small")
    path = tmp_path / "model.onnx"
    before = exported_path.read_bytes()
    path.write_bytes(before)
    with pytest.raises(UserError, match="exists") as exc:
        export_onnx(ckpt, path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value) and "--" not in str(exc.value)
    assert path.read_bytes() == before
    capfd.readouterr()
    info = export_onnx(ckpt, path, force=True, opset=17)
    assert capfd.readouterr() == ("", "")  # no exporter chatter, warnings or log lines
    assert info.opset == 17 and [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [17]
    names = NAMES["small"]
    np.testing.assert_allclose(_ort_score(_session(path), names), NameGenerator.from_checkpoint(ckpt).score(names),
                               rtol=0, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left


def test_user_errors_name_the_file_or_value(export_of, tmp_path, monkeypatch):
    """Missing or unreadable checkpoints, a directory or the checkpoint itself as output, an opset
    out of range, and onnx not installed: one-line UserErrors about files and values, no CLI flags."""
    _, ckpt, _, _ = export_of("small")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    cases = [
        ((tmp_path / "missing.ckpt", tmp_path / "a.onnx"), {}, "missing.ckpt not found"),
        ((text, tmp_path / "b.onnx"), {}, r"notes\.ckpt (is not a readable checkpoint|was refused)"),
        ((ckpt, tmp_path), {}, "is a directory"),
        ((ckpt, ckpt), {"force": True}, "is the checkpoint being exported"),
        ((ckpt, tmp_path / "c.onnx"), {"opset": 16}, "opset must be an integer from 17"),
        ((ckpt, tmp_path / "c.onnx"), {"opset": "18"}, "got '18'"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(UserError, match=message) as exc:
            export_onnx(*args, **kwargs)
        assert "\n" not in str(exc.value) and "--" not in str(exc.value), str(exc.value)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the optional extra were not installed
    with pytest.raises(UserError, match=r"pip install namegen\[export\]"):
        export_onnx(ckpt, tmp_path / "d.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.ckpt"]  # nothing written by any of them
