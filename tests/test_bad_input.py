"""Bad input: one line `error: ...` naming the file or flag, exit 2, no traceback, nothing saved is touched.

The cases call the command-line entry points in-process (the same `run()` that
train.py and sample.py call, argparse's own sys.exit(2) included), which keeps
them fast; test_train_sample.py runs the scripts themselves in fresh processes.
"""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from namegen.api import NameGenerator
from namegen.checkpoint import load_checkpoint
from namegen.errors import UserError
from cli_helpers import run

TINY = ["--max-epochs", "1", "--batch-size", "16", "--limit-train-batches", "2", "--accelerator", "cpu",
        "--logger", "none"]


def call(main, argv, capsys) -> tuple[int, str, str]:
    try:
        code = run(main, [str(a) for a in argv])
    except SystemExit as exc:  # argparse exits itself: sys.exit(2), as in the real script
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, real_names):
    """A real best.ckpt from a tiny in-process run (no W&B)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    data = tmp / "names.txt"
    data.write_text("\n".join(real_names.read_text().splitlines()[:200]) + "\n")
    assert run("train", ["--data", str(data), "--out", str(tmp / "run"), *TINY]) == 0
    return tmp / "run" / "best.ckpt"


@pytest.fixture
def saved_run(tmp_path):
    """An --out directory holding an earlier run's files; bad input must leave them byte for byte."""
    out = tmp_path / "earlier"
    out.mkdir()
    files = {name: os.urandom(64) for name in ("best.ckpt", "last.ckpt", "metrics.csv")}
    for name, payload in files.items():
        (out / name).write_bytes(payload)
    yield out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


# ----------------------------------------------------------------------------- data files

def _write(path, payload):
    if payload is None:
        return path
    if payload == "DIR":
        path.mkdir()
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("payload, needle", [
    (None, "does not exist"),
    ("DIR", "is a directory"),
    (b"", "has no names"),
    (b"\n   \n\t\n\r\n", "has no names"),
    (b"emma\x00\x01\x02\nava\n", "looks binary"),
    ("emma\nolivia\nZo\xeb\n".encode("latin-1"), "line 3 is not valid UTF-8"),
    (b"solo\n", "has only 1 name"),
    (b"emma\nst. john\n", "line 2 contains '.'"),
], ids=["missing", "directory", "empty", "blank-lines", "binary", "not-utf8", "single-name", "dot"])
def test_bad_data_file(tmp_path, saved_run, capsys, payload, needle):
    data = _write(tmp_path / "names.txt", payload)
    code, _, err = call("train", ["--data", data, "--out", saved_run, "--overwrite", *TINY], capsys)
    assert_one_line_error(code, err, "--data:", str(data), needle)


def test_messy_but_valid_data_trains_and_samples(tmp_path, capsys):
    messy = ("\ufeffEmma\r\n  olivia  \r\n\r\nOlivia\r\nolivia\r\nJean-Luc\r\nO'Brien\r\nMary Ann\r\n"
             "Zoë\r\nÉlodie\r\n\tAnaïs \r\n") * 8
    data = tmp_path / "messy.txt"
    data.write_bytes(messy.encode("utf-8"))
    out = tmp_path / "run"
    assert run("train", [str(a) for a in ("--data", data, "--out", out, *TINY)]) == 0
    capsys.readouterr()
    ckpt = torch.load(out / "best.ckpt", weights_only=True)
    cleaned = ["Emma", "olivia", "Olivia", "olivia", "Jean-Luc", "O'Brien", "Mary Ann", "Zoë", "Élodie", "Anaïs"]
    assert ckpt["namegen"]["vocab"] == sorted(set("".join(cleaned)))  # from the file: capitals, accents, - ' space
    assert ckpt["namegen"]["data"]["n_names"] == len(cleaned) * 8  # duplicates kept, blank lines dropped
    gen = NameGenerator.from_checkpoint(out / "best.ckpt")
    names = gen.sample(30, seed=0, prefix="É")
    assert all(n.startswith("É") and set(n) <= set(ckpt["namegen"]["vocab"]) for n in names)
    code, stdout, err = call("sample", ["--ckpt", out / "best.ckpt", "-n", "5", "--prefix", "Jean-", "--seed", "1"],
                             capsys)
    assert code == 0, err
    assert [n[:5] for n in stdout.splitlines()] == ["Jean-"] * 5


def test_names_longer_than_block_size_warn_and_train_whole(tmp_path, capsys):
    long_name = "a" * 30  # small's block_size is 12
    data = tmp_path / "long.txt"
    data.write_text("\n".join(["emma", "ava", long_name, "mia", "noah"] * 4) + "\n")
    out = tmp_path / "run"
    assert run("train", [str(a) for a in ("--data", data, "--out", out, *TINY)]) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(note) == 1
    assert re.search(r"4 of 20 names .* longer than block_size 12 \(longest: 30\).*nothing is truncated", note[0])
    from namegen.datamodule import NamesDataModule

    dm = NamesDataModule(data, batch_size=4, block_size=12)
    dm.setup("fit")
    split = dm.train_set if long_name in dm.train_names else dm.val_set
    assert split.x.shape[1] == len(long_name) + 1  # encoded whole, not cut to block_size


# ------------------------------------------------------------------------------ checkpoints

class _Payload:
    """Unpickling this runs a command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad_checkpoints(tmp_path, good) -> dict:
    """name -> (path, text the error must contain)."""
    ckpt = torch.load(good, weights_only=True)
    cases = {}

    def save(name, obj):
        path = tmp_path / name
        torch.save(obj, path)
        return path

    cases["missing"] = (tmp_path / "nope.ckpt", "not found")
    (tmp_path / "adir.ckpt").mkdir()
    cases["directory"] = (tmp_path / "adir.ckpt", "is a directory")
    raw = good.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = (tmp_path / "half.ckpt", "truncated, damaged or not a torch file")
    (tmp_path / "notes.ckpt").write_text("these are my notes, not a checkpoint\n")
    cases["text"] = (tmp_path / "notes.ckpt", "truncated, damaged or not a torch file")
    cases["other-project"] = (save("other.ckpt", {
        "epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.6.6",
        "state_dict": {"encoder.weight": torch.zeros(4, 4)}, "hyper_parameters": {"lr": 0.1},
    }), "not a namegen checkpoint")
    bad_vocab = dict(ckpt, namegen=dict(ckpt["namegen"], vocab=list("abc")))
    cases["vocab-vs-weights"] = (save("vocab.ckpt", bad_vocab), "do not match its own config and vocabulary")
    bad_vocab2 = dict(ckpt, namegen=dict(ckpt["namegen"], vocab=["ab", "c"]))
    cases["vocab-not-chars"] = (save("vocab2.ckpt", bad_vocab2), "inconsistent vocabulary or config")
    bad_config = dict(ckpt, namegen=dict(ckpt["namegen"], config=dict(ckpt["namegen"]["config"], n_hidden=64)))
    cases["config-vs-weights"] = (save("config.ckpt", bad_config), "do not match its own config and vocabulary")
    bad_config2 = dict(ckpt, namegen=dict(ckpt["namegen"], config=dict(ckpt["namegen"]["config"], n_hidden="big")))
    cases["config-type"] = (save("config2.ckpt", bad_config2), "inconsistent vocabulary or config")
    no_config = dict(ckpt, namegen={k: v for k, v in ckpt["namegen"].items() if k != "config"})
    cases["no-config"] = (save("noconfig.ckpt", no_config), "inconsistent vocabulary or config (no 'config' entry)")
    cases["a-list"] = (save("list.ckpt", [1, 2, 3]), "does not hold a checkpoint dictionary")
    return cases


CKPT_CASES = ["missing", "directory", "truncated", "text", "other-project", "vocab-vs-weights", "vocab-not-chars",
              "config-vs-weights", "config-type", "no-config", "a-list"]


@pytest.mark.parametrize("case", CKPT_CASES)
def test_bad_checkpoint_for_sampling(tmp_path, trained_ckpt, capsys, case):
    path, needle = _bad_checkpoints(tmp_path, trained_ckpt)[case]
    code, out, err = call("sample", ["--ckpt", path, "-n", "3"], capsys)
    assert_one_line_error(code, err, "--ckpt:", str(path), needle)
    assert out == ""


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "other-project", "vocab-not-chars"])
def test_bad_checkpoint_for_resuming(tmp_path, trained_ckpt, names_file, capsys, case):
    path, _ = _bad_checkpoints(tmp_path, trained_ckpt)[case]
    code, _, err = call("train", ["--data", names_file, "--resume", path, "--out", tmp_path / "out", *TINY], capsys)
    assert_one_line_error(code, err, "--resume:", str(path))
    assert not (tmp_path / "out").exists()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, trained_ckpt, names_file, capsys):
    marker = tmp_path / "PAYLOAD-RAN"
    ckpt = torch.load(trained_ckpt, weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save(dict(ckpt, namegen=dict(ckpt["namegen"], extra=_Payload(marker))), evil)  # a real checkpoint + payload
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=4))

    for argv in (["--ckpt", evil], ["--ckpt", plain]):
        code, out, err = call("sample", argv, capsys)
        assert_one_line_error(code, err, str(argv[1]), "refused", "nothing in it was run")
    code, _, err = call("train", ["--data", names_file, "--resume", evil, "--out", tmp_path / "o", *TINY], capsys)
    assert_one_line_error(code, err, "--resume:", "refused", "posix.system" if os.name == "posix" else "system")
    with pytest.raises(UserError, match="nothing in it was run"):
        load_checkpoint(evil)
    assert not marker.exists()

    # The payload is live: an unsafe load (what weights_only=True prevents) does run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("flags, needles", [
    (["--model", "huge"], ["--model", "unknown size 'huge'"]),
    (["--model", "mine.yaml"], ["--model", "mine.yaml not found"]),
    (["--max-epochs", "0"], ["--max-epochs", "positive integer, got 0"]),
    (["--max-epochs", "-2"], ["--max-epochs", "positive integer, got -2"]),
    (["--batch-size", "0"], ["--batch-size", "positive integer, got 0"]),
    (["--batch-size", "-8"], ["--batch-size", "positive integer, got -8"]),
    (["--lr", "0"], ["--lr", "greater than 0"]),
    (["--limit-train-batches", "-1"], ["--limit-train-batches", "0 or more"]),
    (["--limit-val-batches", "1.5"], ["--limit-val-batches", "between 0.0 and 1.0"]),
    (["--devices", "0"], ["--devices 0", "Trainer refused"]),
    (["--strategy", "bogus"], ["--strategy bogus", "Trainer refused"]),
    (["--precision", "7"], ["--precision 7", "Trainer refused"]),
    (["--logger", "tensorboard"], ["--logger", "invalid choice"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_train_flags(names_file, saved_run, capsys, flags, needles):
    base = ["--data", names_file, "--out", saved_run, "--overwrite", *TINY]
    code, _, err = call("train", [*base, *flags], capsys)
    assert_one_line_error(code, err, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_requested_without_a_gpu(names_file, saved_run, capsys, accelerator):
    code, _, err = call("train", ["--data", names_file, "--out", saved_run, "--overwrite", *TINY,
                                     "--accelerator", accelerator], capsys)
    assert_one_line_error(code, err, f"--accelerator {accelerator}", "no CUDA GPU", "--accelerator cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_sampling_on_cuda_without_a_gpu(trained_ckpt, capsys):
    code, _, err = call("sample", ["--ckpt", trained_ckpt, "--device", "cuda"], capsys)
    assert_one_line_error(code, err, "--device cuda", "--device cpu")


@pytest.mark.parametrize("flags, needles", [
    (["-n", "0"], ["--num", "positive integer, got 0"]),
    (["-n", "-3"], ["--num", "positive integer, got -3"]),
    (["--temperature", "0"], ["--temperature", "greater than 0"]),
    (["--temperature", "-0.5"], ["--temperature", "greater than 0"]),
    (["--temperature", "nan"], ["--temperature", "greater than 0"]),
    (["--top-k", "28"], ["--top-k", "between 1 and 27"]),
    (["--top-k", "0"], ["--top-k", "positive integer"]),
    (["--prefix", "Öz"], ["--prefix", "'Ö' not in this model's vocabulary"]),  # "Zo" works: conditioned on "zo"
    (["--prefix", "é"], ["--prefix", "'é' not in this model's vocabulary"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_sample_flags(trained_ckpt, capsys, flags, needles):
    code, out, err = call("sample", ["--ckpt", trained_ckpt, *flags], capsys)
    assert_one_line_error(code, err, *needles)
    assert out == ""


def test_top_k_equal_to_the_vocabulary_is_fine(trained_ckpt, capsys):
    code, out, err = call("sample", ["--ckpt", trained_ckpt, "--top-k", "27", "-n", "4", "--seed", "0"], capsys)
    assert code == 0 and len(out.splitlines()) == 4, err


# ------------------------------------------------------------------------------ run directory and W&B


def test_a_run_directory_in_use_is_refused_naming_the_process(names_file, saved_run, capsys):
    """A live process holds --out: the second run stops in one line and touches nothing."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])  # alive until killed below
    try:
        (saved_run / ".namegen.lock").write_text(
            f'{{"pid": {holder.pid}, "host": "{__import__("socket").gethostname()}", "started": 0}}')
        before = {p.name: p.read_bytes() for p in saved_run.iterdir()}
        code, _, err = call("train", ["--data", names_file, "--out", saved_run, "--overwrite", *TINY], capsys)
        assert_one_line_error(code, err, "--out:", str(saved_run), f"pid {holder.pid}", "still going")
        assert {p.name: p.read_bytes() for p in saved_run.iterdir()} == before
    finally:
        (saved_run / ".namegen.lock").unlink()
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(names_file, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    out = tmp_path / "run"
    out.mkdir()
    (out / ".namegen.lock").write_text(f'{{"pid": {gone.pid}, "host": "{socket.gethostname()}", "started": 0}}')
    assert run("train", ["--data", names_file, "--out", out, *TINY]) == 0
    assert (out / "best.ckpt").is_file() and not (out / ".namegen.lock").exists()  # released at the end


def test_wandb_online_without_a_login_stops_before_anything_is_written(names_file, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "run"
    argv = ["--data", names_file, "--out", out, *TINY[:-2], "--logger", "wandb", "--wandb-mode", "online"]
    code, _, err = call("train", argv, capsys)
    assert_one_line_error(code, err, "--wandb-mode:", "wandb login", "--wandb-mode offline")
    assert not out.exists()


@pytest.mark.slow
def test_wandb_online_with_no_network_stops_before_anything_is_written(names_file, tmp_path, monkeypatch):
    """In a fresh process: W&B reads its login once per process."""
    from conftest import run_cli

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "run"
    proc = run_cli("train.py", "--data", str(names_file), "--out", str(out), *TINY[:-2], "--logger", "wandb",
                   "--wandb-mode", "online", cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "--wandb-mode:", "cannot be reached", "--wandb-mode offline")
    assert not out.exists()


CHECK_THEN_LIST_CHILDREN = """
import os, pathlib, socket, sys
from namegen.errors import UserError
from namegen.loggers import check_wandb_online
server = socket.socket(); server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(8)  # accepts, never answers
try:
    check_wandb_online(timeout=5)
except UserError as exc:
    print("refused:", exc)
stats = [p.read_text() for p in pathlib.Path("/proc").glob("[0-9]*/stat")]  # pid (name) state ppid ...
print("children:", [s.split(" (")[1].rsplit(")", 1)[0] for s in stats if int(s.rsplit(")", 1)[1].split()[1]) == os.getpid()])
"""


@pytest.mark.slow
def test_a_failed_wandb_login_leaves_no_service_process_to_wait_for(tmp_path):
    """A server that accepts and never answers keeps W&B's service busy with the request; W&B's exit hook
    waits for that process without a limit (a hang after the error). It must be gone when the error is raised."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the silent server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([sys.executable, "-c", CHECK_THEN_LIST_CHILDREN, str(port)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert "refused: W&B cannot be reached" in proc.stdout, proc.stdout + proc.stderr
    assert "children: []" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr


def test_a_wandb_run_that_cannot_start_stops_before_training(names_file, tmp_path, capsys):
    """A real W&B failure: its run directory cannot be made (a file stands where it goes)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "wandb").write_text("not a directory")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["--data", names_file, "--out", out, *TINY[:-2], "--logger", "wandb", "--wandb-mode", "offline"]
    code, stdout, err = call("train", argv, capsys)
    assert_one_line_error(code, err, "--logger:", "W&B could not start its run", "--logger csv")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no lock, no checkpoint, nothing
    assert "epoch" not in stdout
