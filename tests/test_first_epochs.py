"""Speed work keeps the results: at a fixed seed, the first epochs of every shipped config give the losses
recorded before it (tests/fixtures/first_epochs.json), within float tolerance.

Each size trains as ``namegen train --model SIZE`` does (its config, precision, weight average,
clipping, schedule) for 2 epochs of 12 batches, with metrics.csv as the only logger. The losses
compared: ``train/loss_step`` (every 10th step), each epoch's ``train/loss`` and ``val/loss`` (the
weight average's, over every validation name: validation batches are larger than training's, so a
count of batches would not name the same names from one version to the next). Rewrite the fixture
only for a change meant to change results, with

    python tests/test_first_epochs.py        # records with the code as it is, into tests/fixtures/
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from namegen.training import TrainOptions, train

FIXTURE = Path(__file__).parent / "fixtures" / "first_epochs.json"
SIZES = ("small", "medium", "large")
EPOCHS, BATCHES, VAL_BATCHES = 2, 12, 1.0  # 1.0: all of the validation names
KEYS = ("train/loss_step", "train/loss", "val/loss")


def first_epochs(size: str, out: Path, precision: str | None = None) -> dict[str, list[float]]:
    """The losses of a short run of the shipped config, in the order metrics.csv logged them."""
    train(TrainOptions(model=size, max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=VAL_BATCHES,
                       out=out, logger="csv", precision=precision))
    losses: dict[str, list[float]] = {key: [] for key in KEYS}
    with open(out / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key in KEYS:
                if row.get(key):
                    losses[key].append(float(row[key]))
    return losses


@pytest.mark.parametrize("size", SIZES)
def test_first_epochs_give_the_recorded_losses(size, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture = json.loads(FIXTURE.read_text())
    recorded = fixture["sizes"][size]
    # the precision the losses were recorded in (each size's default there), whatever this CPU's default is
    got = first_epochs(size, tmp_path / size, precision=fixture["precision"][size])
    assert {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in recorded.items()}
    for key in KEYS:
        # float32 and bf16 (medium, large) runs: reduction order may differ, results may not
        assert got[key] == pytest.approx(recorded[key], rel=2e-4, abs=2e-4), key


def _record() -> None:
    import tempfile

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    from namegen.config import load_config
    from namegen.training import default_precision

    sizes, precision = {}, {size: default_precision("cpu", load_config(size))[0] for size in SIZES}
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            sizes[size] = first_epochs(size, Path(tmp) / size, precision=precision[size])
    FIXTURE.write_text(json.dumps({"recorded_at": commit, "epochs": EPOCHS, "batches": BATCHES,
                                   "val_batches": VAL_BATCHES, "sizes": sizes, "precision": precision}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    sys.exit(_record())
