"""Speed work keeps sampling's results: at a fixed seed, ``sample_ids`` gives the names and
log-probabilities recorded before it (tests/fixtures/sampled.json), for one- and three-layer models
(LayerNorm too) and every control (temperature, top-k, prefix, length limits). Rewrite the fixture
only for a change meant to change what a seed samples, with

    python tests/test_sampling_recorded.py       # records with the code as it is, into tests/fixtures/
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from namegen.model import GRULanguageModel
from namegen.sampling import sample_ids

FIXTURE = Path(__file__).parent / "fixtures" / "sampled.json"
MODELS = {  # name: (n_layer, n_embd, n_hidden, layer_norm, weights' scale), vocabulary 28 as names.txt's
    "one-layer": (1, 64, 128, False, 3.0),
    "three-layers-norm": (3, 16, 48, True, 1.0),
}
CASES = {  # name: sample_ids keywords (n = 600 names; rows leave the batch at different steps)
    "plain": {"max_len": 12},
    "temperature-top-k": {"max_len": 12, "temperature": 0.7, "top_k": 5},
    "prefix-min-len": {"max_len": 9, "min_len": 4, "prefix_ids": [3, 16]},
    "hot": {"max_len": 15, "temperature": 1.6},
}


def model_for(name: str) -> GRULanguageModel:
    """A seeded model whose weights are spread wide enough to give names of every length."""
    n_layer, n_embd, n_hidden, norm, scale = MODELS[name]
    torch.manual_seed(sum(map(ord, name)))
    model = GRULanguageModel(28, n_layer, n_embd, n_hidden, layer_norm=norm)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
        model.head.bias[1] += 1.5  # the end token: names of every length, so rows leave the batch at every step
    return model


def sampled(model_name: str, case: str) -> dict:
    ids, logprob = sample_ids(model_for(model_name), 600, generator=torch.Generator().manual_seed(7),
                              **CASES[case])
    return {"names": ["".join(chr(ord("a") + i - 2) for i in row) for row in ids],  # ids 2..27 as a..z
            "logprob": [round(lp, 5) for lp in logprob.tolist()]}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("model_name", MODELS)
def test_a_seed_samples_the_recorded_names(model_name, case):
    recorded = json.loads(FIXTURE.read_text())["samples"][f"{model_name}/{case}"]
    got = sampled(model_name, case)
    assert got["names"] == recorded["names"]
    assert got["logprob"] == pytest.approx(recorded["logprob"], rel=1e-5, abs=2e-5)


@pytest.mark.parametrize("case", CASES)
def test_unscored_sampling_draws_the_same_names(case):
    """``scored=False`` (what ``sample`` and text output use) leaves out the log-probabilities, not a draw."""
    from namegen.sampling import sample_rows

    model = model_for("three-layers-norm")
    kwargs = CASES[case]
    scored = sample_rows(model, 600, generator=torch.Generator().manual_seed(7), **kwargs)
    ids, length, logprob = sample_rows(model, 600, generator=torch.Generator().manual_seed(7), scored=False,
                                       **kwargs)
    assert logprob is None and torch.equal(ids, scored[0]) and torch.equal(length, scored[1])


def _record() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    samples = {f"{m}/{c}": sampled(m, c) for m in MODELS for c in CASES}
    FIXTURE.write_text(json.dumps({"recorded_at": commit, "samples": samples}) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    sys.exit(_record())


def _generator_for(model_name: str, vocab_chars: str = "abcdefghijklmnopqrstuvwxyz"):
    from namegen.api import NameGenerator
    from namegen.checkpoint import LoadedModel
    from namegen.config import load_config
    from namegen.data import Vocab

    loaded = LoadedModel(model=model_for(model_name).eval(), vocab=Vocab(list(vocab_chars)),
                         config=load_config("small"), meta={})  # block_size 12
    return NameGenerator(loaded)


@pytest.mark.parametrize("model_name", MODELS)
def test_the_api_draws_ahead_the_names_sample_ids_draws(model_name):
    """NameGenerator makes its random numbers on a second thread, blocks ahead, over several batches:
    the names and log-probabilities are those of sample_ids stepping one generator through the same batches."""
    gen = _generator_for(model_name)
    got = gen.sample_with_logprob(2500, seed=11, temperature=0.9, batch_size=1000)
    generator, expected = torch.Generator().manual_seed(11), []
    for k in (1000, 1000, 500):
        ids, logprob = sample_ids(gen.model, k, max_len=12, temperature=0.9, generator=generator)
        expected += list(zip((gen.vocab.decode(row) for row in ids), logprob.tolist()))
    assert got == expected


def test_decode_rows_is_decode_of_each_row():
    from namegen.data import Vocab

    vocab = Vocab(list("abcçdéжz"))
    ids = torch.tensor([[2, 3, 4, 0, 0], [9, 8, 7, 6, 5], [1, 0, 0, 0, 0], [6, 2, 1, 0, 0]])
    assert vocab.decode_rows(ids) == [vocab.decode(row) for row in ids.tolist()] == ["abc", "zжédç", "", "da"]


def test_sample_and_sample_with_logprob_give_the_same_names():
    gen = _generator_for("one-layer")
    pairs = gen.sample_with_logprob(3000, seed=5, top_k=9, batch_size=1200)
    assert gen.sample(3000, seed=5, top_k=9, batch_size=1200) == [name for name, _ in pairs]


hypothesis = pytest.importorskip("hypothesis", reason="needs Hypothesis: pip install -r requirements.txt")
from hypothesis import example, given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 26, 100, 252, 253, 254, 300]), st.integers(0, 0x4000), st.integers(0, 40),
       st.integers(0, 16), st.integers(0, 2**31))
@example(253, 0, 4, 5, 0).via("the largest vocabulary whose ids and row end fit a byte")
@example(254, 0, 4, 5, 0).via("the smallest that does not")
def test_decode_rows_is_decode_of_each_row_for_any_vocabulary(size, first, n, width, seed):
    """Any vocabulary size (beyond 253 characters too, where ids no longer fit a byte), rows ending early in
    padding."""
    from namegen.data import Vocab

    vocab = Vocab([chr(0x100 + first + i) for i in range(size)])  # distinct, none of '.', '\n', NUL
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, len(vocab), (n, width), generator=gen)  # '.' and characters
    ends = torch.randint(0, width + 1, (n, 1), generator=gen)
    ids = ids.masked_fill(torch.arange(width)[None, :] >= ends, 0)  # padding after each row's end
    if n and width:
        ids[0, 0] = len(vocab) - 1  # the largest id always among them
    assert vocab.decode_rows(ids) == [vocab.decode(row) for row in ids.tolist()]
