"""compare.py end to end on tiny data, the metrics.csv reader, and W&B logging of the report."""

import json
import math
import re
from pathlib import Path

import pytest

from conftest import run_cli
from cli_helpers import run
from namegen.compare import TABLE_COLUMNS, CompareOptions, compare, read_history
from namegen.training import TrainOptions


def table_rows(report: str) -> list[list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert [c.strip() for c in header.strip("|").split("|")] == TABLE_COLUMNS
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in rows]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, real_names):
    """compare.py --train small medium on 300 names, two short epochs each, in a fresh process."""
    tmp = tmp_path_factory.mktemp("compare")
    data = tmp / "names.txt"
    data.write_text("\n".join(real_names.read_text().splitlines()[:300]) + "\n")
    proc = run_cli(
        "compare.py", "--train", "small", "medium", "--data", str(data), "--max-epochs", "2",
        "--limit-train-batches", "2", "--accelerator", "cpu", "--logger", "csv", "--runs-dir", "runs",
        "--reports-dir", "reports", "--date", "today", "-n", "200", cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


@pytest.mark.slow
def test_compare_writes_a_figure_and_a_row_per_size(compared):
    tmp, proc = compared
    out = tmp / "reports" / "today"
    png = (out / "loss_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    report = (out / "report.md").read_text()
    assert "![train and validation loss per epoch](loss_curves.png)" in report
    rows = table_rows(report)
    assert [r[0] for r in rows] == ["small", "medium"]
    assert [r[1] for r in rows] == ["79,772", "675,996"]
    for row in rows:
        assert row[2] == "2 (best 2)" or row[2] == "2 (best 1)"
        assert row[5] != "n/a" and row[6] != "n/a"  # wall time and tokens/s were recorded by training
        names = row[-1].split(", ")
        assert len(names) == 10 and all(names)
    assert proc.stdout.rstrip().endswith("report: reports/today/report.md")


@pytest.mark.slow
def test_the_report_names_files_relative_to_where_it_ran(compared):
    """Nothing in reports/<date>/ holds the absolute paths of the machine that made it: the trained
    checkpoints and the data file are named relative to the directory compare.py ran in."""
    tmp, proc = compared
    out = tmp / "reports" / "today"
    report = (out / "report.md").read_text()
    assert "- small: `runs/small/best.ckpt` (" in report and "- medium: `runs/medium/best.ckpt` (" in report
    assert "validation split of names.txt (seed 42)" in report
    for path in out.iterdir():
        if path.suffix in (".md", ".json", ".txt"):
            text = path.read_text()
            assert str(tmp) not in text and str(tmp.resolve()) not in text, path.name
    assert json.loads((out / "evaluation-small.json").read_text())["checkpoint"] == "runs/small/best.ckpt"
    assert "evaluating runs/small/best.ckpt ..." in proc.stdout


@pytest.mark.slow
def test_reported_loss_is_the_training_best_val_loss(compared):
    """Evaluating best.ckpt on its rebuilt validation split gives back the val/loss training logged."""
    tmp, _ = compared
    rows = table_rows((tmp / "reports/today/report.md").read_text())
    for row in rows:
        hist = read_history(tmp / "runs" / row[0] / "metrics.csv")
        assert float(row[3]) == pytest.approx(min(hist.val.values()), abs=2e-4)
        assert hist.epochs == 2 and set(hist.train) == {0, 1}
        assert hist.wall_s > 0 and hist.train_s > 0 and hist.train_tokens > 0


@pytest.mark.slow
def test_compare_checkpoints_logs_to_an_active_wandb_run(compared, tmp_path, monkeypatch):
    import wandb
    from test_train_sample import read_wandb_history

    tmp, _ = compared
    ckpts = [str(tmp / "runs" / size / "best.ckpt") for size in ("small", "medium")]
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Compare\n<!-- compare:start -->\nold\n<!-- compare:end -->\n\n## Tests\n")
    opts = CompareOptions(ckpt=[Path(c) for c in ckpts], reports_dir=tmp_path / "r", date="d", num_samples=50,
                          training=TrainOptions(logger="none"), update_readme=readme, labels=["S", "M"])
    # wandb.init exports WANDB_SERVICE; later tests' subprocesses must not inherit it
    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.delenv("WANDB_SERVICE")
    run = wandb.init(project="namegen-test", mode="offline", dir=str(tmp_path))
    try:
        report = compare(opts)
    finally:
        run_dir = run.dir
        wandb.finish()
        wandb.teardown()
    assert [r[0] for r in table_rows(report.read_text())] == ["S", "M"]
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n") and text.endswith("<!-- compare:end -->\n\n## Tests\n")
    assert table_rows(text) == table_rows(report.read_text()) and "(r/d/loss_curves.png)" in text
    rows = read_wandb_history(Path(run_dir).parent)
    logged = {k: v for r in rows for k, v in r.items()}
    assert logged.get("compare/table/_type") == "table-file" and logged.get("compare/table/nrows") == 2
    assert logged.get("compare/loss_curves/_type") == "image-file"


@pytest.mark.slow
def test_evaluate_cli_on_a_trained_checkpoint(compared, capsys):
    tmp, _ = compared
    ckpt = tmp / "runs" / "small" / "best.ckpt"
    assert run("evaluate", ["--ckpt", str(ckpt), "-n", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hist = read_history(tmp / "runs" / "small" / "metrics.csv")
    assert result["likelihood"]["nll"] == pytest.approx(min(hist.val.values()), abs=2e-4)
    assert result["likelihood"]["n_names"] == 60  # the 20% validation split of 300 names
    assert result["samples"]["n"] == 30 and len(result["examples"]) == 10


def test_read_history_of_a_hand_written_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,time/train_s,time/train_tokens,time/wall_s,train/loss,train/tokens_per_s,val/loss,val/ppl\n"
        "0,9,,,,,,2.5,12.18\n"
        "0,9,1.5,3000.0,2.0,2.8,2000.0,,\n"
        ",19,,,,,,,\n"
        "1,19,,,,,,2.25,9.49\n"
        "1,19,3.0,6000.0,4.0,2.4,2000.0,,\n"
    )
    hist = read_history(path)
    assert hist.val == {0: 2.5, 1: 2.25} and hist.train == {0: 2.8, 1: 2.4}
    assert hist.epochs == 2 and hist.best_epoch == 1
    assert (hist.wall_s, hist.train_s, hist.train_tokens) == (4.0, 3.0, 6000.0)
    assert hist.tokens_per_s == pytest.approx(2000.0)


def test_compare_bad_input_is_one_line(tmp_path, capsys):
    assert run("compare", []) == 2
    assert capsys.readouterr().err.startswith("error: nothing to compare")
    assert run("compare", ["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ckpt" in err
    (tmp_path / "README.md").write_text("# no markers\n")
    assert run("compare", ["--train", "small", "--update-readme", str(tmp_path / "README.md")]) == 2
    assert "<!-- compare:start -->" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run("compare", ["--train", "huge"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error:")


def test_a_run_cut_short_says_so_in_the_epochs_column():
    from namegen.compare import History, Row
    from namegen.evaluate import Evaluation, Likelihood, SampleStats

    stats = SampleStats(n=10, new=0.9, train_copy=0.1, val_only=0.0, duplicate=0.0, empty=0.0, mean_len=6.0,
                        data_mean_len=6.1, first_letter_tv=0.1, first_letter_tv_noise=0.2, copy_excess=float("nan"))
    ev = Evaluation(checkpoint="x/best.ckpt", size="medium", parameters=675_996, config={"max_epochs": 40},
                    evaluated_on="v", likelihood=Likelihood(nll=2.0, ppl=math.exp(2.0), n_names=5, n_chars=30),
                    samples=stats, examples=["ann"] * 10)
    hist = History(train={0: 2.5, 1: 2.2, 2: 2.1}, val={0: 2.4, 1: 2.0, 2: 2.05}, wall_s=3725.0, train_s=100.0,
                   train_tokens=150_000.0)
    cells = Row("medium", ev, hist).cells()
    assert cells[2] == "3 of 40 (best 2)" and cells[5] == "1h 02m 05s" and cells[6] == "1,500"
    assert Row("medium", ev, None).cells()[2:7:3] == ["n/a", "n/a"]


def test_the_recipe_line_names_every_regulariser_that_is_set():
    from namegen.compare import recipe
    from namegen.config import load_config

    line = recipe(load_config("small").replace(variational_dropout=0.6, ema_decay=0.9995).to_dict())
    assert "variational_dropout 0.6" in line and "ema_decay 0.9995" in line
    assert "weight_drop" not in line  # left out when off
