"""Hostile and damaged files (issue 25), one named test per case that used to end in a traceback, a hang or an
allocation the file could not justify. Each is refused (one `error:` line, exit 2) or handled, and leaves
every file as it was. tests/test_fuzz.py searches for more of them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import optuna
import pytest
import torch

from conftest import ROOT
from namegen.checkpoint import build_meta, read_training_checkpoint, write_checkpoint
from namegen.config import load_config
from namegen.data import Vocab, read_names
from namegen.errors import UserError
from namegen.model import GRULanguageModel
from namegen.tune import load_search_space, open_storage, storage_failures
from test_bad_input import assert_one_line_error, call


@pytest.fixture
def tiny(tmp_path):
    """A tiny real checkpoint (vocabulary a-e, n_embd 8, n_hidden 16) as a dictionary, and its path."""
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=7)
    path = write_checkpoint(tmp_path / "tiny.ckpt", build_meta(config, Vocab(list("abcde")), model.num_parameters()),
                            model.state_dict())
    return torch.load(path, weights_only=True), path


def edited(tmp_path, obj, name="edited.ckpt", meta=None, config=None, state=None) -> Path:
    meta = dict(obj["namegen"], **(meta or {}))
    meta["config"] = dict(meta["config"], **(config or {}))
    path = tmp_path / name
    torch.save({**obj, "namegen": meta, "state_dict": state or obj["state_dict"]}, path)
    return path


def sample_error(path, capsys, *needles) -> str:
    before = path.read_bytes()
    code, out, err = call("sample", ["--ckpt", path, "-n", "3", "--seed", "0"], capsys)
    assert path.read_bytes() == before
    return assert_one_line_error(code, err, "--ckpt:", str(path), *needles)


def rezipped(raw: bytes, replace: dict, compress: tuple = ()) -> bytes:
    """A torch zip archive with records replaced (by their name after the archive's folder) or deflated."""
    source, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            short = info.filename.split("/", 1)[1]
            target.writestr(info.filename, replace.get(short, source.read(info.filename)),
                            compress_type=zipfile.ZIP_DEFLATED if short in compress else zipfile.ZIP_STORED)
    return out.getvalue()


class _Bytearray:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return bytearray, (self.n,)


# ----------------------------------------------------------------------------- checkpoints: declared numbers


def test_n_hidden_of_a_billion_over_kilobytes_of_weights_builds_nothing(tmp_path, tiny, capsys):
    """Was: GRULanguageModel.from_config(n_hidden=10**9) before any check: RuntimeError, a traceback."""
    sample_error(edited(tmp_path, tiny[0], config={"n_hidden": 10**9}), capsys, "n_hidden is at most 16384")


def test_n_hidden_that_the_weights_do_not_have_names_the_field(tmp_path, tiny, capsys):
    sample_error(edited(tmp_path, tiny[0], config={"n_hidden": 4096}), capsys,
                 "its n_hidden is 4096 but its tensors have 16 columns in head.weight")


def test_n_layer_beyond_the_weights_names_the_field(tmp_path, tiny, capsys):
    sample_error(edited(tmp_path, tiny[0], config={"n_layer": 64}), capsys, "its n_layer is 64 but its tensors have 1")


def test_a_block_size_of_a_trillion_is_refused_not_allocated(tmp_path, tiny, capsys):
    """Was: block_size is the default --max-len, and sampling made torch.zeros(n, 10**12): a traceback."""
    sample_error(edited(tmp_path, tiny[0], config={"block_size": 10**12}), capsys, "block_size is at most 10000")


def test_a_start_token_beyond_the_vocabulary_is_refused(tmp_path, tiny, capsys):
    """Was: an IndexError from the embedding when sampling began."""
    sample_error(edited(tmp_path, tiny[0], meta={"start_token": 10**6}), capsys, "start_token")


def test_a_vocabulary_with_a_lone_surrogate_is_refused(tmp_path, tiny, capsys):
    """Was: sampled names that print as a UnicodeEncodeError."""
    sample_error(edited(tmp_path, tiny[0], meta={"vocab": ["a", "b", "c", "d", "\ud800"]}), capsys, "lone surrogate")


def test_num_parameters_that_the_weights_do_not_hold_is_refused(tmp_path, tiny, capsys):
    sample_error(edited(tmp_path, tiny[0], meta={"num_parameters": 10**12}), capsys, "num_parameters")


def test_a_non_finite_learning_rate_in_a_checkpoint_is_refused(tmp_path, tiny, capsys):
    """Was: NaN passes `lr <= 0`; resuming trained with it."""
    sample_error(edited(tmp_path, tiny[0], config={"lr": float("nan")}), capsys, "lr must be a finite number")


def test_a_value_nested_a_million_times_over_is_quoted_briefly(tmp_path, tiny, capsys):
    """Was: the error message repr()'d the whole value (a pickle can share one list 10^6 times over)."""
    bomb = ["x"] * 10
    for _ in range(6):
        bomb = [bomb] * 10
    line = sample_error(edited(tmp_path, tiny[0], config={"n_hidden": bomb}), capsys, "n_hidden must be of type int")
    assert len(line) < 600


def test_an_epoch_that_is_no_count_is_refused_for_resuming(tmp_path, tiny):
    """Was: int(ckpt["epoch"]) on text: a ValueError traceback."""
    obj, _ = tiny
    path = tmp_path / "last.ckpt"
    torch.save({**obj, "epoch": "eleven", "loops": {}, "optimizer_states": []}, path)
    with pytest.raises(UserError, match="its epoch is 'eleven'") as exc:
        read_training_checkpoint(path)
    assert exc.value.about == "resume"


# ----------------------------------------------------------------------------- checkpoints: the archive itself


def test_one_stored_tensor_for_every_weight_is_refused(tmp_path, tiny, capsys):
    """A pickle can name one tensor for every key: the model would be n copies of one stored tensor."""
    obj, _ = tiny
    wh = obj["state_dict"]["model.layers.0.Wh.weight"]
    state = {**obj["state_dict"], "model.layers.0.Wzh.weight": wh, "model.layers.0.Wrh.weight": wh}
    sample_error(edited(tmp_path, obj, state=state), capsys, "one stored tensor for several weights")


def test_a_tensor_repeating_one_stored_number_is_refused(tmp_path, tiny, capsys):
    """stride 0: a (16, 16) weight over one stored float; at (10^5, 10^5) it was 40 GB when copied."""
    obj, _ = tiny
    state = {**obj["state_dict"], "model.layers.0.Wh.weight": torch.zeros(1).expand(16, 16)}
    sample_error(edited(tmp_path, obj, state=state), capsys, "more numbers than the file stores")


def test_a_pickle_calling_bytearray_is_refused_before_loading(tmp_path, tiny, capsys):
    """torch's weights_only allows bytearray(n): a file of 1 KB made torch.load allocate n bytes (2 GB here)."""
    pickled = pickle.dumps({"namegen": _Bytearray(2_000_000_000)}, protocol=2)
    path = tmp_path / "bomb.ckpt"
    path.write_bytes(rezipped(tiny[1].read_bytes(), {"data.pkl": pickled}))
    sample_error(path, capsys, "refused and nothing in it was run", "bytearray")


def test_a_compressed_record_is_refused(tmp_path, tiny, capsys):
    """torch.load inflates a deflated record to its declared size (200 MB from a 200 KB file)."""
    path = tmp_path / "deflated.ckpt"
    path.write_bytes(rezipped(tiny[1].read_bytes(), {}, compress=("data/0",)))
    sample_error(path, capsys, "refused before loading", "is compressed")


def test_a_torch_file_older_than_zip_is_refused(tmp_path, tiny, capsys):
    """The legacy format's header declares storage sizes that torch allocates before reading the data."""
    path = tmp_path / "legacy.ckpt"
    torch.save(tiny[0], path, _use_new_zipfile_serialization=False)
    sample_error(path, capsys, "not the zip archive torch.save writes")


def test_a_notebook_file_whose_model_class_is_a_list_is_refused(tmp_path, capsys):
    """Was: `model_class not in NOTEBOOK_CLASSES` on a list: TypeError (unhashable)."""
    path = tmp_path / "nb.pth"
    torch.save({"state_dict": {}, "model_class": ["GRU_SmallModel"], "n_classes": 28, "embd_dim": 8,
                "hidden_dim": 8}, path)
    code, _, err = call("sample", ["--ckpt", path], capsys)
    assert_one_line_error(code, err, "unknown model_class")


def test_a_notebook_hidden_dim_of_a_million_builds_nothing(tmp_path, capsys):
    """Was: the model was built from hidden_dim before its tensors were looked at (10^12 weights)."""
    import notebook_transcript as nb

    model = nb.GRU_SmallModel(n_classes=28, embd_dim=8, hidden_dim=16)
    pth = Path(nb.save_model(model, base_name="m", path=str(tmp_path)))
    obj = torch.load(pth, weights_only=True)
    torch.save({**obj, "hidden_dim": 10**6}, pth)
    code, _, err = call("sample", ["--ckpt", pth], capsys)
    assert_one_line_error(code, err, "hidden_dim is 1000000, but there are 16 columns")


RSS_SCRIPT = """
import contextlib, io, resource, sys
from namegen.cli import main
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
main(["sample", "--ckpt", sys.argv[1], "-n", "2"])  # imports and a real model: the baseline
base = rss_mb()
for path in sys.argv[2:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["sample", "--ckpt", path, "-n", "2"])
    print(code, len(err.getvalue().splitlines()), round(rss_mb() - base), path)
"""


@pytest.mark.slow
def test_hostile_checkpoints_cost_no_memory(tmp_path, tiny):
    """In a fresh process, peak memory (ru_maxrss) after each of the files that used to allocate hundreds of
    megabytes (bytearray, a deflated record, a stride-0 weight, n_hidden 6000 over tiny weights)."""
    obj, path = tiny
    raw = path.read_bytes()
    files = {"bytearray.ckpt": rezipped(raw, {"data.pkl": pickle.dumps({"x": _Bytearray(400_000_000)}, protocol=2)})}
    buffer = io.BytesIO()
    torch.save({**obj, "state_dict": {**obj["state_dict"], "model.layers.0.Wh.weight": torch.zeros(50_000_000)}},
               buffer)
    files["deflated.ckpt"] = rezipped(buffer.getvalue(), {}, compress=tuple(f"data/{i}" for i in range(40)))
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    expanded = {**obj["state_dict"], "model.layers.0.Wh.weight": torch.zeros(1).expand(10_000, 10_000)}
    paths = [tmp_path / n for n in files] + [edited(tmp_path, obj, "expanded.ckpt", state=expanded),
                                             edited(tmp_path, obj, "wide.ckpt", config={"n_hidden": 6000})]
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), *map(str, paths)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines()[-len(paths):]:
        code, lines, grown, name = line.split()
        assert (code, lines) == ("2", "1") and int(grown) < 100, line


@pytest.mark.slow
def test_a_hostile_checkpoint_in_a_fresh_process_is_one_line_and_exit_2(tmp_path, tiny):
    path = edited(tmp_path, tiny[0], config={"n_hidden": 10**9})
    proc = subprocess.run([sys.executable, "-m", "namegen", "sample", "--ckpt", str(path)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --ckpt: ")


# ----------------------------------------------------------------------------- configs and names files


@pytest.mark.parametrize("text, needle", [
    (b"n_layer: " + b"9" * 5000 + b"\n", "a value cannot be read"),  # was: ValueError (int max str digits)
    (b"[" * 5000 + b"]" * 5000, "nested too deep"),  # was: RecursionError
    (b"n_layer: 1\nlr: \xff\xfe\n", "not UTF-8"),  # was: UnicodeDecodeError
    (b"1: 2\nzz: 3\n", "unknown key(s) 1, zz"),  # was: TypeError sorting int and str keys
    (b"lr: .nan\n", "lr must be a finite number"),  # was: accepted (NaN passes lr <= 0)
], ids=["5000-digit-int", "nested-5000-deep", "not-utf8", "mixed-type-keys", "nan-lr"])
def test_hostile_config_files(tmp_path, text, needle):
    good = (ROOT / "configs" / "small.yaml").read_bytes()
    path = tmp_path / "c.yaml"
    path.write_bytes(text if needle != "lr must be a finite number" else good.replace(b"lr:", b"lr: .nan #", 1))
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(str(path))


@pytest.mark.parametrize("text, needle", [
    (b"- base: small\n", "expected a mapping"),  # was: TypeError (set() of a list of dicts)
    (b"params: {lr: {type: float, low: 0.001, high: 0.01}}\npruner: {bogus: 1}\n", "pruner"),  # was: TypeError
    (b"params: {lr: {type: float, low: .nan, high: 0.01}}\n", "finite"),
    (b"params: {lr: {type: float, low: 0, high: 0.01, log: true}}\n", "lr:"),  # was: Optuna's ValueError
], ids=["a-list", "unknown-pruner-argument", "nan-bound", "log-scale-from-0"])
def test_hostile_search_spaces(tmp_path, text, needle):
    path = tmp_path / "space.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError, match=needle) as exc:
        load_search_space(path)
    assert exc.value.about == "space"


@pytest.mark.slow
def test_a_names_file_that_never_ends_is_refused(tmp_path):
    """Was: --data /dev/zero read forever (and filled memory). (In tmp_path: a checkout's own checkpoints/small
    from `make train` would be refused first.)"""
    proc = subprocess.run([sys.executable, "-m", "namegen", "train", "--data", "/dev/zero", "--logger", "none"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --data: /dev/zero is not a regular file")


def test_a_name_of_a_million_characters_is_refused(tmp_path):
    """Every name is padded to the longest in its batch: one line of 10^6 characters made batches that wide."""
    path = tmp_path / "names.txt"
    path.write_bytes(b"emma\n" + b"a" * 1_000_000 + b"\nava\n")
    with pytest.raises(UserError, match="line 2 is 1000000 characters long; a name is at most 256"):
        read_names(path)


# ----------------------------------------------------------------------------- study storages


@pytest.fixture
def journal(tmp_path):
    """A real journal: four finished trials and one running (its process crashed)."""
    path = tmp_path / "study.journal"
    study = optuna.create_study(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path))), study_name="s")
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-2), n_trials=4)
    study.ask()
    return path


def _refused(path: Path, *needles) -> str:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(UserError) as exc:
        open_storage(str(path), path.parent)
    assert exc.value.about == "storage" and (before is None or path.read_bytes() == before)
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)
    return str(exc.value)


def _kept(path: Path, lines: int) -> int:
    """Follow the message's recovery (head -n LINES), and count the finished trials the kept journal has."""
    kept = path.with_name("study-kept.journal")
    kept.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:lines]))
    storage, _ = open_storage(str(kept), kept.parent)
    return len(optuna.load_study(storage=storage, study_name="s").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))


def test_a_journal_cut_short_by_a_crash_keeps_its_finished_trials(journal, monkeypatch):
    """Was: Optuna read past the cut record, then crashed appending (AttributeError), leaving a merged line."""
    monkeypatch.setattr("namegen.tune.JOURNAL_SETTLE_S", 0.0)
    raw = journal.read_bytes()
    journal.write_bytes(raw[:-30])
    n = len(raw.splitlines()) - 1
    _refused(journal, f"damaged at line {n + 1}", "4 finished trial(s)", f"head -n {n} {journal}")
    assert _kept(journal, n) == 4


@pytest.mark.parametrize("damage", ["garbage-line", "zeros-at-the-end", "record-missing-its-fields"])
def test_a_damaged_journal_names_the_line_and_how_to_keep_the_rest(journal, damage):
    """Were: a UnicodeDecodeError traceback; a journal Optuna loads and then breaks by appending after the
    zeros; a KeyError traceback from Optuna's replay."""
    lines = journal.read_bytes().splitlines(keepends=True)
    bad = {"garbage-line": b"\xff\xfe\x00garbage\n", "zeros-at-the-end": b"\x00" * 4096,
           "record-missing-its-fields": b'{"op_code": 5, "worker_id": "w"}\n'}[damage]
    at = len(lines) if damage == "zeros-at-the-end" else 5
    journal.write_bytes(b"".join(lines[:at]) + bad + b"".join(lines[at:]))
    finished = sum(b'"state":1' in line for line in lines[:at])  # the trials completed before the damage
    _refused(journal, f"damaged at line {at + 1}", f"{finished} finished trial(s)", f"head -n {at} ")
    assert _kept(journal, at) == finished


def test_a_record_another_process_is_writing_is_waited_for(journal):
    """A concurrent writer's record, half there when namegen looks, is complete a moment later: no error."""
    raw = journal.read_bytes()
    journal.write_bytes(raw[:-30])
    finish = threading.Timer(0.3, lambda: journal.open("ab").write(raw[-30:]))
    finish.start()
    try:
        open_storage(str(journal), journal.parent)
    finally:
        finish.join()


def test_a_journal_that_is_a_device_is_refused(tmp_path):
    link = tmp_path / "zero.journal"
    link.symlink_to("/dev/zero")
    _refused(link, "not a regular file")


def test_a_damaged_sqlite_database_says_how_to_recover(tmp_path):
    path = tmp_path / "optuna.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(UserError, match=r"malformed.*\.recover \| sqlite3 recovered.db"):
        open_storage(f"sqlite:///{path}", tmp_path)


FULL_DISK_SCRIPT = """
import resource, sys, optuna
from namegen.errors import UserError
from namegen.tune import open_storage, storage_failures
storage, url = open_storage(sys.argv[1], None)
study = optuna.load_study(storage=storage, study_name="s")
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    with storage_failures(url):
        study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-2), n_trials=3)
except UserError as exc:
    print(exc)
"""


@pytest.mark.slow
def test_a_journal_on_a_full_disk_stops_in_one_line_keeping_the_finished_trials(journal):
    """A write the OS refuses while trials run (the file-size limit's EFBIG standing in for a full disk's
    ENOSPC; Python ignores SIGXFSZ), in a fresh process so that the limit touches nothing else."""
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(journal), str(journal.stat().st_size + 10)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "cannot write the Optuna storage" in proc.stdout and "the finished trials are kept" in proc.stdout, (
        proc.stdout + proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = journal.read_bytes().splitlines()
    assert len([ln for ln in lines if b'"state":1' in ln]) == 4  # the four finished before the disk filled


def test_a_locked_sqlite_database_says_what_holds_it(tmp_path):
    import sqlite3

    path = tmp_path / "optuna.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(UserError, match="another process holds .* locked"):
            storage, url = open_storage(f"sqlite:///{path}", tmp_path)
            with storage_failures(url):
                optuna.load_study(storage=storage, study_name="s").get_trials()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------------- found by tests/test_fuzz.py


def test_fuzz_a_zero_dimensional_head_weight_is_refused(tmp_path, tiny, capsys):
    """test_checkpoint_weight_mutations: head.weight reshaped to (): an IndexError in the new shape checks."""
    obj, _ = tiny
    state = {**obj["state_dict"], "model.head.weight": torch.zeros(())}
    sample_error(edited(tmp_path, obj, state=state), capsys, "its n_hidden is 16 but its tensors have None")


def test_fuzz_a_negative_integer_of_5000_digits_in_a_config_is_quoted_briefly():
    """test_config_mutations led here: Config's messages formatted a value whole, a ValueError past 4300 digits
    (torch's unpickler and PyYAML refuse such integers first; Config.from_dict takes any dictionary)."""
    from namegen.config import Config

    raw = dict(load_config("small").to_dict(), batch_size=-(10**5000))
    with pytest.raises(UserError, match="batch_size must be a positive integer, got <an integer of 16610 bits>"):
        Config.from_dict(raw)


def test_fuzz_a_carriage_return_inside_a_name_is_a_character(tmp_path):
    """test_names_file_mutations: the vocabulary check refused a '\\r' that a names file can hold mid-line."""
    path = tmp_path / "names.txt"
    path.write_bytes(b"emma\nav\ra\nmia\n")
    assert Vocab.from_names(read_names(path)).chars == sorted(set("emmav\ramia"))
