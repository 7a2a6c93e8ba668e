"""Export a trained model as a static web page that samples names in the browser.

    from namegen.web import export_web
    info = export_web("checkpoints/small/best.ckpt", "site")  # WebInfo(path, files, total_bytes, ...)

The directory holds everything the page needs, so it works offline and on any
static file server (GitHub Pages, Netlify, S3, ``python -m http.server``)::

    index.html app.js sampler.js checks.js style.css   the page (namegen/webpage, shipped with namegen;
                                             checks.js checks model.json and the URL query's limits)
    model.onnx                               the one-step graph of ``namegen.export``
    model.json                               its metadata: vocabulary, start/end/pad tokens, block_size
    names.txt                                the training names, sorted, one a line ("new names only")
    ort/                                     onnxruntime-web (wasm backend only), pinned to ORT_WEB_VERSION

onnxruntime-web comes from the npm registry: ``npm pack`` fetches the pinned
tarball (or, on a machine without npm, Python's own HTTPS client downloads it from
``$NAMEGEN_NPM_REGISTRY``, default https://registry.npmjs.org) once into the user's cache (``$NAMEGEN_CACHE_DIR``, else
``$XDG_CACHE_HOME/namegen`` or ``~/.cache/namegen``), its sha256 is checked,
and the few files the page loads are extracted with ``tarfile``. The site is
written into a temporary directory beside the target and renamed into place,
so a failure leaves nothing half-written.

``sampler.js`` follows ``NameGenerator`` (same start/end tokens, temperature,
top-k, prefix conditioning, length bounds, unique/new-only resampling) and
scores names as ``NameGenerator.score`` does; ``tests/test_web.py`` checks it
in headless Chromium. Like ``namegen.export``, this module needs torch and onnx,
no training code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from namegen.api import NameGenerator
from namegen.config import default_cache_dir
from namegen.errors import UserError
from namegen.export import ExportInfo, export_onnx

#: the onnxruntime-web release the page runs, and the sha256 of its npm tarball
ORT_WEB_VERSION = "1.30.0"
ORT_WEB_SHA256 = "d2228df7e4616bc3348bf504ee888f3bec43789a273f0a63f3e68d203ce3bf71"
#: the files of the package the page loads (the wasm-only bundle embeds its glue code), and its package.json
ORT_WEB_FILES = ("dist/ort.wasm.bundle.min.mjs", "dist/ort-wasm-simd-threaded.wasm", "package.json")
PAGE_DIR = Path(__file__).resolve().parent / "webpage"
PAGE_FILES = ("index.html", "app.js", "sampler.js", "checks.js", "style.css")
NAMES_FILE = "names.txt"
#: written last into every site: with --force, only a directory holding it is replaced wholesale
MARKER = "model.json"
_FETCH_HINT = ("the page needs onnxruntime-web {version} from the npm registry, fetched once into {cache}: "
               "make the registry reachable (with npm: `npm ping`; without it, {registry}), then export again")
NPM_REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class WebInfo:
    """What ``export_web`` wrote."""

    path: Path
    files: dict  # relative path -> size in bytes
    total_bytes: int
    names_bytes: int  # the training names payload (0 when there is none)
    n_training_names: int
    names_note: str | None  # why no training names were shipped, when none were
    onnx: ExportInfo


def export_web(ckpt: str | Path, out_dir: str | Path, *, force: bool = False, data: str | Path | None = None,
               cache_dir: str | Path | None = None) -> WebInfo:
    """Write a static site for checkpoint ``ckpt`` into ``out_dir`` (see the module doc).

    ``out_dir`` must be new or empty; ``force`` replaces an earlier site (a directory
    holding ``model.json``), never other files. ``data``: the training names file for
    "new names only" (default: the file the checkpoint records; without one the page
    offers no "new names only"). Raises UserError for anything the caller can fix,
    with ``about="web"`` when onnxruntime-web cannot be fetched.
    """
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if not ckpt.exists():
        raise UserError(f"{ckpt} not found; give the path of a .ckpt file (train.py prints it) or a notebook .pth",
                        about="ckpt")
    _check_target(out_dir, force)
    names, note = _training_names(ckpt, data)
    ort_dir = fetch_onnxruntime_web(cache_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    except OSError as exc:
        raise UserError(f"cannot write into {out_dir.parent} ({exc.strerror}); give a directory you can write",
                        about="web") from None
    stage.chmod(_directory_mode())  # a plain mkdir's permissions, not mkdtemp's 0o700: web servers read it
    try:
        info = _write_site(stage, ckpt, ort_dir, names)
        _move_into_place(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files = {str(p.relative_to(out_dir)): p.stat().st_size for p in sorted(out_dir.rglob("*")) if p.is_file()}
    return WebInfo(path=out_dir, files=files, total_bytes=sum(files.values()), names_bytes=files.get(NAMES_FILE, 0),
                   n_training_names=len(names or ()), names_note=note,
                   onnx=replace(info, path=out_dir / "model.onnx"))


def fetch_onnxruntime_web(cache_dir: str | Path | None = None) -> Path:
    """The directory holding the pinned onnxruntime-web's files (ORT_WEB_FILES, by base name), fetched
    with ``npm pack`` into the cache on first use. UserError about ``"web"`` when that fails."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"onnxruntime-web-{ORT_WEB_VERSION}"
    if all((target / Path(name).name).is_file() for name in ORT_WEB_FILES):
        return target
    hint = _FETCH_HINT.format(version=ORT_WEB_VERSION, cache=root, registry=registry_url())
    npm = shutil.which("npm")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache directory {root} ({exc.strerror}); set NAMEGEN_CACHE_DIR to a "
                        "writable directory", about="web") from None
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch.") as tmp:
        tarball = _npm_pack(npm, Path(tmp), hint) if npm else _download(Path(tmp), hint)
        _check_sha256(tarball, "npm config get registry" if npm else "NAMEGEN_NPM_REGISTRY")
        unpacked = Path(tmp) / "unpacked"
        _extract(tarball, unpacked)
        shutil.rmtree(target, ignore_errors=True)  # a partial copy from an older namegen, if any
        os.replace(unpacked, target)
    return target


# ------------------------------------------------------------------------------------------- helpers


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; give a new or empty directory for the site",
                        about="web")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} exists and is not empty", about="force")
        if not (out_dir / MARKER).is_file():
            raise UserError(f"{out_dir} is not empty and holds no earlier namegen site (no {MARKER}), so it is "
                            "not replaced even with force; give a new or empty directory", about="web")


def _training_names(ckpt: Path, data: str | Path | None) -> tuple[list[str] | None, str | None]:
    """The sorted training names and None, or None and why there are none (only when ``data`` is not given)."""
    gen = NameGenerator.from_checkpoint(ckpt)
    if data is not None:
        return sorted(gen.training_names(data)), None
    try:
        return sorted(gen.training_names()), None
    except UserError as exc:
        return None, str(exc)


def _npm_pack(npm: str, tmp: Path, hint: str) -> Path:
    spec = f"onnxruntime-web@{ORT_WEB_VERSION}"
    try:
        proc = subprocess.run([npm, "pack", spec, "--pack-destination", str(tmp), "--loglevel=error"], cwd=tmp,
                              capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise UserError(f"`npm pack {spec}` took over 15 minutes; {hint}", about="web") from None
    tarball = tmp / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    if proc.returncode != 0 or not tarball.is_file():
        raise UserError(f"`npm pack {spec}` failed ({_npm_reason(proc)}); {hint}", about="web")
    return tarball


def registry_url() -> str:
    return os.environ.get("NAMEGEN_NPM_REGISTRY", NPM_REGISTRY).rstrip("/")


def _download(tmp: Path, hint: str) -> Path:
    """The pinned tarball straight from the registry over HTTP(S), for a machine without npm."""
    name = f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    url = f"{registry_url()}/onnxruntime-web/-/{name}"
    tarball = tmp / name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tarball, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"npm was not found, and downloading {url} failed ({reason}); {hint}", about="web") from None
    return tarball


def _check_sha256(tarball: Path, where: str) -> None:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != ORT_WEB_SHA256:
        raise UserError(f"the registry's onnxruntime-web {ORT_WEB_VERSION} has sha256 {digest[:16]}..., not the "
                        f"pinned {ORT_WEB_SHA256[:16]}..., so it was not used; check {where}", about="web")


def _npm_reason(proc: subprocess.CompletedProcess) -> str:
    """npm's one telling line ("FetchError: request to ... failed, reason: ...", else "code E..."), shortened."""
    lines = [line.removeprefix("npm error").strip() for line in proc.stderr.splitlines()]
    lines = [line for line in lines if line]
    why = next((line for line in lines if line.startswith(("FetchError", "404"))), None)
    why = why or next((line for line in lines if line.startswith("code ")), None)
    why = why or (lines[0] if lines else f"exit status {proc.returncode}")
    return why if len(why) <= 160 else why[:157] + "..."


def _extract(tarball: Path, dest: Path) -> None:
    dest.mkdir()
    with tarfile.open(tarball, "r:gz") as tar:
        for name in ORT_WEB_FILES:
            member = tar.getmember(f"package/{name}")
            source = tar.extractfile(member)
            with source, open(dest / Path(name).name, "wb") as f:
                shutil.copyfileobj(source, f)


def _write_site(stage: Path, ckpt: Path, ort_dir: Path, names: list[str] | None) -> ExportInfo:
    info = export_onnx(ckpt, stage / "model.onnx")
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_DIR / name, stage / name)
    (stage / "ort").mkdir()
    for name in ORT_WEB_FILES:
        shutil.copyfile(ort_dir / Path(name).name, stage / "ort" / Path(name).name)
    if names is not None:
        (stage / NAMES_FILE).write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    meta = _model_meta(stage / "model.onnx")
    meta.update(training_names=NAMES_FILE if names is not None else None, n_training_names=len(names or ()),
                onnxruntime_web=ORT_WEB_VERSION)
    (stage / MARKER).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return info


def _model_meta(path: Path) -> dict:
    """The ONNX model's metadata_props, numbers as numbers and the vocabulary as a list."""
    import onnx  # export_onnx, just called, has checked that it is installed

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    meta = {"format": props["format"], "vocab": json.loads(props["vocab"])}
    for key in ("pad_token", "end_token", "start_token", "n_layer", "hidden", "vocab_size", "block_size"):
        meta[key] = int(props[key]) if props.get(key) not in (None, "") else None
    meta.update(size=props.get("size") or None, case=props.get("case") or "as-is",
                namegen_version=props.get("namegen_version"),
                source=props.get("source"))
    return meta


def _directory_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def _move_into_place(stage: Path, out_dir: Path) -> None:
    """Rename the finished ``stage`` to ``out_dir``; an earlier site there is moved aside first, then removed."""
    old = None
    if out_dir.is_dir():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(stage, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
