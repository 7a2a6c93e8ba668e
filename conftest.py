"""pytest, for the doctests inside ``namegen/`` (tests/ has its own conftest): ``CKPT``, a tiny
checkpoint with random weights, so the examples run without training anything."""

import pytest
import torch

from namegen.checkpoint import build_meta, write_checkpoint
from namegen.config import load_config
from namegen.data import Vocab
from namegen.model import GRULanguageModel


@pytest.fixture(autouse=True)
def _doctest_checkpoint(request, doctest_namespace, tmp_path_factory):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    tmp_path = tmp_path_factory.mktemp("doctest")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a busy CPU
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    vocab = Vocab(list("abcdefghijklmnopqrstuvwxyz"))
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab))
    meta = build_meta(config, vocab, model.num_parameters(), size="tiny")
    doctest_namespace["CKPT"] = write_checkpoint(tmp_path / "tiny.ckpt", meta, model.state_dict())
    yield
    torch.set_num_threads(threads)
