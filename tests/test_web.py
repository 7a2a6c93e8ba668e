"""namegen export --web (issue 17): the static page, tested in a real browser.

Each site is written by the real command (``namegen export --ckpt ... --web DIR``, onnxruntime-web
fetched from the npm registry into the user's cache on first use), served by ``http.server`` on
127.0.0.1 from a thread, and driven in headless Chromium (Debian's ``chromium``) through Playwright.
The models are tiny and random (no training): what is tested is that the page's sampler and scorer
are NameGenerator's.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import math
import random
import re
import shutil
import socket
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
import torch

import notebook_transcript as nb
from cli_helpers import run
from namegen import NameGenerator
from namegen.checkpoint import build_meta, write_checkpoint
from namegen.config import load_config
from namegen.data import Vocab, read_names, sha256_of
from namegen.model import GRULanguageModel
from namegen.web import ORT_WEB_FILES, ORT_WEB_VERSION
from web_helpers import INSTALL_HINT, chromium, find_chromium, open_page, serve

pytestmark = pytest.mark.browser
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("playwright", reason="needs Playwright for Python: pip install playwright==1.65.2")

KINDS = ("latin", "notebook", "cyrillic", "ab")
#: training names of the "ab" model (vocabulary a, b): 5 of the 14 names b + 1 to 3 letters
AB_TRAINING = ["ba", "bb", "baa", "bab", "bba"]


def cyrillic_names() -> list[str]:
    """A few hundred Cyrillic names, capitals and ё included: syllables put together."""
    first = ["Ва", "Ла", "Ми", "На", "Ра", "Со", "Та", "Ки", "Лю", "Дя", "Ёл", "Жа", "Зо", "Ша", "Юр"]
    middle = ["", "ри", "ле", "ни", "до", "ся", "ша"]
    last = ["", "на", "ря", "ий", "ёна", "ка", "ша"]
    names = sorted({a + b + c for a, b, c in itertools.product(first, middle, last) if len(a + b + c) >= 3})
    return sorted(random.Random(0).sample(names, 300))


def _checkpoint(path: Path, names_file: Path | None, chars: list[str], seed: int, head_scale: float = 1.0) -> Path:
    """A tiny random namegen checkpoint of vocabulary ``chars`` recording ``names_file`` as its training file."""
    torch.manual_seed(seed)
    config = load_config("small").replace(n_embd=8, n_hidden=16)
    model = GRULanguageModel.from_config(config, vocab_size=len(chars) + 2)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)  # sharper distributions: temperature and top-k then matter
    data = None
    if names_file is not None:
        data = {"path": str(names_file), "sha256": sha256_of(names_file), "n_names": len(read_names(names_file))}
    meta = build_meta(config, Vocab(chars), model.num_parameters(), size="tiny", data=data)
    return write_checkpoint(path, meta, model.state_dict())


def _notebook_checkpoint(tmp: Path) -> Path:
    """The notebook's GRU_SmallModel saved by its save_model, converted by ``namegen convert``."""
    torch.manual_seed(7)
    model = nb.GRU_SmallModel(n_classes=28, embd_dim=64, hidden_dim=128)
    pth = nb.save_model(model, base_name="GRU_alpha_model", path=str(tmp / "saved_models"))
    assert run("convert", [pth, tmp / "converted.ckpt"]) == 0
    return tmp / "converted.ckpt"


def _make_model(kind: str, tmp: Path, real_names: Path) -> tuple[Path, Path | None]:
    """(checkpoint, training names file or None) of each kind."""
    if kind == "notebook":
        return _notebook_checkpoint(tmp), None
    if kind == "latin":
        names = real_names.read_text(encoding="utf-8").splitlines()[:400]
    elif kind == "cyrillic":
        names = cyrillic_names()
    else:
        names = AB_TRAINING
    names_file = tmp / "names.txt"
    names_file.write_text("\n".join(names) + "\n", encoding="utf-8")
    chars = sorted(set("".join(names)))
    return _checkpoint(tmp / f"{kind}.ckpt", names_file, chars, seed=KINDS.index(kind), head_scale=4.0), names_file


@pytest.fixture(scope="module")
def sites(tmp_path_factory, real_names):
    """kind -> (site directory, checkpoint, training names file or None); each written once by the CLI,
    all under one root that ``server`` serves."""
    root = tmp_path_factory.mktemp("sites")
    done = {}

    def get(kind):
        if kind not in done:
            ckpt, names_file = _make_model(kind, tmp_path_factory.mktemp(kind), real_names)
            assert run("export", ["--ckpt", ckpt, "--web", root / kind]) == 0
            done[kind] = root / kind, ckpt, names_file
        return done[kind]

    get.root = root
    return get


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip(INSTALL_HINT)
    with chromium(executable) as b:
        yield b


@pytest.fixture(scope="module")
def server(sites):
    with serve(sites.root) as url:
        yield url


def _url(server: str, kind: str, **query) -> str:
    return f"{server}{kind}/" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _shown(page) -> list[tuple[str, float]]:
    return page.eval_on_selector_all(
        "#names li", "els => els.map(e => [e.querySelector('.name').textContent, Number(e.dataset.logprob)])")


def test_query_configuration_fills_names(sites, server, browser):
    """A link's query sets the controls and the page generates on load: exactly n names, in the vocabulary,
    with the prefix, within the length bounds, each with its log-probability (= -NameGenerator.score);
    no console errors, no failed requests; the URL keeps the configuration."""
    site, ckpt, _ = sites("latin")
    query = {"n": 25, "temperature": 0.8, "top_k": 10, "prefix": "ka", "min_len": 4, "max_len": 7, "seed": 3}
    opened = open_page(browser, _url(server, "latin", **query))
    page = opened.page
    shown = _shown(page)
    vocab = set(json.loads((site / "model.json").read_text())["vocab"])
    assert len(shown) == 25
    for name, _ in shown:
        assert name.startswith("ka") and 4 <= len(name) <= 7 and set(name) <= vocab, name
    assert opened.errors == [] and opened.failed == []
    assert page.inner_text("#status") == "" and not page.is_visible("#status")
    fields = {f: page.input_value(f"#{f}") for f in ("n", "temperature", "top_k", "prefix", "min_len", "max_len")}
    assert fields == {"n": "25", "temperature": "0.8", "top_k": "10", "prefix": "ka", "min_len": "4", "max_len": "7"}
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query)) == {k: str(v) for k, v in query.items()}
    expected = NameGenerator.from_checkpoint(ckpt).score([name for name, _ in shown])
    for (name, logprob), nll in zip(shown, expected):
        assert abs(logprob + nll) < 1e-4, (name, logprob, nll)

    page.click("#generate")  # new names, with a new seed in the URL; that link shows them again
    page.wait_for_function("names => document.querySelector('#names .name').textContent !== names[0]",
                           arg=[name for name, _ in shown])
    again, link = _shown(page), page.url
    link_query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(link).query))
    assert len(again) == 25 and again != shown and link_query.pop("seed") != "3"
    assert link_query == {k: str(v) for k, v in query.items() if k != "seed"}
    page.context.close()
    reopened = open_page(browser, link)
    assert _shown(reopened.page) == again and reopened.errors == []
    reopened.page.context.close()


@pytest.mark.parametrize("kind", ["latin", "notebook", "cyrillic"])
def test_page_scores_equal_namegen_score(sites, server, browser, kind):
    """window.namegen.score gives NameGenerator.score's NLL to 1e-4 nats, for names of mixed lengths in one
    batch; and every generated name's log-probability is minus its score."""
    site, ckpt, _ = sites(kind)
    gen = NameGenerator.from_checkpoint(ckpt)
    chars = gen.vocab.chars
    names = ["".join(chars[(i * 7 + j * 3) % len(chars)] for j in range(1 + i % 11)) for i in range(15)]
    names += ["Валерий", "Ёлка"] if kind == "cyrillic" else ["emma", "olivia", "christopher"]
    page = open_page(browser, _url(server, kind, n=5, seed=1)).page
    got = page.evaluate("names => window.namegen.score(names)", names)
    expected = gen.score(names)
    assert len(got) == len(expected) == len(names)
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4
    sampled = page.evaluate("() => window.namegen.generate({n: 40, temperature: 1.3, seed: 9})")["names"]
    assert all(1 <= len(s["name"]) <= gen.block_size for s in sampled)  # max_len defaults to block_size
    nll = gen.score([s["name"] for s in sampled])
    assert max(abs(s["logprob"] + v) for s, v in zip(sampled, nll)) < 1e-4
    page.context.close()


def _histogram(names: list[str]) -> dict[str, float]:
    return {name: count / len(names) for name, count in Counter(names).items()}


def _tv(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance of two distributions over names."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


@pytest.mark.parametrize("temperature, top_k, other", [(0.6, None, {"temperature": 1.0}), (1.5, 2, {"top_k": None})])
def test_sampler_draws_from_namegens_distribution(sites, server, browser, temperature, top_k, other):
    """With temperature, top-k, a prefix and both length bounds in play, the page's names follow the
    distribution of NameGenerator.sample's (20,000 each: total variation < 0.03), and that check is sharp
    enough to tell this setting from ``other`` (temperature 1 from 0.6; top-k 2 from none)."""
    _, ckpt, _ = sites("ab")
    gen = NameGenerator.from_checkpoint(ckpt)
    n, config = 20_000, {"prefix": "b", "min_len": 2, "max_len": 4}
    python = _histogram(gen.sample(n, temperature=temperature, top_k=top_k, seed=0, **config))
    page = open_page(browser, _url(server, "ab", n=3, seed=1)).page
    js = page.evaluate("o => window.namegen.generate(o)", {"n": n, "temperature": temperature, "topK": top_k,
                                                          "seed": 4, "prefix": "b", "minLen": 2, "maxLen": 4})
    page_hist = _histogram([s["name"] for s in js["names"]])
    assert all(name.startswith("b") and 2 <= len(name) <= 4 for name in page_hist)
    assert _tv(page_hist, python) < 0.03, (page_hist, python)
    contrast = _histogram(gen.sample(n, **{"temperature": temperature, "top_k": top_k, **other}, seed=1, **config))
    assert _tv(python, contrast) > 0.08, (python, contrast)
    page.context.close()


def test_new_names_only_leaves_out_the_training_names(sites, server, browser):
    """'New names only' (new=1) never shows a training name, where without it they are common; the
    page's training names are the file's; with 'no repeats' asking for more names than exist, the
    page says how many it found instead (NameGenerator's NotEnoughNames)."""
    site, _, names_file = sites("ab")
    base = {"n": 300, "prefix": "b", "min_len": 2, "max_len": 4, "seed": 5}
    plain = open_page(browser, _url(server, "ab", **base)).page
    assert sum(name in AB_TRAINING for name, _ in _shown(plain)) > 10  # the check below can fail
    assert sorted(plain.evaluate("() => window.namegen.trainingNames()")) == sorted(read_names(names_file))
    assert (site / "names.txt").read_text(encoding="utf-8") == "".join(f"{n}\n" for n in sorted(AB_TRAINING))
    plain.context.close()

    new = open_page(browser, _url(server, "ab", new=1, **base))
    shown = [name for name, _ in _shown(new.page)]
    assert len(shown) == 300 and not set(shown) & set(AB_TRAINING) and new.errors == []
    assert new.page.is_checked("#new")
    new.page.context.close()

    short = open_page(browser, _url(server, "ab", new=1, unique=1, **{**base, "n": 12, "temperature": 3})).page
    shown = [name for name, _ in _shown(short)]
    assert len(shown) == len(set(shown)) == 9 and not set(shown) & set(AB_TRAINING)  # 14 possible - 5 trained
    assert short.is_visible("#status") and "only 9 of 12 distinct and new names" in short.inner_text("#status")
    short.context.close()


def test_notebook_converted_model(sites, server, browser, capsys):
    """A notebook model (converted by namegen convert) starts from padding; its page generates names of
    its 26 letters; it ships no training names, so 'new names only' is off and the export says why."""
    site, _, _ = sites("notebook")
    meta = json.loads((site / "model.json").read_text())
    assert meta["start_token"] == 0 and meta["training_names"] is None and not (site / "names.txt").exists()
    opened = open_page(browser, _url(server, "notebook", n=30, max_len=12, seed=2))
    shown = [name for name, _ in _shown(opened.page)]
    assert len(shown) == 30 and all(name and set(name) <= set(meta["vocab"]) and len(name) <= 12 for name in shown)
    assert opened.page.is_disabled("#new") and opened.errors == []
    opened.page.context.close()


def test_cyrillic_names(sites, server, browser):
    """A Cyrillic names file made here: the page generates Cyrillic names with a Cyrillic prefix from the URL,
    and 'new names only' leaves the file's names out."""
    site, _, names_file = sites("cyrillic")
    vocab = set(json.loads((site / "model.json").read_text(encoding="utf-8"))["vocab"])
    assert len(read_names(names_file)) == 300 and "ё" in vocab
    opened = open_page(browser, _url(server, "cyrillic", n=40, prefix="Ва", new=1, max_len=9, seed=4))
    shown = [name for name, _ in _shown(opened.page)]
    assert len(shown) == 40 and opened.errors == []
    assert all(name.startswith("Ва") and set(name) <= vocab and len(name) <= 9 for name in shown)
    assert not set(shown) & set(read_names(names_file))
    assert opened.page.input_value("#prefix") == "Ва"
    opened.page.context.close()


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_model_that_fails_to_load_shows_a_message(sites, browser, tmp_path, damage):
    """No model.onnx, or one that is not ONNX: a visible error message naming the model, and no Generate."""
    site, _, _ = sites("latin")
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    if damage == "missing":
        (broken / "model.onnx").unlink()
    else:
        (broken / "model.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    with serve(broken) as url:
        page = open_page(browser, url).page
        assert page.evaluate("document.body.dataset.state") == "error"
        assert page.is_visible("#status") and "error" in page.get_attribute("#status", "class")
        message = page.inner_text("#status")
        assert "could not be loaded" in message and "model.onnx" in message, message
        assert page.is_disabled("#generate") and _shown(page) == []
        page.context.close()


@pytest.mark.parametrize("edit, needle", [
    ({"n_layer": 10**9}, "model.json: n_layer is 1000000000"),
    ({"vocab": "abc"}, "model.json: vocab is"),
    ({"training_names": "../../secrets"}, "model.json: training_names"),
    (None, "model.json is not valid JSON"),
], ids=["huge-n_layer", "vocab-not-a-list", "names-outside-the-site", "not-json"])
def test_a_hostile_model_json_shows_a_message(sites, browser, tmp_path, edit, needle):
    """model.json is read from wherever the site is served: each field is checked (checks.js) before use."""
    site, _, _ = sites("latin")
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    meta = json.loads((broken / "model.json").read_text(encoding="utf-8"))
    (broken / "model.json").write_text("{not json" if edit is None else json.dumps({**meta, **edit}), encoding="utf-8")
    with serve(broken) as url:
        opened = open_page(browser, url)
        page = opened.page
        assert page.evaluate("document.body.dataset.state") == "error"
        message = page.inner_text("#status")
        assert "could not be loaded" in message and needle in message, message
        assert page.is_disabled("#generate") and not [e for e in opened.errors if e.startswith("uncaught")]
        page.context.close()


def test_a_link_asking_for_a_billion_names_shows_a_message(sites, server, browser):
    """The URL query fills the form; n and max length are capped before anything is allocated."""
    opened = open_page(browser, _url(server, "latin", n=10**9, max_len=10**12))
    message = opened.page.inner_text("#status")
    assert "n is at most 10000" in message and "max length is at most 10000" in message, message
    assert _shown(opened.page) == [] and not [e for e in opened.errors if e.startswith("uncaught")]
    opened.page.context.close()


def test_opened_from_disk_says_to_serve_it(sites, browser):
    """index.html opened as a file (Chromium runs no modules from file://): a visible message saying how to serve it."""
    site, _, _ = sites("latin")
    page = open_page(browser, (site / "index.html").as_uri()).page
    assert page.is_visible("#status") and "python3 -m http.server" in page.inner_text("#status")
    page.context.close()


def test_readable_on_a_phone(sites, server, browser, tmp_path):
    """At a phone's width the page does not scroll sideways and the controls and names are on screen."""
    opened = open_page(browser, _url(server, "latin", n=12, seed=6), viewport={"width": 390, "height": 844})
    page = opened.page
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for selector in ("#n", "#prefix", "#generate", "#names li"):
        box = page.locator(selector).first.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert (tmp_path / "phone.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.context.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_error_line(sites, tmp_path, capsys):
    """The CLI's bad inputs: one 'error:' line each, exit status 2, nothing written into DIR."""
    _, ckpt, _ = sites("latin")
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    cases = [
        (["--ckpt", ckpt, "--web", a_file], "--web: .*a-file exists and is not a directory"),
        (["--ckpt", ckpt, "--web", full], "full exists and is not empty; pass --force to replace it"),
        (["--ckpt", ckpt, "--web", full, "--force"], "--web: .*full is not empty and holds no earlier namegen site"),
        (["--ckpt", tmp_path / "missing.ckpt", "--web", tmp_path / "new"], "--ckpt: .*missing.ckpt not found"),
        (["--ckpt", ckpt], "give one of --out FILE.onnx .* or --web DIR"),
        (["--ckpt", ckpt, "--web", tmp_path / "new", "--data", tmp_path / "nope.txt"], "--data: .*nope.txt does not"),
        (["--ckpt", ckpt, "--web", tmp_path / "new", "--opset", "17"], "--opset is for --out"),
        (["--ckpt", ckpt, "--out", tmp_path / "m.onnx", "--data", a_file], "--data is for --web"),
    ]
    for argv, pattern in cases:
        assert run("export", argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(pattern, err), (pattern, err)
    assert a_file.read_text() == "x\n" and [p.name for p in full.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "full"]


def test_unreachable_registry_is_one_error_line(sites, tmp_path, capsys, monkeypatch):
    """onnxruntime-web not cached and the npm registry unreachable (or no npm at all): one error line naming
    --web and what to do, exit status 2, no DIR and no temporary left beside it."""
    _, ckpt, _ = sites("latin")
    monkeypatch.setenv("NAMEGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    out = tmp_path / "out" / "site"
    assert run("export", ["--ckpt", ckpt, "--web", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --web: `npm pack onnxruntime-web@"), err
    assert "ECONNREFUSED" in err and "make the registry reachable" in err
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("NAMEGEN_NPM_REGISTRY", f"http://127.0.0.1:{_closed_port()}")
    assert run("export", ["--ckpt", ckpt, "--web", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --web: npm was not found, and downloading http://"), err
    assert "refused" in err and "make the registry reachable" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_without_npm_the_tarball_comes_from_the_registry_and_is_checked(sites, tmp_path, capsys, monkeypatch):
    """No npm on PATH: Python downloads the pinned tarball from the registry itself (the real one), checks its
    sha256 and exports; a registry serving other bytes is refused in one line, and nothing is cached."""
    _, ckpt, _ = sites("latin")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setenv("NAMEGEN_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "registry" / "onnxruntime-web" / "-"
    fake.mkdir(parents=True)
    (fake / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz").write_bytes(b"not the package")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the request log would go to stderr, beside the error line
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "registry"))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        monkeypatch.setenv("NAMEGEN_NPM_REGISTRY", f"http://127.0.0.1:{httpd.server_address[1]}")
        assert run("export", ["--ckpt", ckpt, "--web", tmp_path / "refused"]) == 2
        httpd.shutdown()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the pinned" in err and "NAMEGEN_NPM_REGISTRY" in err, err
    assert not (tmp_path / "refused").exists() and not any((tmp_path / "cache").iterdir())
    monkeypatch.delenv("NAMEGEN_NPM_REGISTRY")  # the real registry
    assert run("export", ["--ckpt", ckpt, "--web", tmp_path / "site"]) == 0
    for name in ORT_WEB_FILES:
        assert (tmp_path / "site" / "ort" / Path(name).name).is_file()


def test_force_replaces_an_earlier_site(sites, tmp_path, capsys):
    """--force replaces a site written before (and only that): the new one is complete, nothing else stays."""
    site, ckpt, _ = sites("latin")
    target = tmp_path / "site"
    shutil.copytree(site, target)
    (target / "stale.txt").write_text("from before\n")
    assert run("export", ["--ckpt", ckpt, "--web", target, "--force"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {target}" in out and "400 (" in out
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["app.js", "checks.js", "index.html", "model.json", "model.onnx", "names.txt", "ort/ort-wasm-simd-threaded.wasm",
                     "ort/ort.wasm.bundle.min.mjs", "ort/package.json", "sampler.js", "style.css"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary or old copy left
    assert json.loads((target / "ort" / "package.json").read_text())["version"] == "1.30.0"
    assert math.isclose(sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
                        sum(p.stat().st_size for p in site.rglob("*") if p.is_file()), rel_tol=0.01)


def test_capitalised_lists_and_capital_prefixes(sites, server, browser, tmp_path):
    """A model that learned a capitalised list in lower case (case "title") shows its names capitalised, as
    namegen sample does; on a lowercase model a prefix typed with a capital ("Ka") conditions on "ka" and the
    names start with "Ka" as typed."""
    site, ckpt, _ = sites("latin")
    page = open_page(browser, _url(server, "latin", n=5, seed=1)).page
    typed = page.evaluate("() => window.namegen.generate({n: 30, prefix: 'Ka', seed: 3})")["names"]
    assert all(s["name"].startswith("Ka") and s["name"][2:] == s["name"][2:].lower() for s in typed)
    gen = NameGenerator.from_checkpoint(ckpt)
    got = page.evaluate("names => window.namegen.score(names)", ["Kate", "kate"])
    assert max(abs(a - b) for a, b in zip(got, gen.score(["Kate", "kate"]))) < 1e-4
    page.context.close()

    obj = torch.load(ckpt, weights_only=True)
    obj["namegen"]["case"] = "title"
    torch.save(obj, tmp_path / "title.ckpt")
    assert run("export", ["--ckpt", tmp_path / "title.ckpt", "--web", site.parent / "title"]) == 0
    assert json.loads((site.parent / "title" / "model.json").read_text(encoding="utf-8"))["case"] == "title"
    page = open_page(browser, _url(server, "title", n=5, seed=1)).page
    shown = page.evaluate("() => window.namegen.generate({n: 30, seed: 3})")["names"]
    assert all(s["name"][0].isupper() for s in shown)
    page.context.close()
