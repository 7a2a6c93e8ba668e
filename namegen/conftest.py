"""pytest only: what the doctests in this package need (``CKPT``, a tiny checkpoint with random weights)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_checkpoint(doctest_namespace, tmp_path):
    from namegen.config import load_config
    from namegen.convert import write_checkpoint
    from namegen.model import GRULanguageModel
    from namegen.module import CHECKPOINT_FORMAT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a busy CPU
    torch.manual_seed(0)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    vocab = list("abcdefghijklmnopqrstuvwxyz")
    model = GRULanguageModel.from_config(config, vocab_size=len(vocab) + 2)
    meta = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "vocab": vocab,
            "num_parameters": model.num_parameters(), "size": "tiny",
            "data": {"path": None, "sha256": None, "n_names": None}}
    doctest_namespace["CKPT"] = write_checkpoint(tmp_path / "tiny.ckpt", meta, model.state_dict())
    yield
    torch.set_num_threads(threads)
