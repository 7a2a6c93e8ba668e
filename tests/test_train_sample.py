"""End to end: train.py writes best.ckpt and a W&B run; sample.py reads it in a fresh process."""

import glob
import hashlib
import json
import struct

import pytest
import torch

from conftest import run_cli
from namegen.api import NameGenerator
from namegen.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # train.py and sample.py in fresh processes

QUICK = ["--max-epochs", "1", "--limit-train-batches", "3", "--accelerator", "cpu"]


def read_wandb_records(run_dir) -> list:
    """The records of an offline W&B run, read from its .wandb file (LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(f"{run_dir}/*.wandb")
    raw, block, pos, buf, records = open(path, "rb").read(), 32768, 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        buf += raw[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def read_wandb_history(run_dir) -> list[dict]:
    """History rows of an offline W&B run."""
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in read_wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_names):
    """One real training run of small on 400 names, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "names.txt"
    data.write_text("\n".join(real_names.read_text().splitlines()[:400]) + "\n")
    # 320 training names in batches of 32: 10 steps, enough for a step-level log row
    proc = run_cli("train.py", "--model", "small", "--data", str(data), "--batch-size", "32", "--max-epochs", "1",
                   "--accelerator", "cpu", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_train_writes_checkpoints_and_reports(trained):
    tmp, proc = trained
    out = tmp / "checkpoints" / "small"
    assert (out / "best.ckpt").is_file() and (out / "last.ckpt").is_file()
    assert "trainable parameters: 79,772" in proc.stdout
    assert "best val/loss" in proc.stdout
    assert "python sample.py --ckpt checkpoints/small/best.ckpt" in proc.stdout
    assert "wandb sync" in proc.stdout
    assert (out / "metrics.csv").read_text().startswith("epoch")


def test_checkpoint_carries_what_rebuilds_the_model(trained):
    tmp, _ = trained
    ckpt = torch.load(tmp / "checkpoints/small/best.ckpt", weights_only=True)
    meta = ckpt["namegen"]
    assert meta["vocab"] == list("abcdefghijklmnopqrstuvwxyz")
    assert meta["config"]["n_hidden"] == 128 and meta["num_parameters"] == 79_772
    assert meta["data"]["n_names"] == 400


def test_wandb_offline_run_logged_val_loss(trained):
    tmp, proc = trained
    (run_dir,) = glob.glob(str(tmp / "checkpoints/small/wandb/offline-run-*"))
    rows = read_wandb_history(run_dir)
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert len(val) == 1
    best = float(proc.stdout.split("best val/loss ")[1].split()[0])
    assert val[0] == pytest.approx(best, abs=1e-4)
    assert any("train/loss" in r for r in rows) and any(k.startswith("lr-") for r in rows for k in r)
    assert any(r.get("samples/_type") == "table-file" and r.get("samples/nrows") == 10 for r in rows)


def test_best_checkpoint_is_a_wandb_model_artifact(trained):
    """The offline run stages best.ckpt as a model artifact; `wandb sync` uploads it with the run."""
    tmp, proc = trained
    (run_dir,) = glob.glob(str(tmp / "checkpoints/small/wandb/offline-run-*"))
    (artifact,) = [r.artifact for r in read_wandb_records(run_dir)
                   if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert artifact.type == "model" and artifact.name == f"model-{run_dir.rsplit('-', 1)[-1]}"
    assert set(artifact.aliases) >= {"best", "latest"}
    meta = json.loads(artifact.metadata)
    best = float(proc.stdout.split("best val/loss ")[1].split()[0])
    assert meta["val/loss"] == pytest.approx(best, abs=1e-4) and meta["size"] == "small"
    assert meta["num_parameters"] == 79_772
    assert meta["data_sha256"] == hashlib.sha256((tmp / "names.txt").read_bytes()).hexdigest()
    assert [e.path for e in artifact.manifest.contents] == ["best.ckpt"]


def test_a_log_file_gets_one_line_per_epoch_and_no_warnings(trained):
    """Not a terminal: no progress-bar redraws, no Lightning chatter, no warnings."""
    _, proc = trained
    assert "epoch 1/1: val/loss" in proc.stdout and "it/s" not in proc.stdout + proc.stderr
    for noise in ("Warning", "GPU available", "litlogger", "will be deleted", "deprecated", "Trainer.fit"):
        assert noise not in proc.stdout + proc.stderr, noise


def test_lightning_load_from_checkpoint_rebuilds_the_module(trained):
    from namegen.module import NameGenModule

    tmp, _ = trained
    path = tmp / "checkpoints/small/best.ckpt"
    module = NameGenModule.load_from_checkpoint(path, weights_only=True)  # hyperparameters are plain types
    assert module.config.n_hidden == 128 and module.model.num_parameters() == 79_772
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())


def test_sample_in_a_fresh_process(trained):
    tmp, _ = trained
    proc = run_cli("sample.py", "--ckpt", "checkpoints/small/best.ckpt", "-n", "50", "--seed", "1", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.splitlines()
    assert len(names) == 50 and all(names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
    again = run_cli("sample.py", "--ckpt", "checkpoints/small/best.ckpt", "-n", "50", "--seed", "1", cwd=tmp)
    assert again.stdout == proc.stdout  # same seed, same names


def test_bare_best_ckpt_resolves_to_the_newest_checkpoint(trained):
    tmp, _ = trained
    proc = run_cli("sample.py", "--ckpt", "best.ckpt", "-n", "3", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoints/small/best.ckpt" in proc.stderr and len(proc.stdout.splitlines()) == 3


def test_second_run_does_not_clobber_or_version_the_first(trained):
    tmp, _ = trained
    before = (tmp / "checkpoints/small/best.ckpt").read_bytes()
    proc = run_cli("train.py", "--model", "small", "--data", "names.txt", *QUICK, cwd=tmp)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (tmp / "checkpoints/small/best.ckpt").read_bytes() == before
    assert not list((tmp / "checkpoints/small").glob("best-v*.ckpt"))


def test_api_samples_and_scores(trained):
    tmp, _ = trained
    gen = NameGenerator.from_checkpoint(tmp / "checkpoints/small/best.ckpt")
    names = gen.sample(200, seed=0, max_len=8)
    assert len(names) == 200 and all(1 <= len(n) <= 8 for n in names)
    assert gen.sample(5, seed=3) == gen.sample(5, seed=3)
    assert all(n.startswith("ka") for n in gen.sample(20, prefix="ka", seed=0))
    nll = gen.score(["emma", "zzzzzz"])
    assert nll[0] < nll[1]


def test_score_matches_a_direct_computation(trained):
    tmp, _ = trained
    loaded = load_checkpoint(tmp / "checkpoints/small/best.ckpt")
    gen = NameGenerator(loaded)
    model, vocab = loaded.model, loaded.vocab
    with torch.no_grad():
        ids = [1] + vocab.encode("ava") + [1]
        logits, _ = model(torch.tensor([ids[:-1]]))
        logp = torch.log_softmax(logits[0], -1)
        direct = -sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
    assert gen.score(["ava"])[0] == pytest.approx(direct, abs=1e-5)
