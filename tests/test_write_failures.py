"""Writes the OS refuses: a full disk, a read-only filesystem, a directory that is a file.

Each stops the command with one ``error: cannot write FILE: <the OS's reason>; ...`` line and exit
status 2; files written before stay intact and loadable, and no temporary is left. The full and
read-only disks are real: small tmpfs mounts (root only; skipped, with the reason, elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cli_helpers import run
from conftest import run_cli
from test_train_sample import read_wandb_records
from namegen.checkpoint import atomic_write, build_meta, load_checkpoint, read_training_checkpoint, write_checkpoint
from namegen.compare import read_history
from namegen.config import load_config
from namegen.data import Vocab
from namegen.errors import WriteFailed
from namegen.loggers import HistoryCSVLogger
from namegen.model import GRULanguageModel

DISK_FULL = "No space left on device"
READ_ONLY = "Read-only file system"


def _mount_refusal() -> str | None:
    """Why a tmpfs cannot be mounted here (None when it can)."""
    if os.name != "posix" or shutil.which("mount") is None:
        return "no mount command on this system"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = tempfile.mkdtemp(prefix="namegen-mount-probe-")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            return f"mount -t tmpfs was refused here ({(proc.stderr.strip() or 'no reason given')[:200]})"
        subprocess.run(["umount", probe], check=True)
        return None
    finally:
        os.rmdir(probe)


MOUNT_REFUSAL = _mount_refusal()
needs_mount = pytest.mark.skipif(MOUNT_REFUSAL is not None, reason=f"needs a real small disk: {MOUNT_REFUSAL}")


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of ``size`` mounted at ``where`` (created), unmounted afterwards whatever happens."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill(disk: Path) -> None:
    """Take every free byte of ``disk`` (unbuffered writes, smaller and smaller, until the OS refuses)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


def temporaries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.name.endswith(".tmp"))


def one_error_line(stderr: str) -> str:
    """The stderr of a failed command: exactly one line, an ``error:`` line, and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- in-process, fast


def test_an_out_inside_a_file_is_one_line(tmp_path, names_file, monkeypatch, capsys):
    """--out names a directory under a plain file: nothing to mount, the OS says 'Not a directory'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a directory\n")
    code = run("train", ["--data", names_file, "--out", "notes.txt/run", "--logger", "csv", "--accelerator", "cpu"])
    assert code == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: cannot write notes.txt/run: Not a directory (notes.txt is a file); "
        "pass --out DIR where files can be written")
    assert (tmp_path / "notes.txt").read_text() == "a file, not a directory\n"


def test_export_into_a_file_names_the_onnx_file(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=28)
    ckpt = write_checkpoint(tmp_path / "tiny.ckpt", build_meta(config, Vocab(list("abcdefghijklmnopqrstuvwxyz")),
                                                                model.num_parameters(), size="tiny"), model.state_dict())
    (tmp_path / "exports").write_text("")
    assert run("export", ["--ckpt", ckpt, "--out", "exports/tiny.onnx"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "error: cannot write exports/tiny.onnx: Not a directory (exports is a file); "
        "pass --out FILE where files can be written")


@needs_mount
def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        target = disk / "best.ckpt"
        target.write_bytes(b"old checkpoint" * 100)
        fill(disk)
        with pytest.raises(WriteFailed, match=rf"^cannot write .*best\.ckpt: {DISK_FULL}$") as info:
            atomic_write(target, lambda f: f.write(b"new" * 100_000))
        assert info.value.disk_full
        assert target.read_bytes() == b"old checkpoint" * 100
        assert temporaries(disk) == []


@needs_mount
def test_atomic_write_on_a_read_only_disk(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        (disk / "last.ckpt").write_bytes(b"old")
        remount_read_only(disk)
        with pytest.raises(WriteFailed, match=rf"last\.ckpt: {READ_ONLY}$") as info:
            atomic_write(disk / "last.ckpt", lambda f: f.write(b"new"))
        assert info.value.read_only
        assert (disk / "last.ckpt").read_bytes() == b"old"


@needs_mount
def test_metrics_csv_on_a_full_disk_keeps_its_rows(tmp_path):
    """A row that no longer fits: WriteFailed, and metrics.csv is cut back to the rows it held (no partial
    row); Lightning's finalize after the failure writes nothing more."""
    with small_disk(tmp_path / "disk", "64k") as disk:
        logger = HistoryCSVLogger(disk / "run")  # saves after every logged row, as in training
        logger.log_metrics({"train/loss": 3.0, "epoch": 0}, step=0)
        before = (disk / "run" / "metrics.csv").read_text()
        fill(disk)
        with pytest.raises(WriteFailed, match=rf"metrics\.csv: {DISK_FULL}$"):
            for step in range(1, 1000):  # the file outgrows its page within a few hundred rows
                logger.log_metrics({"train/loss": 2.0, "epoch": 0}, step=step)
        grown = (disk / "run" / "metrics.csv").read_text()
        assert grown.startswith(before) and grown.endswith("\n") and len(grown) > 3000  # whole rows only
        logger.log_metrics({"train/loss": 1.0, "epoch": 1}, step=1000)  # after a failure: nothing more
        logger.finalize("failed")  # what Lightning calls next: no second error
        assert (disk / "run" / "metrics.csv").read_text() == grown
        assert read_history(disk / "run" / "metrics.csv").train == {0: 2.0}
        assert temporaries(disk) == []


# ----------------------------------------------------------------------------- whole commands, real disks


@pytest.fixture(scope="module")
def full_disk_run(tmp_path_factory, real_names):
    """small trained for 5 epochs onto a 2600 KiB disk: one epoch's best.ckpt and last.ckpt (about 960 KiB
    each) fit, the next epoch's first checkpoint does not (its temporary needs room beside the old file)."""
    if MOUNT_REFUSAL is not None:
        pytest.skip(f"needs a real small disk: {MOUNT_REFUSAL}")
    tmp = tmp_path_factory.mktemp("full")
    (tmp / "names.txt").write_text("\n".join(real_names.read_text().splitlines()[:400]) + "\n")
    with small_disk(tmp / "disk", "2600k") as disk:
        proc = run_cli("train.py", "--model", "small", "--data", "names.txt", "--batch-size", "32", "--max-epochs",
                       "5", "--accelerator", "cpu", "--logger", "csv", "--out", "disk/run", cwd=tmp)
        yield tmp, disk / "run", proc


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_is_one_line_and_loses_nothing(full_disk_run):
    tmp, run_dir, proc = full_disk_run
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert re.fullmatch(rf"error: cannot write disk/run/(best|last)\.ckpt: {DISK_FULL}; free some space or pass "
                        r"--out DIR on another disk", line), line
    assert "epoch 1/5" in proc.stdout and "finished" not in proc.stdout
    for name in ("best.ckpt", "last.ckpt"):  # epoch 1's, whole
        ckpt = read_training_checkpoint(run_dir / name)
        assert ckpt["epoch"] == 0
        load_checkpoint(run_dir / name).model  # noqa: B018
    assert read_history(run_dir / "metrics.csv").val.keys() >= {0}
    assert temporaries(run_dir) == []
    assert not (run_dir / ".namegen.lock").exists()  # the run released its directory


@pytest.mark.slow
def test_a_full_disk_finishes_the_wandb_run(tmp_path, real_names):
    """With W&B (offline) on the same full disk: the same one line, and the W&B run is closed (its exit
    record, exit code 1) rather than left open; the run's directory is released."""
    if MOUNT_REFUSAL is not None:
        pytest.skip(f"needs a real small disk: {MOUNT_REFUSAL}")
    (tmp_path / "names.txt").write_text("\n".join(real_names.read_text().splitlines()[:400]) + "\n")
    with small_disk(tmp_path / "disk", "2900k") as disk:  # 1.9 MiB of epoch-1 checkpoints, the W&B run, and no more
        proc = run_cli("train.py", "--model", "small", "--data", "names.txt", "--batch-size", "32", "--max-epochs",
                       "5", "--accelerator", "cpu", "--logger", "wandb", "--out", "disk/run", cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        line = one_error_line(proc.stderr)
        assert re.fullmatch(rf"error: cannot write disk/run/(best|last)\.ckpt: {DISK_FULL}; .*", line), line
        (run_dir,) = (disk / "run" / "wandb").glob("offline-run-*")
        exits = [r.exit for r in read_wandb_records(run_dir) if r.WhichOneof("record_type") == "exit"]
        assert [e.exit_code for e in exits] == [1]
        assert not (disk / "run" / ".namegen.lock").exists()
        assert temporaries(disk) == []


@pytest.mark.slow
def test_a_full_disk_under_ddp_is_still_one_line(tmp_path, real_names):
    """Two CPU processes: rank 0's write fails and it says so; rank 1, left waiting at the checkpoint's
    barrier, stops without a traceback of its own."""
    if MOUNT_REFUSAL is not None:
        pytest.skip(f"needs a real small disk: {MOUNT_REFUSAL}")
    (tmp_path / "names.txt").write_text("\n".join(real_names.read_text().splitlines()[:800]) + "\n")
    with small_disk(tmp_path / "disk", "2600k") as disk:
        proc = run_cli("train.py", "--model", "small", "--data", "names.txt", "--batch-size", "32", "--max-epochs",
                       "5", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--logger", "csv",
                       "--out", "disk/run", cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("Initializing distributed: ")]
        line = one_error_line("\n".join(lines))
        assert re.fullmatch(rf"error: cannot write disk/run/(best|last)\.ckpt: {DISK_FULL}; .*", line), line
        assert read_training_checkpoint(disk / "run" / "last.ckpt")["epoch"] == 0
        assert temporaries(disk) == [] and not (disk / "run" / ".namegen.lock").exists()


@pytest.mark.slow
def test_training_onto_a_read_only_disk_is_one_line(full_disk_run, tmp_path):
    """The full run's checkpoints on a disk remounted read-only: --resume reads them, then cannot write."""
    _, source, _ = full_disk_run
    with small_disk(tmp_path / "disk", "4m") as disk:
        shutil.copytree(source, disk / "run")
        before = {p.name: sha(p) for p in (disk / "run").iterdir()}
        remount_read_only(disk)
        proc = run_cli("train.py", "--resume", "disk/run/last.ckpt", "--max-epochs", "3", "--accelerator", "cpu",
                       "--logger", "csv", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert one_error_line(proc.stderr) == (
            f"error: cannot write disk/run/.namegen.lock: {READ_ONLY}; pass --out DIR on a writable disk")
        assert {p.name: sha(p) for p in (disk / "run").iterdir()} == before


@pytest.mark.slow
def test_export_to_a_full_disk_keeps_the_old_export(full_disk_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    _, source, _ = full_disk_run
    monkeypatch.chdir(tmp_path)
    with small_disk(tmp_path / "disk", "128k") as disk:
        (disk / "small.onnx").write_bytes(b"an earlier export")
        assert run("export", ["--ckpt", source / "best.ckpt", "--out", "disk/small.onnx", "--force"]) == 2
        assert one_error_line(capsys.readouterr().err) == (
            f"error: cannot write disk/small.onnx: {DISK_FULL}; free some space or pass --out FILE on another disk")
        assert (disk / "small.onnx").read_bytes() == b"an earlier export"
        assert temporaries(disk) == []


@pytest.mark.slow
def test_a_report_on_a_full_disk_is_one_line(full_disk_run, tmp_path, monkeypatch, capsys):
    _, source, _ = full_disk_run
    monkeypatch.chdir(tmp_path)
    shutil.copytree(source, tmp_path / "run")
    with small_disk(tmp_path / "disk", "16k") as disk:
        code = run("compare", ["--ckpt", "run/best.ckpt", "-n", "20", "--logger", "csv", "--reports-dir",
                               "disk/reports", "--date", "today"])
        assert code == 2
        line = one_error_line(capsys.readouterr().err)
        assert re.fullmatch(rf"error: cannot write disk/reports/today/[\w.-]+: {DISK_FULL}; free some space or "
                            r"pass --reports-dir DIR on another disk", line), line
        assert temporaries(disk) == []


@needs_mount
def test_a_tune_report_on_a_full_disk_is_one_line(names_file, tmp_path, monkeypatch, capsys):
    """namegen tune's trials run; its report cannot be written: one line, and the study keeps its trial."""
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("base: small\nparams:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2}\n")
    smoke = ["--space", "space.yaml", "--data", str(names_file), "--trials", "1", "--max-epochs", "1",
             "--limit-train-batches", "2", "--limit-val-batches", "1"]
    with small_disk(tmp_path / "disk", "16k") as disk:
        code = run("tune", [*smoke, "--reports-dir", "disk/reports", "--date", "today"])
        assert code == 2
        line = one_error_line(capsys.readouterr().err)
        assert re.fullmatch(rf"error: cannot write disk/reports/today/[\w.-]+: {DISK_FULL}; free some space or "
                            r"pass --reports-dir DIR on another disk", line), line
        assert temporaries(disk) == []
    assert run("tune", [*smoke, "--reports-dir", "reports", "--date", "today"]) == 0  # the same study, reported
    assert "1 complete" in (tmp_path / "reports/today/tune-small.md").read_text()
