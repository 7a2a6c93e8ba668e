import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from namegen.data import (
    END, IGNORE, PAD, IndexBatchSampler, NameBatches, NamesDataModule, Vocab, download_names,
    encode_names, read_names, split_names,
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


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksum_and_writes_atomically(http_server, real_names, tmp_path):
    root, base = http_server
    (root / "names.txt").write_bytes(real_names.read_bytes())
    dest = tmp_path / "data" / "names.txt"
    download_names(dest, f"{base}/names.txt")
    assert dest.read_bytes() == real_names.read_bytes()
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left behind


def test_download_with_a_wrong_checksum_writes_nothing(http_server, tmp_path):
    root, base = http_server
    (root / "names.txt").write_text("not\nthe\nfile\n")
    dest = tmp_path / "data" / "names.txt"
    with pytest.raises(UserError, match="sha256"):
        download_names(dest, f"{base}/names.txt")
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_download_without_network_says_how_to_supply_the_file(tmp_path):
    with pytest.raises(UserError, match="--data PATH"):
        download_names(tmp_path / "names.txt", "http://127.0.0.1:9/names.txt")


def test_datamodule_downloads_the_default_file(http_server, real_names, tmp_path, monkeypatch):
    root, base = http_server
    (root / "names.txt").write_bytes(real_names.read_bytes())
    monkeypatch.chdir(tmp_path)
    dm = NamesDataModule(url=f"{base}/names.txt")
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "data" / "names.txt").read_bytes() == real_names.read_bytes()
    assert len(dm.train_names) == 25626 and len(dm.vocab) == 28
