"""Evaluation: NLL per character against a direct computation; sample statistics on hand-made inputs."""

import math

import pytest
import torch

from namegen.checkpoint import LoadedModel
from namegen.config import load_config
from namegen.data import Vocab
from namegen.errors import UserError
from namegen.evaluate import (
    CheckpointData,
    checkpoint_data,
    draw_samples,
    evaluate_nll,
    first_letter_distribution,
    sample_stats,
    total_variation,
)
from namegen.model import GRULanguageModel


def tiny_loaded(dropout: float = 0.0) -> LoadedModel:
    torch.manual_seed(0)
    vocab = Vocab(list("abcdemz"))
    model = GRULanguageModel(len(vocab), n_layer=2, n_embd=8, n_hidden=16, dropout=dropout)
    config = load_config("small").replace(n_layer=2, n_embd=8, n_hidden=16, block_size=6, seed=42)
    return LoadedModel(model=model, vocab=vocab, config=config, meta={"config": config.to_dict(), "size": "tiny"})


def direct_nll(model, vocab, names, start: int = 1) -> float:
    """Sum of -log p(next char) over every name, one name at a time, divided by the characters predicted."""
    total, count = 0.0, 0
    with torch.no_grad():
        for name in names:
            ids = [start] + vocab.encode(name) + [1]  # . name .
            logits, _ = model(torch.tensor([ids[:-1]]))
            logp = torch.log_softmax(logits[0].double(), dim=-1)
            total -= sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
            count += len(ids) - 1
    return total / count


def test_nll_matches_a_direct_computation():
    loaded = tiny_loaded()
    names = ["emma", "ada", "zed", "cab", "a", "mmmmmmmmmm", "bead"]
    got = evaluate_nll(loaded, names, batch_size=3)  # several batches, unequal lengths
    want = direct_nll(loaded.model, loaded.vocab, names)
    assert got.nll == pytest.approx(want, abs=1e-5)
    assert got.ppl == pytest.approx(math.exp(want), rel=1e-5)
    assert got.n_chars == sum(len(n) + 1 for n in names) and got.n_names == len(names)
    # character-weighted, not a mean of per-batch means: one batch or many give the same number
    assert evaluate_nll(loaded, names, batch_size=1024).nll == pytest.approx(got.nll, abs=1e-6)
    assert evaluate_nll(loaded, names, batch_size=1).nll == pytest.approx(got.nll, abs=1e-6)


def test_nll_of_a_notebook_model_starts_from_padding():
    loaded = tiny_loaded()
    loaded.meta["start_token"] = 0  # converted notebook checkpoints start every name from padding
    names = ["emma", "ada", "zed"]
    want = direct_nll(loaded.model, loaded.vocab, names, start=0)
    assert evaluate_nll(loaded, names).nll == pytest.approx(want, abs=1e-5)
    assert abs(want - direct_nll(loaded.model, loaded.vocab, names)) > 1e-4  # the start token matters


def test_nll_runs_in_eval_mode_and_restores_the_mode():
    loaded = tiny_loaded(dropout=0.5)
    loaded.model.train()
    names = ["emma", "ada", "zed"]
    a = evaluate_nll(loaded, names).nll
    b = evaluate_nll(loaded, names).nll
    assert a == b  # dropout off: deterministic
    assert loaded.model.training
    loaded.model.eval()
    assert a == pytest.approx(direct_nll(loaded.model, loaded.vocab, names), abs=1e-5)


def test_nll_rejects_unknown_characters_and_empty_input():
    loaded = tiny_loaded()
    with pytest.raises(UserError, match="vocabulary"):
        evaluate_nll(loaded, ["emma", "xavier"])
    with pytest.raises(UserError, match="empty"):
        evaluate_nll(loaded, [])


def test_sample_stats_on_hand_made_names():
    train = ["emma", "olivia", "ava", "bob"]
    val = ["zoe", "ava", "mia"]  # "ava" is in both splits: it counts as a training copy
    samples = ["emma", "emma", "zoe", "ava", "kai", "kai", "kai", "bo"]
    s = sample_stats(samples, train, val)
    assert s.n == 8
    assert s.train_copy == pytest.approx(3 / 8)  # emma, emma, ava
    assert s.val_only == pytest.approx(1 / 8)  # zoe
    assert s.new == pytest.approx(4 / 8)  # kai x3, bo
    assert s.new + s.train_copy + s.val_only == pytest.approx(1.0)
    assert s.copy_excess == pytest.approx((3 / 1) / (4 / 3))  # copies / val matches, over |train| / |val|
    assert s.duplicate == pytest.approx(1 - 5 / 8)  # distinct: emma, zoe, ava, kai, bo
    assert s.empty == 0.0
    assert s.mean_len == pytest.approx((4 + 4 + 3 + 3 + 3 + 3 + 3 + 2) / 8)
    data = train + val
    assert s.data_mean_len == pytest.approx(sum(map(len, data)) / len(data))
    # first letters: samples e 2, z 1, a 1, k 3, b 1 (of 8); data e 1, o 1, a 2, b 1, z 1, m 1 (of 7)
    p = {"e": 2 / 8, "z": 1 / 8, "a": 1 / 8, "k": 3 / 8, "b": 1 / 8}
    q = {"e": 1 / 7, "o": 1 / 7, "a": 2 / 7, "b": 1 / 7, "z": 1 / 7, "m": 1 / 7}
    want = 0.5 * sum(abs(p.get(c, 0) - q.get(c, 0)) for c in "ezakbom")
    assert s.first_letter_tv == pytest.approx(want)
    assert 0 < s.first_letter_tv_noise < 1


def test_tv_noise_floor_shrinks_with_more_samples(real_names):
    from namegen.evaluate import tv_noise_floor

    names = real_names.read_text().split()
    small, large = tv_noise_floor(names, 1000), tv_noise_floor(names, 10_000)
    assert 0.04 < small < 0.08 and 0.01 < large < 0.03  # about 1/sqrt(n)


def test_total_variation_bounds():
    assert total_variation({"a": 1.0}, {"a": 1.0}) == 0.0
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert first_letter_distribution(["ab", "ac", "b"]) == pytest.approx({"a": 2 / 3, "b": 1 / 3})


def test_sample_stats_counts_empty_names():
    s = sample_stats(["", "a", ""], ["a"], ["b"])
    assert s.empty == pytest.approx(2 / 3) and s.duplicate == pytest.approx(1 / 3)


def test_draw_samples_is_seeded_and_never_empty():
    loaded = tiny_loaded()
    a = draw_samples(loaded, 250, seed=3, max_len=6, chunk=100)
    assert len(a) == 250 and all(1 <= len(n) <= 6 for n in a)
    assert draw_samples(loaded, 250, seed=3, max_len=6, chunk=100) == a
    assert draw_samples(loaded, 250, seed=4, max_len=6, chunk=100) != a


def test_checkpoint_data_rebuilds_the_split_and_checks_the_file(tmp_path):
    from namegen.data import sha256_of, split_names

    path = tmp_path / "names.txt"
    path.write_text("\n".join(["emma", "ada", "zed", "cab", "bead", "mace", "dab", "ace", "zac", "mead"]) + "\n")
    loaded = tiny_loaded()
    loaded.meta["data"] = {"path": str(path), "sha256": sha256_of(path), "n_names": 10}
    data = checkpoint_data(loaded)
    assert isinstance(data, CheckpointData)
    assert (data.train, data.val) == split_names(data.names, 42)
    assert len(data.val) == 2

    path.write_text("emma\nada\n")  # the file changed since training
    with pytest.raises(UserError, match="sha256"):
        checkpoint_data(loaded)
    loaded.meta["data"]["path"] = str(tmp_path / "gone.txt")
    with pytest.raises(UserError, match="is not there") as exc:
        checkpoint_data(loaded)
    assert exc.value.about == "train_data"  # evaluate.py names it --train-data (test_cli.py)
