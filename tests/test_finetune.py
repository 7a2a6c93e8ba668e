"""Fine-tuning: a run that starts from a trained model (``namegen train --init-from CKPT --data FILE``).

The bases here are tiny models with random weights (every row different, so a row moved to the
wrong character shows), a notebook ``.pth`` written by the notebook's own save_model, and short
lists cut from examples/lists (Faker's first names, MIT).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import notebook_transcript as nb
from cli_helpers import run
from conftest import ROOT, run_cli
from namegen.api import NameGenerator, load_model
from namegen.callbacks import horizon_decay
from namegen.checkpoint import build_meta, write_checkpoint
from namegen.config import SIZES, load_config
from namegen.data import AS_IS, END, PAD, TITLE, Vocab, capitalise, case_of, fold, sha256_of
from namegen.datamodule import NamesDataModule
from namegen.finetune import load_base, relative, transplant
from namegen.loggers import base_reference
from namegen.model import GRULanguageModel
from test_train_sample import read_wandb_records

LATIN = list("abcdefghijklmnopqrstuvwxyz")
LISTS = ROOT / "examples" / "lists"


def tiny_base(path: Path, chars=LATIN, seed: int = 0) -> Path:
    """A tiny lowercase model with random weights, as train.py would save it."""
    torch.manual_seed(seed)
    config = load_config("small").replace(n_embd=8, n_hidden=16, block_size=12)
    vocab = Vocab(chars)
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    with torch.no_grad():
        model.head.bias.normal_(0.0, 1.0)  # distinct rows everywhere
    meta = build_meta(config, vocab, model.num_parameters(), size="tiny",
                      data={"path": None, "sha256": "0" * 64, "n_names": 1000})
    return write_checkpoint(path, meta, model.state_dict())


def short_list(tmp_path: Path, source: str, n: int) -> Path:
    path = tmp_path / f"{source}-{n}.txt"
    names = (LISTS / f"{source}.txt").read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- rows by character


def test_rows_move_by_character_and_known_probabilities_are_unchanged(tmp_path):
    base = load_base(tiny_base(tmp_path / "base.ckpt"))
    names = ["Émile", "zoë", "жанна", "Abby", "ъ"]
    vocab = Vocab.from_names(names)  # the list's own characters, as a run from scratch has
    shared = [c for c in LATIN if c in vocab.stoi]
    assert shared == list("beilmoyz") and vocab.stoi["e"] != base.loaded.vocab.stoi["e"]  # ids moved
    model = GRULanguageModel.from_config(base.loaded.config, vocab_size=len(vocab))
    carried = transplant(base, model, vocab, names)
    assert carried.kept == shared and "".join(carried.dropped) == "acdfghjknpqrstuvwx"

    old, new = base.loaded.model.state_dict(), model.state_dict()
    for c in shared:  # matched by character, never by position
        i, j = vocab.stoi[c], base.loaded.vocab.stoi[c]
        for key in ("embedding.weight", "head.weight", "head.bias"):
            assert torch.equal(new[key][i], old[key][j]), (key, c)
    assert carried.related == {"A": "a", "É": "e", "ë": "e", "ж": "z", "а": "a", "н": "n"}
    assert carried.fresh == ["ъ"]
    assert torch.equal(new["embedding.weight"][vocab.stoi["ж"]], old["embedding.weight"][base.loaded.vocab.stoi["z"]])

    # step 0: on names of known letters, the distribution among the letters both know is the base's
    known_new = torch.tensor([0, END] + [vocab.stoi[c] for c in shared])
    known_old = torch.tensor([0, END] + [base.loaded.vocab.stoi[c] for c in shared])
    for name in ("emily", "zoey", "mili"):
        x_new = torch.tensor([[END] + [vocab.stoi[c] for c in name]])
        x_old = torch.tensor([[END] + [base.loaded.vocab.stoi[c] for c in name]])
        model.eval()
        with torch.no_grad():
            p_new = model(x_new)[0][0][:, known_new].log_softmax(-1)
            p_old = base.loaded.model(x_old)[0][0][:, known_old].log_softmax(-1)
        torch.testing.assert_close(p_new, p_old, rtol=0, atol=1e-6)


def test_a_new_letter_starts_as_likely_as_the_list_makes_it(tmp_path):
    """'ë' is a quarter of the e-family in the list: it starts at a quarter of 'e''s odds."""
    base = load_base(tiny_base(tmp_path / "base.ckpt"))
    names = ["zoë", "eve", "ellen"]  # e: 4 times, ë once
    vocab = Vocab.from_names(names)
    model = GRULanguageModel.from_config(base.loaded.config, vocab_size=len(vocab))
    transplant(base, model, vocab, names)
    e, e_diaeresis = vocab.stoi["e"], vocab.stoi["ë"]
    counts = "".join(names).count("e"), "".join(names).count("ë")
    gap = (model.head.bias[e_diaeresis] - model.head.bias[e]).item()
    assert gap == pytest.approx(math.log(counts[1] / sum(counts)), abs=1e-5)


@pytest.mark.parametrize("char, known, expected", [
    ("É", LATIN, "e"), ("Ö", LATIN, "o"), ("þ", LATIN, "t"), ("Ж", LATIN, "z"), ("ω", LATIN, "o"),
    ("ь", LATIN, None), ("É", LATIN + ["é"], "é"), ("K", LATIN, "k"),
])
def test_relative(char, known, expected):
    assert relative(char, set(known)) == expected


def test_a_notebook_base_starts_names_from_padding(tmp_path):
    torch.manual_seed(3)
    path = nb.save_model(nb.GRU_SmallModel(n_classes=28, embd_dim=64, hidden_dim=128), base_name="GRU_alpha_model",
                         path=str(tmp_path))
    base = load_base(path)
    vocab = Vocab.from_names(["olga"])
    model = GRULanguageModel.from_config(base.loaded.config, vocab_size=len(vocab))
    transplant(base, model, vocab, ["olga"])
    emb = base.loaded.model.embedding.weight
    assert torch.equal(model.embedding.weight[END], emb[PAD])  # '.' takes padding's row: the notebook's start


# ----------------------------------------------------------------------------- case


def test_capitalised_lists_are_learned_in_lower_case():
    assert case_of(["Émile", "Zoë", "Jean-Luc", "Anna Maria"]) == TITLE
    assert case_of(["emma", "olivia"]) == AS_IS
    assert case_of(["McKenna", "Anna"]) == AS_IS  # a capital inside a part: kept as written
    assert case_of(["İlkay"]) == AS_IS  # lower-casing changes its length: kept as written
    assert fold(["Émile"], TITLE) == ["émile"] and capitalise("jean-luc") == "Jean-Luc"


def test_prefix_with_a_capital_on_a_lowercase_model(tmp_path):
    gen = NameGenerator.from_checkpoint(tiny_base(tmp_path / "base.ckpt"))
    names = gen.sample(10, prefix="Ka", seed=0)
    assert all(name.startswith("Ka") and name[2:] == name[2:].lower() for name in names)
    assert gen.score(["Kate"]) == gen.score(["kate"])


# ----------------------------------------------------------------------------- the weight average's horizon


@pytest.mark.parametrize("size", SIZES)
def test_shipped_averages_keep_their_decay_on_names_txt(size, real_names):
    config = load_config(size)
    data = NamesDataModule(real_names, batch_size=config.batch_size, split_seed=config.data_seed)
    data.setup("fit")
    steps = len(data.train_dataloader()) * config.max_epochs
    assert horizon_decay(config.ema_decay, steps) == config.ema_decay


def test_a_short_run_averages_over_a_quarter_of_it():
    assert horizon_decay(0.999, 400) == pytest.approx(0.99)  # 398 names, batch 64, 80 epochs
    assert horizon_decay(0.999, 1) == 0.0  # one step: the average is the weights


# ----------------------------------------------------------------------------- runs


def test_fine_tunes_a_notebook_pth(tmp_path, capsys):
    torch.manual_seed(4)
    pth = nb.save_model(nb.GRU_SmallModel(n_classes=28, embd_dim=64, hidden_dim=128), base_name="GRU_alpha_model",
                        path=str(tmp_path))
    data, out = short_list(tmp_path, "estonian", 40), tmp_path / "run"
    assert run("train", ["--init-from", pth, "--data", data, "--max-epochs", "1", "--out", out, "--logger", "csv"]) == 0
    printed = capsys.readouterr().out
    assert "best val/loss" in printed and re.search(r"\d+ characters keep the base's rows", printed)
    loaded = load_model(out / "best.ckpt")
    assert loaded.meta["base"]["from_notebook"] and loaded.meta["base"]["sha256"] == sha256_of(pth)
    assert loaded.start_token == END and loaded.case == TITLE
    assert loaded.meta["data"]["sha256"] == sha256_of(data)


@pytest.mark.slow
def test_a_latin_base_learns_cyrillic(tmp_path):
    base, data = tiny_base(tmp_path / "base.ckpt"), short_list(tmp_path, "russian", 120)
    proc = run_cli("train.py", "--init-from", str(base), "--data", str(data), "--max-epochs", "4",
                   "--out", str(tmp_path / "run"), "--logger", "csv", "--lr", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "log_every_n_steps" not in proc.stderr  # short epochs: no Lightning chatter
    losses = [float(line.split("val/loss ")[1].split()[0]) for line in proc.stdout.splitlines()
              if line.startswith("epoch ")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    sampled = run_cli("sample.py", "--ckpt", str(tmp_path / "run" / "best.ckpt"), "-n", "30", "--seed", "0",
                      "--prefix", "Ан")
    assert sampled.returncode == 0, sampled.stderr
    names = sampled.stdout.split()
    assert len(names) == 30 and all(n.startswith("Ан") for n in names)


def test_resuming_a_fine_tuning_run_continues_it(tmp_path, capsys):
    from namegen.training import TrainOptions, build_data, build_module, plan_run

    base, data, out = tiny_base(tmp_path / "base.ckpt"), short_list(tmp_path, "estonian", 40), tmp_path / "run"
    args = ["--data", data, "--out", out, "--logger", "csv"]
    assert run("train", ["--init-from", base, *args, "--max-epochs", "2"]) == 0
    first = torch.load(out / "last.ckpt", weights_only=True)
    opts = TrainOptions(resume=str(out / "last.ckpt"), data=data, max_epochs=3, logger="csv")
    plan = plan_run(opts)
    module = build_module(plan, build_data(plan, opts), opts)
    assert plan.carried is None  # resuming never starts again from the base
    assert module.meta["base"] == first["namegen"]["base"]
    assert run("train", ["--resume", out / "last.ckpt", *args, "--max-epochs", "3"]) == 0
    assert "resuming" in capsys.readouterr().out
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"] // 2
    assert last["namegen"]["base"] == first["namegen"]["base"] and last["namegen"]["case"] == TITLE


def test_an_interrupted_fine_tuning_run_says_how_to_resume():
    from namegen.cli import build_parser, resume_command

    argv = ["--init-from", "base.ckpt", "--data", "l.txt", "--model", "finetune", "--max-epochs", "9"]
    args = build_parser().parse_args(["train", *argv])
    args.argv, args.invocation = argv, ["namegen", "train"]
    assert resume_command(args, "checkpoints/tiny-l/last.ckpt") == (
        "namegen train --data l.txt --max-epochs 9 --resume checkpoints/tiny-l/last.ckpt")


@pytest.mark.parametrize("problem", ["missing", "corrupt", "text", "with --resume"])
def test_init_from_errors_are_one_line(problem, tmp_path, capsys):
    data = short_list(tmp_path, "estonian", 20)
    path = tmp_path / "base.ckpt"
    extra = []
    if problem == "corrupt":
        path.write_bytes(tiny_base(tmp_path / "good.ckpt").read_bytes()[:500])
    elif problem == "text":
        path.write_text("not a model\n")
    elif problem == "with --resume":
        tiny_base(path)
        extra = ["--resume"]
    assert run("train", ["--init-from", path, "--data", data, "--out", tmp_path / "run", *extra]) == 2
    line = stderr_line(capsys)
    assert line.startswith("error: --init-from: ") and (str(path) in line or problem == "with --resume"), line
    assert not (tmp_path / "run").exists()


def test_a_recipe_without_an_architecture_needs_init_from(capsys):
    assert run("train", ["--model", "finetune"]) == 2
    assert "use it with --init-from CKPT" in stderr_line(capsys)


# ----------------------------------------------------------------------------- provenance


@pytest.mark.slow
def test_the_base_is_in_the_w_and_b_run(tmp_path):
    """In a process of its own, as a user runs it (an in-process W&B run would leave its service to every
    later test's processes)."""
    base, data, out = tiny_base(tmp_path / "base.ckpt"), short_list(tmp_path, "estonian", 40), tmp_path / "run"
    proc = run_cli("train.py", "--init-from", str(base), "--data", str(data), "--max-epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "recorded in this run's config (base)" in proc.stdout
    (run_dir,) = out.glob("wandb/offline-run-*")
    config = {item.key: json.loads(item.value_json) for record in read_wandb_records(run_dir)
              if record.WhichOneof("record_type") == "run" for item in record.run.config.update}
    assert config["base"]["sha256"] == sha256_of(base) and config["base"]["size"] == "tiny"
    artifact = base_reference(load_base(base).record())
    entry = next(iter(artifact.manifest.entries.values()))
    assert entry.ref == base.resolve().as_uri() and artifact.type == "model"


def test_new_only_leaves_out_the_list_as_written(tmp_path, capsys):
    base, data, out = tiny_base(tmp_path / "base.ckpt"), short_list(tmp_path, "estonian", 40), tmp_path / "run"
    assert run("train", ["--init-from", base, "--data", data, "--max-epochs", "1", "--out", out, "--logger",
                         "csv", "--lr", "0.05"]) == 0
    capsys.readouterr()
    assert run("sample", ["--ckpt", out / "best.ckpt", "-n", "200", "--seed", "0", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    listed = set(data.read_text(encoding="utf-8").split())
    assert all(row["name"][0].isupper() for row in rows)
    assert all(row["is_new"] == (row["name"] not in listed) for row in rows)


def test_tune_searches_a_fine_tuning_recipe(tmp_path, capsys):
    """namegen tune --init-from: every trial starts from the base; the study is named after recipe, base and list."""
    base, data = tiny_base(tmp_path / "base.ckpt"), short_list(tmp_path, "estonian", 40)
    argv = ["--init-from", base, "--data", data, "--trials", "1", "--max-epochs", "1", "--runs-dir", tmp_path / "runs",
            "--reports-dir", tmp_path / "reports", "--storage", tmp_path / "studies.journal", "--logger", "csv"]
    assert run("tune", argv) == 0
    printed = capsys.readouterr().out
    assert "study 'finetune-tiny-estonian-40'" in printed and "starting from" in printed
    (trial,) = (tmp_path / "runs" / "finetune-tiny-estonian-40").glob("trial-*/best.ckpt")
    meta = load_model(trial).meta
    assert meta["base"]["sha256"] == sha256_of(base) and meta["case"] == TITLE
