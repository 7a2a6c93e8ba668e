"""sample.py's --unique, --new-only, --data, --format json, --prefix and --min/--max-len, in process.

A tiny untrained checkpoint (random weights) that records its training file
the way train.py does (absolute path + sha256); the training file holds the 26
one-letter names, so "new" and "not new" are easy to tell apart.
"""

import json

import pytest
import torch

from namegen.api import NameGenerator, NotEnoughNames
from cli_helpers import run
from namegen.config import load_config
from namegen.checkpoint import build_meta, write_checkpoint
from namegen.data import Vocab, sha256_of
from namegen.model import GRULanguageModel

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def ckpt(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(LETTERS) + "\n")
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=28)
    meta = build_meta(config, Vocab(list(LETTERS)), model.num_parameters(), size="tiny",
                      data={"path": str(train.resolve()), "sha256": sha256_of(train), "n_names": 26})
    return write_checkpoint(tmp_path / "tiny.ckpt", meta, model.state_dict()), train


def sample(capsys, *args):
    status = run("sample", list(map(str, args)))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.strip().splitlines()


def test_unique_gives_no_repeats_and_says_when_it_cannot(ckpt, capsys):
    path, _ = ckpt
    status, names, err = sample(capsys, "--ckpt", path, "-n", 26, "--max-len", 1, "--unique", "--seed", 0)
    assert status == 0 and err == [] and sorted(names) == list(LETTERS)
    # only 26 one-letter names exist: prints what it found, one line on stderr, status 1
    status, names, err = sample(capsys, "--ckpt", path, "-n", 27, "--max-len", 1, "--unique", "--seed", 0)
    assert status == 1 and sorted(names) == list(LETTERS)
    assert len(err) == 1 and err[0].startswith("error: only 26 of 27 distinct names after 1540 draws")


def test_new_only_leaves_out_training_names(ckpt, capsys):
    path, _ = ckpt
    status, names, err = sample(capsys, "--ckpt", path, "-n", 100, "--max-len", 2, "--new-only", "--seed", 0)
    assert status == 0 and err == [] and len(names) == 100 and all(len(n) == 2 for n in names)
    status, names, err = sample(capsys, "--ckpt", path, "-n", 5, "--max-len", 1, "--new-only", "--seed", 0)
    assert status == 1 and names == [] and "only 0 of 5 new names" in err[0]


def test_new_only_needs_the_recorded_training_file_unchanged(ckpt, tmp_path, capsys):
    path, train = ckpt
    train.write_text("\n".join(LETTERS) + "\nzz\n")
    status, names, err = sample(capsys, "--ckpt", path, "--new-only")
    assert status == 2 and names == [] and len(err) == 1 and "has changed since training" in err[0]
    train.unlink()
    status, names, err = sample(capsys, "--ckpt", path, "--new-only")
    assert status == 2 and len(err) == 1 and "is not there" in err[0] and "--data" in err[0]
    other = tmp_path / "other.txt"
    other.write_text("ab\n")
    status, names, err = sample(capsys, "--ckpt", path, "--new-only", "--data", other, "-n", 300, "--max-len", 2,
                                "--seed", 0)
    assert status == 0 and "ab" not in names and any(len(n) == 1 for n in names)


def test_json_lines_carry_logprob_and_is_new(ckpt, capsys):
    path, train = ckpt
    status, lines, err = sample(capsys, "--ckpt", path, "-n", 200, "--max-len", 2, "--format", "json", "--seed", 0)
    assert status == 0 and err == []
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 200 and all(set(r) == {"name", "logprob", "is_new"} for r in rows)
    assert all(r["is_new"] == (len(r["name"]) == 2) for r in rows)
    assert {r["is_new"] for r in rows} == {True, False}
    gen = NameGenerator.from_checkpoint(path)
    nll = gen.score([r["name"] for r in rows[:20]])
    assert [r["logprob"] for r in rows[:20]] == pytest.approx([-v for v in nll], abs=1e-4)
    train.unlink()  # without the training file, is_new is null and stderr says why
    status, lines, err = sample(capsys, "--ckpt", path, "-n", 3, "--format", "json")
    assert status == 0 and all(json.loads(line)["is_new"] is None for line in lines)
    assert len(err) == 1 and err[0].startswith("note: is_new is null")


def test_prefix_and_lengths_are_constraints_during_generation(ckpt, capsys):
    path, _ = ckpt
    status, names, _ = sample(capsys, "--ckpt", path, "-n", 300, "--min-len", 3, "--max-len", 5, "--seed", 0)
    assert status == 0 and len(names) == 300 and all(3 <= len(n) <= 5 for n in names)
    assert {len(n) for n in names} == {3, 4, 5}
    status, names, _ = sample(capsys, "--ckpt", path, "-n", 50, "--prefix", "ka", "--max-len", 4, "--seed", 0)
    assert status == 0 and all(n.startswith("ka") and 2 <= len(n) <= 4 for n in names)
    status, names, err = sample(capsys, "--ckpt", path, "--prefix", "kate", "--max-len", 3)
    assert status == 2 and len(err) == 1 and "--max-len 3" in err[0]


def test_api_unique_is_reproducible_and_reports_what_it_found(ckpt):
    path, _ = ckpt
    gen = NameGenerator.from_checkpoint(path)
    first = gen.sample(20, unique=True, exclude=gen.training_names(), seed=5, max_len=3)
    assert first == gen.sample(20, unique=True, exclude=gen.training_names(), seed=5, max_len=3)
    assert len(set(first)) == 20 and not set(first) & set(LETTERS)
    with pytest.raises(NotEnoughNames) as info:
        gen.sample(10, unique=True, max_len=1, prefix="q", max_draws=50, seed=0)
    assert [name for name, _ in info.value.found] == ["q"] and "after 50 draws" in str(info.value)
