"""Loggers: the CSV history beside the checkpoints, and Weights & Biases."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import threading
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

import wandb

from namegen.checkpoint import atomic_write
from namegen.errors import UserError, WriteFailed

WANDB_PROJECT = "namegen"


def wandb_mode(flag: str | None) -> str:
    """The W&B mode a run uses: ``--wandb-mode`` if given, else ``WANDB_MODE``, else online when an
    API key is configured (``wandb login``, ``WANDB_API_KEY``), offline when none is."""
    mode = flag or os.environ.get("WANDB_MODE")
    if mode in ("online", "offline"):
        return mode
    if mode in ("disabled", "dryrun"):
        return "offline"
    return "online" if wandb_logged_in() else "offline"


def wandb_logged_in() -> bool:
    """Whether W&B has an API key here (env, settings or netrc); nothing is sent anywhere."""
    with _quiet_wandb():
        return bool(wandb.login(prompt=False, verify=False))


def check_wandb_online(timeout: int = 15) -> None:
    """Online mode needs a login that the server accepts: check it before anything is written.
    (One verifying call: W&B skips the check when an earlier call in the process found a key.)"""
    try:
        with _quiet_wandb():
            verified = wandb.login(prompt=False, verify=True, timeout=timeout)
    except Exception as exc:  # AuthenticationError, a timeout, no network: W&B raises several kinds
        _stop_wandb_service()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"W&B cannot be reached or refused the login ({first}); check the network and "
                        "`wandb login`, or use --wandb-mode offline and `wandb sync` later", about="wandb_mode") from None
    if not verified:
        raise UserError("online needs a W&B login: run `wandb login` (or set WANDB_API_KEY), or use --wandb-mode "
                        "offline and `wandb sync` later", about="wandb_mode")


def _stop_wandb_service(grace: float = 5.0) -> None:
    """End W&B's service process after a failed login, so the error exits at once.

    The service may still be retrying the request that failed, and W&B's exit hook waits for it
    without a limit (an intermittent hang after the message): tear it down now, and kill it if it
    has not ended ``grace`` seconds after being asked. No run exists yet, so nothing is lost.
    """
    from wandb.sdk import wandb_setup  # the service W&B started for the login, if any

    connection = getattr(wandb_setup._singleton, "_connection", None)
    process = getattr(getattr(connection, "_proc", None), "_process", None)  # a subprocess.Popen
    killer = threading.Timer(grace, process.kill) if process is not None else None
    if killer is not None:
        killer.daemon = True
        killer.start()
    try:
        wandb.teardown()
    except (Exception, SystemExit):  # W&B exits with the service's code when it had to be killed
        pass
    finally:
        if killer is not None:
            killer.cancel()


@contextlib.contextmanager
def _quiet_wandb():
    """WANDB_SILENT for the duration: W&B's banners would otherwise interleave with namegen's lines."""
    before = os.environ.get("WANDB_SILENT")
    os.environ["WANDB_SILENT"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_SILENT", None)
        else:
            os.environ["WANDB_SILENT"] = before


def build_loggers(kind: str, out_dir: Path, run_name: str, config: dict, mode: str = "offline", group: str = "sizes",
                  run_id: str | None = None, resume_at: tuple[int, int] | None = None) -> list[Logger]:
    """The CSV history (always, beside the checkpoints) plus W&B when ``kind == "wandb"``.

    ``mode`` is ``wandb_mode``'s answer; ``run_id`` resumes that W&B run; ``resume_at`` (the
    checkpoint's epoch and global step) continues ``metrics.csv`` instead of starting it afresh.
    """
    if kind == "none":
        return []
    loggers: list[Logger] = [HistoryCSVLogger(out_dir, resume_at=resume_at)]
    if kind == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_logger = WandbLogger(project=WANDB_PROJECT, name=run_name, group=group, job_type="train",
                                   save_dir=str(out_dir), offline=mode != "online", mode=mode, config=config,
                                   id=run_id, resume="allow" if run_id else None)
        # Lightning always passes anonymous=None, which W&B 0.31 answers with a deprecation warning
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def start_wandb(loggers: list[Logger]) -> None:
    """Start the W&B run now (Lightning would start it lazily, mid-fit): a service that fails to
    start becomes one line before any training."""
    logger = next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
    if logger is None:
        return
    try:
        logger.experiment  # noqa: B018  (the property starts the run)
    except Exception as exc:  # wandb.Error, a service that died, a timeout
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"W&B could not start its run ({first}); use --logger csv to train without it, "
                        "or fix W&B and run again", about="logger") from None


def use_base_artifact(loggers: list[Logger], base: dict) -> str | None:
    """Make the model a run starts from (``base``: ``namegen.finetune.Base.record()``) the W&B run's input
    artifact, so that the lineage shows base -> this run: the base's own ``model-<run id>:best`` when it
    was trained under W&B in this project, else a reference to its file (``base_reference``). W&B
    refuses input artifacts offline; the base is in the run's config (``base``) either way. Returns a
    line to print, or None."""
    logger = next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
    if logger is None:
        return None
    run = logger.experiment
    if run.offline:
        return ("W&B: the base model is recorded in this run's config (base); W&B links it as the run's input "
                "artifact only in online runs")
    try:
        if base.get("wandb_run_id"):
            with contextlib.suppress(Exception):  # not in this project (trained elsewhere, or offline and never synced)
                run.use_artifact(f"model-{base['wandb_run_id']}:best")
                return None
        run.use_artifact(base_reference(base))
    except Exception as exc:  # W&B's service or network: the run itself goes on
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"W&B: the base model could not be recorded as the run's input ({first}); training goes on"
    return None


def base_reference(base: dict) -> wandb.Artifact:
    """A model artifact that refers to the base's file (by path and checksum, nothing uploaded)."""
    path = Path(base["path"])
    artifact = wandb.Artifact(f"base-{base['sha256'][:12]}", type="model",
                              description=f"namegen base model {path.name} ({base.get('size')})",
                              metadata={k: base.get(k) for k in ("sha256", "size", "data", "from_notebook")})
    artifact.add_reference(path.resolve().as_uri(), name=path.name)
    return artifact


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run continues ``metrics.csv`` rather than deleting it.

    Rows the interrupted run logged after its checkpoint (epochs after
    ``resume_at[0]``; rows without an epoch, such as learning rates, at steps
    from ``resume_at[1]`` on) are dropped: that work is about to be redone.
    """

    def __init__(self, log_dir: str, resume_at: tuple[int, int] | None):
        self._resume_at = resume_at
        self._failed = False  # a write was refused: the run is stopping, write nothing more
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._resume_at is None or not path.is_file():
            # A new run: training already refused to replace an earlier run unless --overwrite was
            # given, so an old metrics.csv goes without Lightning's "will be deleted" warning.
            path.unlink(missing_ok=True)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if self._keep(r)]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))
        self.metrics_keys = sorted(header)

    def save(self) -> None:
        """Append the rows logged since the last save. A write the OS refuses truncates the file back
        to the rows it held (so ``metrics.csv`` stays a whole CSV), and is one ``WriteFailed``; later
        saves (Lightning's ``finalize`` after the failure) write nothing."""
        if not self.metrics or self._failed:
            return
        path = Path(self.metrics_file_path)
        try:
            self._append(path)
        except (OSError, WriteFailed) as exc:
            self._failed, self.metrics = True, []
            raise exc if isinstance(exc, WriteFailed) else WriteFailed(path, exc) from None
        self.metrics = []

    def _append(self, path: Path) -> None:
        existed = path.is_file()
        if self._record_new_keys() and existed:  # a new column: the whole file again, atomically
            self._rewrite_with_new_header(self.metrics_keys)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        if not existed:
            writer.writeheader()
        writer.writerows(self.metrics)
        size = path.stat().st_size if existed else 0
        try:
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write(text.getvalue())
                f.flush()
        except OSError:
            with contextlib.suppress(OSError):  # back to the rows written before: no partial row
                if existed:
                    os.truncate(path, size)
                else:
                    path.unlink(missing_ok=True)
            raise

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))

    def log_hparams(self, params: dict) -> None:
        try:
            super().log_hparams(params)
        except OSError as exc:
            raise WriteFailed(Path(self.log_dir) / self.NAME_HPARAMS_FILE, exc) from None

    def _keep(self, row: dict) -> bool:
        epoch, step = _number(row.get("epoch")), _number(row.get("step"))
        if epoch is not None:
            return epoch <= self._resume_at[0]
        return step is not None and step < self._resume_at[1]


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class HistoryCSVLogger(CSVLogger):
    """``<out>/metrics.csv``: every row written as it is logged (a kill loses nothing already
    logged), and continued, not restarted, when training resumes."""

    def __init__(self, out_dir: Path, resume_at: tuple[int, int] | None = None):
        super().__init__(save_dir=out_dir, name="", version="", flush_logs_every_n_steps=1)
        self._resume_at = resume_at

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._resume_at)
        return self._experiment


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def finish_wandb(logger: WandbLogger | None, exit_code: int = 0) -> list[Path]:
    """Finish the W&B run of ``logger``. Returns the directories of an offline run (one per
    process that wrote to it, in order: a resumed run has several), empty when online."""
    if logger is None or wandb.run is None:
        return []
    experiment = logger.experiment
    parts = []
    if experiment.settings.mode in ("offline", "dryrun"):
        run_dir = Path(experiment.dir).parent
        parts = sorted(run_dir.parent.glob(f"offline-run-*-{experiment.id}")) or [run_dir]
    wandb.finish(exit_code=exit_code)
    return parts
