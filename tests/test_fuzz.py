"""Every reader fed hostile files (issue 25): Hypothesis mutates real files, and each reader must give one
`error:` line and exit 2, or a correct result; never a traceback, never an allocation beyond a small multiple
of the file, never a change to a file that was already there.

Readers are called in-process through the command line's own error handling (``namegen.cli.run``), which
keeps hundreds of examples fast; test_hostile_files.py holds the named regression tests and the few checks
in fresh processes. The "fast" profile (tests/conftest.py, derandomised) runs in `make test`; `make fuzz`
runs the "long" one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="needs Hypothesis: pip install -r requirements.txt")
from hypothesis import given, strategies as st  # noqa: E402

from namegen import cli  # noqa: E402
from namegen.api import NameGenerator  # noqa: E402
from namegen.checkpoint import build_meta, write_checkpoint  # noqa: E402
from namegen.config import CONFIG_DIR, load_config  # noqa: E402
from namegen.data import Vocab, read_names  # noqa: E402
from namegen.model import GRULanguageModel  # noqa: E402

pytestmark = pytest.mark.fuzz
WEBPAGE = Path(__file__).resolve().parent.parent / "namegen" / "webpage"

# ----------------------------------------------------------------------------- mutations

#: absurd, negative, non-finite and wrong-typed values, huge strings, deep and wide containers
HOSTILE = st.one_of(
    st.sampled_from([0, -1, 1, 2, 10**9, 10**12, 2**63, -(2**63), 10**5000, float("nan"), float("inf"), -0.0,
                     1e308, True, False, None, "", ".", "\ud800", "x" * 1_000_000, "small", [], {}, [[[[]]]]]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=2), max_size=6),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def mutate_mapping(data, draw) -> object:
    """A copy of the nested mapping ``data`` with one key replaced, removed or added (at any depth)."""
    data = copy.deepcopy(data)
    node = data
    while True:
        keys = sorted(node, key=str) if isinstance(node, dict) else []
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], dict) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            node[key] = draw(HOSTILE)
        elif action == "remove":
            del node[key]
        else:
            node[draw(st.sampled_from(["extra", 7, "zz" * 50]))] = draw(HOSTILE)
        break
    return data


def mutate_bytes(data: bytes, draw) -> bytes:
    """``data`` truncated at some length class, with bytes flipped, or with garbage spliced in."""
    action = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if action == "truncate":
        cut = draw(st.sampled_from([0, 1, 2, 16, len(data) // 4, len(data) // 2, len(data) - 1,
                                    draw(st.integers(0, max(len(data) - 1, 0)))]))
        return data[:max(cut, 0)]
    data = bytearray(data)
    if action == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])


# ----------------------------------------------------------------------------- the property


def call(handler) -> tuple[int, str, object]:
    """``handler()`` through the command line's error handling; (exit status, stderr, its result)."""
    result, err = [], io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run("fuzz", lambda _: result.append(handler()) or 0, None)
    return code, err.getvalue(), (result or [None])[0]


def assert_error_or_result(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert len(lines[0]) < 2000, lines[0][:300]  # a message quotes a value briefly, never a whole file
    else:
        assert code == 0, err


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@contextlib.contextmanager
def bounded_python_memory(file_size: int):
    """What Python allocates inside: at most a small multiple of the file read (torch's tensors are bounded by
    the checks that every tensor is backed by the file's bytes, tested in test_hostile_files.py)."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * file_size + (16 << 20), f"{peak} bytes allocated reading a file of {file_size}"


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny real checkpoint, as a dictionary and as bytes."""
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    vocab = Vocab(list("abcde"))
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    path = write_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.ckpt",
                            build_meta(config, vocab, model.num_parameters(), size="tiny"), model.state_dict())
    bad = path.with_name("bad.ckpt")
    torch.save({"namegen": {"size": -1}, "state_dict": {}}, bad)
    for warm_up in (path, bad):  # the first call imports modules: not the reader's cost
        call(lambda: sample_from(warm_up))
    return torch.load(path, weights_only=True), path.read_bytes()


def sample_from(path: Path):
    gen = NameGenerator.from_checkpoint(path)
    names = gen.sample(3, seed=0)
    assert len(names) == 3 and all(set(n) <= set(gen.vocab.chars) for n in names)
    return names


def check_checkpoint_file(path: Path) -> None:
    before = snapshot(path.parent)
    with bounded_python_memory(path.stat().st_size):
        code, err, _ = call(lambda: sample_from(path))
    assert_error_or_result(code, err)
    assert snapshot(path.parent) == before


@given(data=st.data())
def test_checkpoint_metadata_mutations(tiny, tmp_path_factory, data):
    obj, _ = tiny
    meta = mutate_mapping(obj["namegen"], data.draw)
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    torch.save({**obj, "namegen": meta}, path)
    check_checkpoint_file(path)


@given(data=st.data())
def test_checkpoint_weight_mutations(tiny, tmp_path_factory, data):
    """Tensors removed, added, reshaped, retyped, repeated (one tensor for two weights), or stride 0."""
    obj, _ = tiny
    state = dict(obj["state_dict"])
    key = data.draw(st.sampled_from(sorted(state)))
    action = data.draw(st.sampled_from(["remove", "reshape", "retype", "reuse", "expand", "extra", "not-a-tensor"]))
    if action == "remove":
        del state[key]
    elif action == "reshape":
        state[key] = torch.zeros(data.draw(st.lists(st.integers(0, 40), max_size=3)))
    elif action == "retype":
        state[key] = state[key].to(data.draw(st.sampled_from([torch.int64, torch.bool, torch.float64, torch.uint8])))
    elif action == "reuse":
        other = data.draw(st.sampled_from(sorted(state)))
        state[other] = state[key]
    elif action == "expand":
        state[key] = torch.zeros(1).expand(*state[key].shape) if state[key].dim() else state[key]
    elif action == "extra":
        state["model.layers.7.Wh.weight"] = torch.zeros(16, 16)
    else:
        state[key] = data.draw(HOSTILE)
    path = tmp_path_factory.mktemp("ckpt") / "w.ckpt"
    torch.save({**obj, "state_dict": state}, path)
    check_checkpoint_file(path)


@given(data=st.data())
def test_checkpoint_byte_mutations(tiny, tmp_path_factory, data):
    _, raw = tiny
    path = tmp_path_factory.mktemp("ckpt") / "b.ckpt"
    path.write_bytes(mutate_bytes(raw, data.draw))
    check_checkpoint_file(path)


# ----------------------------------------------------------------------------- configs


@given(data=st.data())
def test_config_mutations(tmp_path_factory, data):
    raw = yaml.safe_load((CONFIG_DIR / "small.yaml").read_text(encoding="utf-8"))
    path = tmp_path_factory.mktemp("config") / "c.yaml"
    if data.draw(st.booleans()):
        try:
            text = yaml.safe_dump(mutate_mapping(raw, data.draw), allow_unicode=False)
        except ValueError:  # PyYAML cannot write an integer of over 4300 digits (test_hostile_files reads one)
            hypothesis.assume(False)
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(mutate_bytes((CONFIG_DIR / "small.yaml").read_bytes(), data.draw))
    before = snapshot(path.parent)
    with bounded_python_memory(path.stat().st_size):
        code, err, config = call(lambda: load_config(str(path)))
    assert_error_or_result(code, err)
    if code == 0:  # a config that loads is one namegen can build and train
        assert 1 <= config.n_layer <= 64 and 1 <= config.n_hidden <= 16384 and config.lr > 0
    assert snapshot(path.parent) == before


# ----------------------------------------------------------------------------- names files


@given(data=st.data())
def test_names_file_mutations(tmp_path_factory, real_names, data):
    text = "\n".join(real_names.read_text(encoding="utf-8").splitlines()[:50]).encode()
    kind = data.draw(st.sampled_from(["mutated", "random", "special"]))
    payload = (mutate_bytes(text, data.draw) if kind == "mutated" else data.draw(st.binary(max_size=200))
               if kind == "random" else data.draw(st.sampled_from(
                   [b"a" * 1_000_000, b"emma\n" + b"x" * 300 + b"\n", "Zoë\r\n\ufeffÉlodie\n".encode()])))
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_bytes(payload)
    before = snapshot(path.parent)
    with bounded_python_memory(len(payload)):
        code, err, names = call(lambda: (read_names(path), Vocab.from_names(read_names(path)))[0])
    assert_error_or_result(code, err)
    if code == 0:
        assert names and all(name and "." not in name and "\n" not in name and len(name) <= 256 for name in names)
    assert snapshot(path.parent) == before


# ----------------------------------------------------------------------------- study journals


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """A real Optuna journal: one study, four finished trials, one still running."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path_factory.mktemp("journal") / "study.journal"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s")
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-2), n_trials=4)
    study.ask()
    return path.read_bytes()


def open_journal(path: Path) -> int:
    import optuna

    from namegen.tune import FINISHED, open_storage

    storage, _ = open_storage(str(path), path.parent)
    with contextlib.redirect_stderr(io.StringIO()):  # as open_study does: an empty journal starts the study
        study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
    return len(study.get_trials(states=FINISHED))


@given(data=st.data())
def test_journal_mutations(journal, tmp_path_factory, monkeypatch, data):
    import namegen.tune

    monkeypatch.setattr(namegen.tune, "JOURNAL_SETTLE_S", 0.0)  # no writer is at work here: no need to wait
    lines = journal.splitlines(keepends=True)
    if data.draw(st.booleans()):
        payload = mutate_bytes(journal, data.draw)
    else:  # one record's field made hostile (a half-written or foreign record that is valid JSON)
        i = data.draw(st.integers(0, len(lines) - 1))
        record = mutate_mapping(json.loads(lines[i]), data.draw)
        lines[i] = json.dumps(record, default=str).encode() + b"\n"
        payload = b"".join(lines)
    path = tmp_path_factory.mktemp("journal") / "study.journal"
    path.write_bytes(payload)
    before = snapshot(path.parent)
    code, err, finished = call(lambda: open_journal(path))
    assert_error_or_result(code, err)
    if code == 0:  # Optuna may append (a new study in an emptied journal), never alter what was there
        assert finished <= 4 and path.read_bytes().startswith(payload)
    else:
        assert "head -n" in err and snapshot(path.parent) == before, err


# ----------------------------------------------------------------------------- the page's model.json

def run_page_checks(metas: list) -> list[str]:
    """checks.js's checkMeta on each, in Node: "ok", "error: <message>" or "THREW <what>"."""
    script = (
        f'import {{ checkMeta, ModelError }} from "{(WEBPAGE / "checks.js").as_posix()}";\n'
        'let text = ""; process.stdin.on("data", (d) => { text += d; });\n'
        'process.stdin.on("end", () => { for (const meta of JSON.parse(text)) {\n'
        '  try { checkMeta(meta); console.log("ok"); }\n'
        '  catch (e) { console.log(e instanceof ModelError ? "error: " + e.message.split("\\n")[0]'
        ' : "THREW " + e); } } });\n'
    )
    proc = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(metas),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]  # not splitlines(): a message may quote a U+2028 (JSON leaves it as is)


GOOD_META = {"format": "namegen-gru-step/1", "vocab": list("abcde"), "pad_token": 0, "end_token": 1,
             "start_token": 1, "n_layer": 1, "hidden": 16, "vocab_size": 7, "block_size": 12, "size": "tiny",
             "namegen_version": "0.1.0", "source": "tiny.ckpt", "training_names": "names.txt",
             "n_training_names": 50, "onnxruntime_web": "1.30.0"}


@pytest.mark.slow  # a Node process per example
@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page's checks.js")
@given(data=st.data())
def test_model_json_mutations(data):
    finite = st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN (the page's JSON.parse refuses it)
    safe = st.one_of(st.integers(-(2**60), 2**60), finite, st.text(max_size=12), st.none(), st.booleans(),
                     st.lists(st.text(max_size=2), max_size=5), st.just("x" * 100_000))
    metas = []
    for _ in range(20):
        meta = copy.deepcopy(GOOD_META)
        key = data.draw(st.sampled_from(sorted(meta)))
        if data.draw(st.booleans()):
            meta[key] = data.draw(safe)
        else:
            del meta[key]
        metas.append(meta)
    results = run_page_checks([GOOD_META, *metas])
    assert results[0] == "ok"
    for meta, result in zip(metas, results[1:]):
        assert result == "ok" or result.startswith("error: model.json: "), (meta, result)
        if result == "ok":  # what the sampler then relies on
            assert isinstance(meta["vocab"], list) and 1 <= meta["n_layer"] <= 64 and 1 <= meta["hidden"] <= 16384
