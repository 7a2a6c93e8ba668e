"""Search one size's training recipe with Optuna: ``namegen tune --model large --trials 40``.

The search space is a YAML file (``configs/search/<size>.yaml``): the config a trial
starts from, and for each recipe key (learning rate, schedule, epochs, batch size,
weight decay, each dropout rate) how Optuna samples it. Architecture keys are refused:
every trial has the size's parameter count. Optuna's TPE sampler proposes each trial
from the earlier ones; its Lightning callback reports every epoch's val/loss, and the
pruner stops a trial that trails the others at the same epoch.

Every trial is a normal namegen run in ``<runs-dir>/<study>/trial-NNNN/`` (its config
YAML, best.ckpt, last.ckpt, metrics.csv). The study lives in an Optuna storage: by
default ``<runs-dir>/optuna.db`` (SQLite); ``--storage`` takes a database URL
(PostgreSQL, MySQL: many machines on one study) or a journal file (``*.journal``,
Optuna's JournalFileBackend: many processes on one shared disk). Running the same
command again continues the study until it holds ``--trials`` finished trials; a trial
whose process was killed is marked failed and the study goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.storages import JournalStorage, RDBStorage  # noqa: E402
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from optuna_integration import PyTorchLightningPruningCallback  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from namegen.checkpoint import atomic_write, make_dirs, write_bytes  # noqa: E402
from namegen.config import ARCHITECTURE, CONFIG_DIR, FINETUNE, SIZES, Config, load_config, read_yaml  # noqa: E402
from namegen.errors import TrainingDiverged, UserError, brief  # noqa: E402
from namegen.finetune import load_base  # noqa: E402
from namegen.training import TrainOptions, display, train  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
KINDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}

# namegen says what each trial did in its own lines; Optuna's would add a traceback for every failed trial
optuna.logging.set_verbosity(optuna.logging.ERROR)


# ----------------------------------------------------------------------------- the search space


@dataclass
class SearchSpace:
    """A parsed ``configs/search/*.yaml``."""

    path: Path
    base: Config  # every trial starts from it
    base_name: str  # a size, or the base config's path as written in the file
    params: dict[str, dict]  # recipe key -> {"type": float|int|categorical, ...}
    pruner: dict = field(default_factory=dict)  # MedianPruner's arguments
    sampler: dict = field(default_factory=dict)  # TPESampler's arguments
    enqueue: list[dict] = field(default_factory=list)  # points to try first, once each

    def config_for(self, params: dict) -> Config:
        return self.base.replace(**params)


def search_space_path(model: str, space: str | None) -> Path:
    if space is not None:
        return Path(space)
    if model in SIZES or model == FINETUNE:
        return CONFIG_DIR / "search" / f"{model}.yaml"
    raise UserError(f"{model!r} is not a size ({', '.join(SIZES)}); give the search space with --space FILE",
                    about="model")


def load_search_space(path: Path, model: Config | None = None) -> SearchSpace:
    """Read and check a search-space file; every problem is one line naming the file and key. ``model``:
    the config of the model trials start from (``--init-from``), whose architecture the base config takes."""
    if not path.is_file():
        raise UserError(f"search space {path} not found", about="space")
    raw = read_yaml(path, about="space") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with keys base, params, pruner, sampler, enqueue", about="space")
    unknown = sorted(brief(k) for k in set(raw) - {"base", "params", "pruner", "sampler", "enqueue"})
    if unknown or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise UserError(f"{path}: expected keys base, params (a mapping), pruner, sampler, enqueue"
                        + (f"; unknown: {', '.join(unknown)}" if unknown else ""), about="space")
    base_name = str(raw.get("base", "small"))
    base_path = base_name if base_name in SIZES or base_name == FINETUNE else str((path.parent / base_name))
    base = load_config(base_path, base=model)
    for key, spec in raw["params"].items():
        _check_param(path, key, spec, base)
    enqueue = raw.get("enqueue") or []
    for point in enqueue if isinstance(enqueue, list) else [enqueue]:
        if not isinstance(point, dict) or set(point) - set(raw["params"]):
            raise UserError(f"{path}: each enqueue entry maps searched keys to values, got {brief(point)}",
                            about="space")
    for key, make in (("pruner", optuna.pruners.MedianPruner), ("sampler", optuna.samplers.TPESampler)):
        _check_arguments(path, key, raw.get(key) or {}, make)
    return SearchSpace(path, base, base_name, raw["params"], raw.get("pruner") or {}, raw.get("sampler") or {},
                       enqueue)


def _check_param(path: Path, key: str, spec, base: Config) -> None:
    if not isinstance(key, str):
        raise UserError(f"{path}: params: {brief(key)} is not a config key", about="space")
    if key in ARCHITECTURE:
        raise UserError(f"{path}: {key} is an architecture key; a recipe search keeps the size's architecture "
                        f"({', '.join(ARCHITECTURE)}) and parameter count", about="space")
    if key not in base.to_dict() or key in ("seed", "split_seed", "block_size"):
        raise UserError(f"{path}: {key} is not a recipe key of a config", about="space")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in KINDS or set(spec) - {"type", *KINDS[kind]}:
        raise UserError(f"{path}: {key}: expected {{type: float|int|categorical, ...}} with low/high[/log/step] or "
                        f"choices, got {brief(spec)}", about="space")
    if kind == "categorical" and not (isinstance(spec.get("choices"), list) and spec["choices"]):
        raise UserError(f"{path}: {key}: categorical needs a non-empty list of choices", about="space")
    if kind == "categorical":
        return
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise UserError(f"{path}: {key}: low and high must be numbers (finite), got {brief(low)} and {brief(high)} (YAML "
                        f"reads 1.0e6 as text: write 1.0e+6)", about="space")
    if low > high:
        raise UserError(f"{path}: {key}: needs low <= high", about="space")
    try:
        distribution(spec)  # Optuna's own checks: log scale needs low > 0, step a positive number, ...
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {key}: {_first(exc)}", about="space") from None


def _check_arguments(path: Path, key: str, args, make) -> None:
    """``pruner``/``sampler``: arguments that Optuna's MedianPruner/TPESampler take (tried on a throwaway one)."""
    try:
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise TypeError("expected a mapping of argument names to values")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make(**args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {key}: {_first(exc)}", about="space") from None


def distribution(spec: dict) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution a searched key's spec describes (what ``suggest`` asks the sampler for)."""
    args = {k: v for k, v in spec.items() if k != "type"}
    if spec["type"] == "categorical":
        return optuna.distributions.CategoricalDistribution(args["choices"])
    if spec["type"] == "int":
        return optuna.distributions.IntDistribution(**args)
    return optuna.distributions.FloatDistribution(**args)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    """One value per searched key, from Optuna's sampler."""
    values = {}
    for key, spec in space.params.items():
        args = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, args["choices"])
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, **args)
        else:
            values[key] = trial.suggest_float(key, **args)
    return values


# ----------------------------------------------------------------------------- the study


def open_storage(storage: str | None, runs_dir: Path):
    """An Optuna storage: a journal file (``*.journal``), a database URL, or the default SQLite file."""
    if storage is None:
        storage = f"sqlite:///{make_dirs(runs_dir) / 'optuna.db'}"
    if storage.endswith(".journal") and "://" not in storage:
        make_dirs(Path(storage).parent, about="storage")
        check_journal(Path(storage))
        return JournalStorage(JournalFileBackend(storage)), storage
    try:  # a heartbeat lets any process see that a trial's process died (database storages)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(storage, heartbeat_interval=60, grace_period=180), storage
    except SQLAlchemyError as exc:
        raise storage_error(exc, storage) from None
    except (ValueError, ImportError) as exc:  # a bad URL, no driver
        raise UserError(f"cannot open Optuna storage {storage} ({_first(exc)}); give a database URL such as "
                        f"sqlite:///runs/tune/optuna.db or a file ending in .journal", about="storage") from None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# ----------------------------------------------------------------------------- a damaged storage
#
# A crash mid-write, a full disk or a second writer can leave a storage damaged. SQLite's transactions
# keep every finished trial; what breaks is said in one line with how to recover (storage_error). A
# journal is checked before Optuna reads it (Optuna skips a record cut short at the end, then appends
# after it, which breaks the next record too): damage stops the run, naming the line and how to keep
# everything before it, and the file is left as it is.

#: seconds to wait for a record another process may be writing at the end of a journal
JOURNAL_SETTLE_S = 1.0


def storage_error(exc: Exception, storage: str, doing: str = "cannot open Optuna storage") -> UserError:
    """The one line for a database storage that fails: damaged, full, locked, or unreachable."""
    text, shown = _first(exc), storage.removeprefix("sqlite:///")
    if "disk is full" in text or "disk I/O error" in text:
        how = f"the disk holding {shown} is full or failing: free some space and run the same command again"
    elif "locked" in text:
        how = (f"another process holds {shown} locked: run again when it is done, or give several processes "
               "one study through a journal file (--storage FILE.journal)")
    elif storage.startswith("sqlite") and ("not a database" in text or "malformed" in text):
        how = (f"{shown} is damaged: keep what SQLite can read with `sqlite3 {shown} .recover | sqlite3 "
               f"recovered.db` and pass --storage sqlite:///recovered.db, or start afresh with another --storage")
    else:
        how = ("give a database URL such as sqlite:///runs/tune/optuna.db or a file ending in .journal")
    return UserError(f"{doing} {storage} ({text}); {how}", about="storage")


def check_journal(path: Path) -> None:
    """Refuse a journal that is damaged (see above), naming the first bad line and how to keep the rest."""
    if not path.exists():
        return
    if not path.is_file():
        raise UserError(f"{path} is not a regular file; give a journal file Optuna wrote, or a new name",
                        about="storage")
    lines, bad = _read_journal(path)
    unreplayable = _first_unreplayable([json.loads(line) for line in lines[:bad]])
    bad = unreplayable if unreplayable is not None else bad
    if bad is None:
        return
    finished = _finished_in(lines[:bad])
    fixed = path.with_name(f"{path.stem}-kept{path.suffix}")
    raise UserError(f"{path} is damaged at line {bad + 1} (a record cut short or overwritten, as a crash or a full "
                    f"disk leaves it); the {bad} line(s) before it are intact and hold {finished} finished "
                    f"trial(s): keep them with `head -n {bad} {path} > {fixed}` and pass --storage {fixed} "
                    "(the damaged file is left as it is)", about="storage")


def _read_journal(path: Path) -> tuple[list[bytes], int | None]:
    """The journal's complete lines, and the index of the first that is no JSON record (None: all are).
    A last line without its newline may be a record another process is writing: it gets a moment."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        time.sleep(JOURNAL_SETTLE_S)
        data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for i, line in enumerate(lines):
        if not _is_record(line):
            return lines, i
    return lines, (len(lines) if tail else None)


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return False
    return isinstance(record, dict) and isinstance(record.get("op_code"), int)


class _ReadOnlyJournal(BaseJournalBackend):
    """A journal's records, already read, replayed by Optuna's own JournalStorage: nothing is written."""

    def __init__(self, logs: list[dict]):
        self.logs = logs

    def read_logs(self, log_number_from: int) -> list[dict]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict]) -> None:
        raise RuntimeError("a journal is only read here")


def _replays(logs: list[dict]) -> bool:
    try:
        JournalStorage(_ReadOnlyJournal(logs)).get_all_studies()
        return True
    except Exception:  # noqa: BLE001 (a record Optuna cannot apply: a KeyError, TypeError, ...)
        return False


def _first_unreplayable(logs: list[dict]) -> int | None:
    """The index of the first record Optuna cannot apply (None: it replays whole), by bisection."""
    if _replays(logs):
        return None
    good, bad = 0, len(logs)  # logs[:good] replays, logs[:bad] does not
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if _replays(logs[:middle]) else (good, middle)
    return good


def _finished_in(lines: list[bytes]) -> int:
    storage = JournalStorage(_ReadOnlyJournal([json.loads(line) for line in lines]))
    return sum(len(storage.get_all_trials(s._study_id, deepcopy=False, states=FINISHED))
               for s in storage.get_all_studies())


def open_study(storage, name: str, space: SearchSpace, sampler_seed: int | None) -> optuna.Study:
    """Create the study, or load it to continue; the space's ``enqueue`` points not yet tried run first."""
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, **space.sampler)
    pruner = optuna.pruners.MedianPruner(**space.pruner)
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    check_space_fits(study, space)
    for point in space.enqueue:  # each point runs once: one already tried (in any state) is skipped
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr("space", _shown(space.path))  # the space it was last opened with (the dashboard shows it)
    study.set_user_attr("base", space.base_name)
    return study


def check_space_fits(study: optuna.Study, space: SearchSpace) -> None:
    """Refuse a space whose key changed in a way Optuna cannot continue a study with (another kind,
    log scale switched, categorical choices edited); ranges of numbers may widen or narrow."""
    seen = {}
    for trial in study.get_trials(deepcopy=False):
        seen.update({k: d for k, d in trial.distributions.items() if k in space.params and k not in seen})
    for key, old in seen.items():
        new = distribution(space.params[key])
        try:
            optuna.distributions.check_distribution_compatibility(old, new)
        except ValueError:
            raise UserError(f"{_shown(space.path)}: {key} is searched as {_describe(new)}, but study "
                            f"{study.study_name!r} searched it as {_describe(old)}; Optuna cannot "
                            f"change that within a study: keep it, or start a new study with --study NAME",
                            about="space") from None


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    """A key's range in words, as the report's space list and the errors print it."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    scale = " (log scale)" if dist.log else f" (step {dist.step})" if dist.step not in (None, 1) else ""
    return f"{kind} {dist.low} to {dist.high}{scale}"


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark failed the running trials whose process, on this machine, is gone (killed): their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other machines' trials, where the storage keeps heartbeats
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# ----------------------------------------------------------------------------- trials


@dataclass
class TuneOptions:
    """What ``namegen tune`` asks for. ``training`` carries the flags passed to every trial's run."""

    model: str = "small"  # the size whose recipe is searched (or a config, with ``space``)
    space: str | None = None  # search-space YAML; default configs/search/<model>.yaml
    trials: int = 40  # the study's target of finished (complete or pruned) trials
    timeout: float | None = None  # seconds; no new trial starts after it
    storage: str | None = None  # Optuna storage; default sqlite:///<runs-dir>/optuna.db
    study: str | None = None  # default: the model's name
    runs_dir: Path = Path("runs/tune")
    reports_dir: Path = Path("reports")
    date: str | None = None
    sampler_seed: int | None = None
    training: TrainOptions = field(default_factory=TrainOptions)


class Objective:
    """One trial: the sampled recipe as a config file, trained as a normal namegen run; its best val/loss."""

    def __init__(self, space: SearchSpace, study_dir: Path, training: TrainOptions):
        self.space, self.study_dir, self.training = space, study_dir, training

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        config = self.space.config_for(suggest(trial, self.space))
        run_dir = make_dirs(self.study_dir / f"trial-{trial.number:04d}")
        config_file = write_bytes(run_dir / f"trial-{trial.number:04d}.yaml",
                                  yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
        trial.set_user_attr("run_dir", run_dir.as_posix())
        print(f"namegen tune: trial {trial.number}: {_params_line(trial.params)}", flush=True)
        opts = TrainOptions(**{**vars(self.training), "model": str(config_file), "out": run_dir, "overwrite": True,
                               "callbacks": [PyTorchLightningPruningCallback(trial, monitor="val/loss")]})
        try:
            result = train(opts)
        except TrainingDiverged as exc:  # a recipe that diverges is a failed trial; the study goes on
            trial.set_user_attr("fail_reason", str(exc))
            raise
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("wall_s", round(result.elapsed_s, 1))
        if result.best_score is None or not math.isfinite(result.best_score):
            raise UserError(f"trial {trial.number} ran no validation (see --limit-val-batches)", about="limit_val_batches")
        return result.best_score


def _params_line(params: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def tune(opts: TuneOptions) -> optuna.Study:
    """Open (or continue) the study, run trials until it holds ``opts.trials`` finished ones, write the report."""
    start = load_base(opts.training.init_from) if opts.training.init_from else None
    space = load_search_space(search_space_path(opts.model, opts.space), start.loaded.config if start else None)
    name = opts.study or default_study_name(opts, start)
    storage, url = open_storage(opts.storage, opts.runs_dir)
    with storage_failures(url):
        return _tune(opts, space, name, storage, url)


@contextlib.contextmanager
def storage_failures(url: str):
    """A storage that fails while the study runs (a disk filling up, a database damaged or locked by another
    process) is one line saying how to recover; the trials finished before it are kept in the storage."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise storage_error(exc, url, "the Optuna storage failed:") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise UserError(f"cannot write the Optuna storage {url}: {exc.strerror}; the finished trials are kept: free "
                        "some space and run the same command again (a journal cut short names how to keep the "
                        "rest)", about="storage") from None


def _tune(opts: TuneOptions, space: SearchSpace, name: str, storage, url: str) -> optuna.Study:
    study = open_study(storage, name, space, opts.sampler_seed)
    for number in fail_dead_trials(study):
        print(f"namegen tune: trial {number} was running in a process that is gone; marked failed", flush=True)
    done = finished_trials(study)
    print(f"namegen tune: study {name!r} in {url}: {done} finished trial(s), target {opts.trials}; "
          f"space {_shown(space.path)}", flush=True)
    if done < opts.trials:
        stop = optuna.study.MaxTrialsCallback(opts.trials, states=FINISHED)
        objective = Objective(space, opts.runs_dir / name, opts.training)
        study.optimize(objective, timeout=opts.timeout, callbacks=[stop, _say_result],
                       catch=(TrainingDiverged,), gc_after_trial=True)
    write_report(study, space, opts, url)
    return study


def default_study_name(opts: TuneOptions, start) -> str:
    """The model's name; from a trained model (``--init-from``), ``<recipe>-<base size>-<data file's stem>``."""
    name = opts.model if opts.model in SIZES or opts.model == FINETUNE else Path(opts.model).stem
    if start is None:
        return name
    data = Path(opts.training.data).stem if opts.training.data else "names"
    return f"{name}-{start.loaded.size}-{data}"


def _say_result(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    state = trial.state.name.lower()
    value = f" val/loss {trial.value:.4f}" if trial.value is not None else ""
    if trial.state == TrialState.FAIL:  # e.g. a diverged run: the study goes on
        value = f" ({trial.user_attrs.get('fail_reason', 'stopped by an error')[:300]})"
    best = f"; best so far {study.best_value:.4f} (trial {study.best_trial.number})" if _any_complete(study) else ""
    print(f"namegen tune: trial {trial.number} {state}{value}{best}", flush=True)


def _any_complete(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


# ----------------------------------------------------------------------------- the report


def write_report(study: optuna.Study, space: SearchSpace, opts: TuneOptions, url: str) -> Path:
    """``<reports-dir>/<date>/tune-<study>.md`` (every trial), ``-best.yaml`` (a ready config) and Optuna's plots."""
    out = make_dirs(opts.reports_dir / (opts.date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")),
                    about="reports_dir")
    stem = f"tune-{study.study_name}"
    lines = [f"# Recipe search: {study.study_name}", "", *_summary(study, space, url), ""]
    best = _best(study)
    if best is not None:
        config = space.config_for(best.params)
        header = (f"# {study.study_name}: best recipe of the Optuna study (trial {best.number}, best val/loss "
                  f"{best.value:.4f} in the search run); architecture as {space.base_name}\n")
        text = header + yaml.safe_dump(config.to_dict(), sort_keys=False)
        _write(out / f"{stem}-best.yaml", text.encode())
        lines += [f"Best recipe, ready to train: [{stem}-best.yaml]({stem}-best.yaml) "
                  f"(`namegen train --model {display(out / f'{stem}-best.yaml')}`)", ""]
    for kind, title in (("history", "Optimisation history"), ("importances", "Parameter importances"),
                        ("intermediate", "val/loss per epoch of every trial (pruned ones stop early)")):
        if _plot(study, kind, out / f"{stem}-{kind}.png"):
            lines += [f"## {title}", "", f"![{kind}]({stem}-{kind}.png)", ""]
    lines += ["## Trials", "", *_trial_table(study)]
    report = _write(out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    print(f"namegen tune: report in {display(report)}", flush=True)
    return report


def _best(study: optuna.Study):
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: t.value) if complete else None


def _summary(study: optuna.Study, space: SearchSpace, url: str) -> list[str]:
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    shown_url = url if "://" in url and not url.startswith("sqlite") else display(url.removeprefix("sqlite:///"))
    space_path = _shown(space.path)
    space_lines = [f"  - `{k}`: {_describe(distribution(spec))}" for k, spec in space.params.items()]
    return [f"- storage: `{shown_url}`; search space: `{space_path}` (base config: {space.base_name})",
            f"- trials: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running",
            f"- sampler: TPE {space.sampler or ''}; pruner: median, on each epoch's val/loss {space.pruner or ''}",
            "- space:", *space_lines]


def _shown(path: Path) -> str:
    """A path as the report names it: relative to the current directory, or to the configs' folder's parent."""
    shown = display(path)
    if Path(shown).is_absolute() and path.resolve().is_relative_to(CONFIG_DIR.resolve()):
        return (Path("configs") / path.resolve().relative_to(CONFIG_DIR.resolve())).as_posix()
    return shown


def _trial_table(study: optuna.Study) -> list[str]:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: (t.value is None, t.value or 0, t.number))
    keys = sorted({k for t in trials for k in t.params})
    rows = ["| trial | state | best val/loss | epochs | wall time | " + " | ".join(keys) + " |",
            "|" + "---|" * (5 + len(keys))]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else (
            f"({min(t.intermediate_values.values()):.4f})" if t.intermediate_values else "")
        epochs = t.user_attrs.get("epochs", len(t.intermediate_values) or "")
        wall = f"{t.user_attrs['wall_s'] / 60:.1f} min" if "wall_s" in t.user_attrs else ""
        cells = [_cell(t.params.get(k)) for k in keys]
        rows.append(f"| {t.number} | {t.state.name.lower()} | {value} | {epochs} | {wall} | " + " | ".join(cells) + " |")
    return rows


def _cell(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(study: optuna.Study, kind: str, path: Path) -> bool:
    """One of Optuna's matplotlib plots into ``path``; False when the study has too few trials for it."""
    vis = optuna.visualization.matplotlib
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete or (kind == "importances" and len(complete) < 2):
        return False
    draw = {"history": vis.plot_optimization_history, "importances": vis.plot_param_importances,
            "intermediate": vis.plot_intermediate_values}[kind]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = draw(study)
    except (ValueError, RuntimeError):  # e.g. importances of parameters that never varied
        return False
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    _write(path, lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)
    return True


def _write(path: Path, data) -> Path:
    """Write a report file atomically; ``data``: bytes, or a function writing to a binary file."""
    return atomic_write(path, data if callable(data) else (lambda f: f.write(data)), about="reports_dir")
