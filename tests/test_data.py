"""namegen.data: reading names, the vocabulary, encoding, the split, batching, the training-file lookup."""

import hashlib

import pytest
import torch

from namegen.data import (
    DEFAULT_DATA, END, IGNORE, NAMES_SHA256, PAD, IndexBatchSampler, NameBatches, Vocab, encode_names,
    find_training_file, read_names, sha256_of, split_names,
)
from namegen.errors import UserError


def test_tokens_start_with_the_dot_and_pad_as_the_notebook():
    vocab = Vocab.from_names(["emma", "bo"])
    assert vocab.chars == ["a", "b", "e", "m", "o"] and len(vocab) == 7
    x, y, lengths = encode_names(["emma", "bo"], vocab)
    e, m, a, b, o = (vocab.stoi[c] for c in "emabo")
    assert x.tolist() == [[END, e, m, m, a], [END, b, o, PAD, PAD]]
    assert y.tolist() == [[e, m, m, a, END], [b, o, END, IGNORE, IGNORE]]
    assert lengths.tolist() == [5, 3]


def test_vocabulary_comes_from_the_file(real_names):
    vocab = Vocab.from_names(read_names(real_names))
    assert len(vocab) == 28 and vocab.chars == list("abcdefghijklmnopqrstuvwxyz")


def test_lines_are_cleaned(tmp_path):
    path = tmp_path / "n.txt"
    path.write_bytes("\ufeffemma\r\n  olivia \r\n\r\n\n\tava\n".encode())
    assert read_names(path) == ["emma", "olivia", "ava"]


def test_split_is_80_20_and_fixed_by_seed(real_names):
    names = read_names(real_names)
    train, val = split_names(names, seed=42)
    assert (len(train), len(val)) == (25626, 6407)
    assert split_names(names, seed=42) == (train, val)
    assert split_names(names, seed=7)[1] != val
    # the same split on every machine: pinned by a digest of the validation names
    assert hashlib.sha256("\n".join(val).encode()).hexdigest()[:16] == _VAL_DIGEST


_VAL_DIGEST = "b259772ad577d2ca"  # scikit-learn's train_test_split, random_state=42


def test_batches_are_trimmed_to_their_longest_name():
    vocab = Vocab.from_names(["a", "abcdefgh", "ab"])
    data = NameBatches(*encode_names(["a", "abcdefgh", "ab"], vocab))
    x, y = data[[0, 2]]
    assert x.shape == (2, 3) and y.shape == (2, 3)
    x, _ = data[[1]]
    assert x.shape == (1, 9)


def test_sampler_covers_every_row_once_and_shards_across_ranks():
    lengths = torch.randint(2, 10, (103,))
    one = IndexBatchSampler(lengths, 10, shuffle=True, seed=3)
    one.set_epoch(2)
    rows = [i for b in one for i in b]
    assert sorted(rows) == list(range(103)) and len(list(one)) == len(one) == 11
    one.set_epoch(3)
    assert [i for b in one for i in b] != rows  # reshuffled each epoch
    shards = [IndexBatchSampler(lengths, 10, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == 5  # equal step counts per rank
    assert not set(i for x in a for i in x) & set(i for x in b for i in x)


def test_group_by_length_reduces_padding():
    lengths = torch.randint(2, 17, (2000,), generator=torch.Generator().manual_seed(0))

    def padded(sampler):
        return sum(len(b) * int(lengths[b].max()) for b in sampler)

    plain = padded(IndexBatchSampler(lengths, 32, shuffle=True))
    grouped = IndexBatchSampler(lengths, 32, shuffle=True, group_by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert padded(grouped) < 0.8 * plain


def test_split_is_scikit_learns_train_test_split(real_names):
    """The notebook split with scikit-learn; namegen computes the same split with NumPy alone."""
    from sklearn.model_selection import train_test_split

    names = read_names(real_names)
    for seed, subset in ((42, names), (0, names[:1001]), (5, names[:11])):
        train, val = train_test_split(subset, test_size=0.2, random_state=seed, shuffle=True)
        assert split_names(subset, seed) == (list(train), list(val))


def test_the_shipped_names_are_makemores():
    """names.txt ships inside the package, byte for byte makemore's (its sha256), and is the default data."""
    assert hashlib.sha256(DEFAULT_DATA.read_bytes()).hexdigest() == "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
    names = read_names(DEFAULT_DATA)
    assert len(names) == 32033 and max(map(len, names)) == 15


def test_training_file_lookup(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("emma\nava\n")
    record = {"path": str(path), "sha256": sha256_of(path)}
    assert find_training_file(record) == path
    moved = tmp_path / "moved.txt"
    moved.write_bytes(path.read_bytes())
    assert find_training_file(record, moved) == moved  # a moved copy, same sha256
    with pytest.raises(UserError, match="does not record its training file") as exc:
        find_training_file({"path": None})
    assert exc.value.about == "train_data"
    path.write_text("emma\n")
    with pytest.raises(UserError, match="has changed since training"):
        find_training_file(record)
    path.unlink()
    with pytest.raises(UserError, match="is not there"):
        find_training_file(record)
