"""Notebook .pth files: built with a transcription of the notebook's classes, read by namegen.

The files here are written the way the notebook's save_model writes them, for
each of the three sizes at the notebook's widths, with random weights (every
parameter, gate biases and LayerNorm included, so a mis-mapped tensor shows).
"""

import json

import pytest
import torch

import notebook_transcript as nb
from conftest import run_cli
from namegen.api import NameGenerator
from namegen.api import load_model as load_checkpoint
from cli_helpers import run

SIZES = {
    # size: (class, base name in the notebook, embd_dim, hidden_dim, dropout the notebook's load_model gets)
    "small": (nb.GRU_SmallModel, "GRU_alpha_model", 64, 128, 0.0),
    "medium": (nb.GRU_MediumModel, "GRU_beta_model", 96, 256, 0.1),
    "large": (nb.GRU_LargeModel, "GRU_gamma_model", 128, 512, 0.2),
}
LETTERS = set("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def pth_files(tmp_path_factory):
    """saved_models/GRU_{alpha,beta,gamma}_model_v1.pth, written by the notebook's save_model."""
    root = tmp_path_factory.mktemp("notebook")
    saved = root / "saved_models"
    files = {}
    for i, (size, (cls, base, embd, hidden, _)) in enumerate(SIZES.items()):
        torch.manual_seed(100 + i)
        model = cls(n_classes=28, embd_dim=embd, hidden_dim=hidden)
        with torch.no_grad():  # every tensor random, at scales that keep the recurrence out of saturation
            for name, p in model.named_parameters():
                if name == "embedding.weight":
                    p.normal_(0.0, 1.0)
                elif p.dim() == 2:
                    p.normal_(0.0, 1.5 / p.shape[1] ** 0.5)
                else:
                    p.normal_(0.0, 0.3)
        files[size] = nb.save_model(model, base_name=base, path=str(saved))
    return root, files


@pytest.mark.parametrize("size", SIZES)
def test_namegen_logits_equal_the_notebook_models(pth_files, size):
    _, files = pth_files
    reference = nb.load_model(files[size], "cpu").eval()  # the notebook's own loader
    loaded = load_checkpoint(files[size])
    x = torch.randint(0, 28, (5, 16), generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0  # the notebook's start token
    with torch.no_grad():
        # float32, as stored: namegen's fused matmuls round differently from the notebook's
        # six separate ones (~1e-6 apart); in float64 the two agree to 1e-6 and far beyond
        got32, _ = loaded.model(x)
        expected32 = reference(x)
        torch.set_default_dtype(torch.float64)  # the notebook makes its h0 with torch.zeros(...)
        try:
            got, _ = loaded.model.double()(x)
            expected = reference.double()(x)
        finally:
            torch.set_default_dtype(torch.float32)
    assert got.shape == expected.shape == (5, 16, 28)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    assert torch.allclose(got32, expected32, atol=2e-5, rtol=0), (got32 - expected32).abs().max()
    assert loaded.start_token == 0 and loaded.from_notebook
    assert loaded.vocab.chars == sorted(LETTERS) and len(loaded.vocab) == 28
    assert loaded.model.dropout.p == SIZES[size][4]
    assert loaded.model.num_parameters() == sum(p.numel() for p in reference.parameters())
    assert loaded.meta["source"]["model_class"] == SIZES[size][0].__name__ and loaded.meta["source"]["version"] == 1


@pytest.mark.parametrize("size", SIZES)
def test_sampling_starts_from_padding_like_generate_names(pth_files, size, capsys):
    """sample.py's names, and each one's log-probability, against the notebook model run its
    own way: the whole context re-run from token 0 at every step, as generate_names does."""
    _, files = pth_files
    assert run("sample", ["--ckpt", files[size], "-n", "8", "--seed", "0", "--max-len", "12",
                             "--format", "json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8 and all(r["name"] and set(r["name"]) <= LETTERS for r in rows)
    assert all(r["is_new"] is None for r in rows)  # a notebook model records no training file
    notes = [line for line in err.splitlines() if "padding" in line]
    assert len(notes) == 1 and "starts from padding (token 0)" in notes[0]
    reference = nb.load_model(files[size], "cpu").eval()
    vocab = load_checkpoint(files[size]).vocab
    with torch.no_grad():
        for row in rows[:3]:
            ids = [0] + vocab.encode(row["name"]) + [1]
            logp = torch.log_softmax(reference(torch.tensor([ids[:-1]]))[0], dim=-1)
            direct = sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
            assert row["logprob"] == pytest.approx(direct, abs=1e-4)


@pytest.mark.slow
def test_convert_keeps_every_tensor_and_samples_the_same(pth_files, tmp_path, capsys, monkeypatch):
    """namegen.convert's tensors are the notebook's; sample.py in a fresh process prints from the
    .pth the same names the converted checkpoint gives."""
    root, files = pth_files
    out = tmp_path / "gamma.ckpt"
    assert run("convert", [files["large"], str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    src = torch.load(files["large"], weights_only=True)["state_dict"]
    ckpt = torch.load(out, weights_only=True)
    state, meta = ckpt["state_dict"], ckpt["namegen"]
    assert len(state) == len(src) == 3 * 11 + 5
    for key, tensor in src.items():
        new = "model." + key.replace("linear.linear_projection.", "head.")
        for i in (1, 2, 3):
            new = new.replace(f"gru_layer_{i}.grucell.", f"layers.{i - 1}.")
        assert torch.equal(state[new], tensor) and state[new].dtype == tensor.dtype, key
    assert meta["vocab"] == sorted(LETTERS) and meta["start_token"] == 0 and meta["size"] == "large"
    assert meta["config"]["n_layer"] == 3 and meta["config"]["dropout"] == 0.2 and meta["config"]["layer_norm"]
    assert meta["num_parameters"] == 4_155_420
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = run_cli("sample.py", "--ckpt", files["large"], "-n", "12", "--seed", "3", cwd=root)
    assert proc.returncode == 0, proc.stderr
    converted = NameGenerator.from_checkpoint(out)
    assert converted.start_token == 0
    assert proc.stdout.splitlines() == converted.sample(12, seed=3)
    assert "starts from padding" in proc.stderr


@pytest.mark.parametrize("size", ["small", "medium"])
def test_convert_in_process_keeps_tensors(pth_files, tmp_path, size):
    _, files = pth_files
    out = tmp_path / f"{size}.ckpt"
    assert run("convert", [files[size], str(out)]) == 0
    src = torch.load(files[size], weights_only=True)["state_dict"]
    got = load_checkpoint(out)
    assert got.start_token == 0 and got.from_notebook and got.meta["size"] == size
    ref = load_checkpoint(files[size]).model.state_dict()
    mine = got.model.state_dict()
    assert mine.keys() == ref.keys() and len(mine) == len(src)
    assert all(torch.equal(mine[k], ref[k]) for k in mine)


# ------------------------------------------------------------------------------ bad input


def _stderr_line(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_convert_refuses_to_overwrite_without_force(pth_files, tmp_path, capsys):
    _, files = pth_files
    out = tmp_path / "a.ckpt"
    out.write_text("keep me")
    assert run("convert", [files["small"], str(out)]) == 2
    assert "--force" in _stderr_line(capsys) and out.read_text() == "keep me"
    assert run("convert", [files["small"], str(out), "--force"]) == 0
    assert load_checkpoint(out).meta["size"] == "small"


def test_convert_errors_are_one_line(pth_files, tmp_path, capsys):
    _, files = pth_files
    assert run("convert", [str(tmp_path / "nope.pth"), str(tmp_path / "o.ckpt")]) == 2
    assert "not found" in _stderr_line(capsys)

    text = tmp_path / "names.pth"
    text.write_text("emma\nolivia\n")
    assert run("convert", [str(text), str(tmp_path / "o.ckpt")]) == 2
    assert "not a readable checkpoint" in _stderr_line(capsys)

    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(3)}, other)
    assert run("convert", [str(other), str(tmp_path / "o.ckpt")]) == 2
    assert "not a notebook checkpoint" in _stderr_line(capsys)

    obj = torch.load(files["small"], weights_only=True)
    odd = tmp_path / "odd.pth"
    torch.save({**obj, "model_class": "GRU_HugeModel"}, odd)
    assert run("convert", [str(odd), str(tmp_path / "o.ckpt")]) == 2
    assert "unknown model_class 'GRU_HugeModel'" in _stderr_line(capsys)

    torch.save({**obj, "model_class": "GRU_MediumModel"}, odd)  # small weights, medium label
    assert run("convert", [str(odd), str(tmp_path / "o.ckpt")]) == 2
    line = _stderr_line(capsys)
    assert "does not match GRU_MediumModel" in line and "gru_layer_1.grucell" in line

    torch.save({**obj, "hidden_dim": 64}, odd)
    assert run("convert", [str(odd), str(tmp_path / "o.ckpt")]) == 2
    assert "do not fit GRU_SmallModel with embd_dim=64, hidden_dim=64" in _stderr_line(capsys)

    torch.save({**obj, "n_classes": 30}, odd)
    assert run("convert", [str(odd), str(tmp_path / "o.ckpt")]) == 2
    assert "n_classes is 30" in _stderr_line(capsys)
    assert not (tmp_path / "o.ckpt").exists()


def test_sample_py_reports_a_bad_notebook_file_in_one_line(pth_files, tmp_path, capsys):
    obj = torch.load(pth_files[1]["small"], weights_only=True)
    bad = tmp_path / "bad.pth"
    torch.save({**obj, "model_class": "MyModel"}, bad)
    assert run("sample", ["--ckpt", str(bad)]) == 2
    assert "unknown model_class 'MyModel'" in _stderr_line(capsys)


def test_new_only_on_a_notebook_model_needs_data(pth_files, tmp_path, capsys):
    _, files = pth_files
    assert run("sample", ["--ckpt", files["small"], "--new-only"]) == 2
    assert "--data" in _stderr_line(capsys)
    data = tmp_path / "names.txt"
    data.write_text("\n".join(sorted(LETTERS)) + "\n")
    assert run("sample", ["--ckpt", files["small"], "--new-only", "--data", str(data), "--max-len", "2",
                             "-n", "40", "--seed", "0", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 40 and all(len(r["name"]) == 2 and r["is_new"] is True for r in rows)
