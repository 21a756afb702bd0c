"""unet-summarize on hand-made sweep folders: tables, grouping over seeds, the plot, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from unet_train.errors import DataError
from unet_train.summarize import find_jobs, grouped_rows, main, mean_std, monitored_curve, parse_overrides, summarize

# (model, seed) -> the job's val/dice; four jobs of a 2x2 sweep.
DICE = {("vanilla", 0): 0.5, ("vanilla", 1): 0.7, ("attention", 0): 0.6, ("attention", 1): 0.9}


def make_job(
    sweep: Path, num: int, overrides: list[str], metrics: dict | None, monitor: str = "val/dice", val_every: int = 1
) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(f"monitor: {monitor}\ntrainer:\n  val_every: {val_every}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    for num, ((model, seed), dice) in enumerate(DICE.items()):
        metrics = {
            "val/dice": dice,
            "val/pixel_error": 1 - dice,
            "train/loss": 0.1 * (num + 1),
            "best/val/dice": dice + 0.01,
            "best_epoch": num + 1,
            "epochs": 5,
            "steps": 10,
            "time_s": 1.5,
        }
        make_job(root, num, ["experiment=quickstart", f"model={model}", f"seed={seed}"], metrics)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_parse_overrides_keeps_values_as_typed():
    assert parse_overrides(["model=attention", "+trainer.max_time=60", "optim.lr=1e-3"]) == {
        "model": "attention",
        "trainer.max_time": "60",
        "optim.lr": "1e-3",
    }


def test_mean_and_sample_std():
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / (2 - 1)))  # n - 1
    assert math.isnan(mean_std([0.5])[1])


def test_grouping_over_seeds_matches_a_hand_computation(sweep):
    group_cols, metrics, rows = grouped_rows(find_jobs(sweep))
    assert group_cols == ["model"]  # experiment= is common to all jobs, seed is what is averaged over
    by_model = {row["model"]: row for row in rows}
    assert set(by_model) == {"vanilla", "attention"}
    for model in ("vanilla", "attention"):
        a, b = DICE[(model, 0)], DICE[(model, 1)]
        mean = (a + b) / 2
        std = math.sqrt((a - mean) ** 2 + (b - mean) ** 2)  # sample std of two values: |a - b| / sqrt(2)
        assert by_model[model]["n"] == 2 and by_model[model]["seeds"] == "0 1"
        assert by_model[model]["val/dice"] == pytest.approx((mean, std))
        assert by_model[model]["best/val/dice"] == pytest.approx((mean + 0.01, std))
    assert metrics[:2] == ["best_epoch", "best/val/dice"]


def test_summary_files_hold_every_job_and_group(sweep):
    markdown = summarize(sweep, plot=False)
    rows = read_csv(sweep / "summary.csv")
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    for row, ((model, seed), dice) in zip(rows, DICE.items()):
        assert (row["model"], row["seed"], row["experiment"]) == (model, str(seed), "quickstart")
        assert float(row["val/dice"]) == dice and float(row["best/val/dice"]) == pytest.approx(dice + 0.01)

    grouped = {row["model"]: row for row in read_csv(sweep / "summary_grouped.csv")}
    assert float(grouped["attention"]["val/dice mean"]) == pytest.approx(0.75)
    assert float(grouped["attention"]["val/dice std"]) == pytest.approx(0.15 * math.sqrt(2))

    assert (sweep / "summary.md").read_text() == markdown
    assert "Common overrides: experiment=quickstart." in markdown
    assert "| attention | 2 | 0 1 | 3.5000 ± 0.7071 | 0.7600 ± 0.2121 |" in markdown  # best_epoch, best/val/dice
    assert "| 3 | attention | 1 | 4 | 0.9100 | 0.9000 |" in markdown


def test_unfinished_job_gets_an_empty_row_and_no_group_weight(sweep):
    make_job(sweep, 4, ["experiment=quickstart", "model=vanilla", "seed=2"], None)
    summarize(sweep, plot=False)
    rows = read_csv(sweep / "summary.csv")
    assert rows[-1]["job"] == "4" and rows[-1]["val/dice"] == ""
    grouped = {row["model"]: row for row in read_csv(sweep / "summary_grouped.csv")}
    assert grouped["vanilla"]["n"] == "2"  # the unfinished job does not count


def test_monitored_curve_and_plot_from_tensorboard_events(tmp_path):
    job = make_job(tmp_path / "sweep", 0, ["seed=0"], {"epochs": 5, "best/val/dice": 0.8}, val_every=2)
    writer = SummaryWriter(str(job / "tensorboard"))
    for step, value in ((10, 0.2), (20, 0.5), (25, 0.8)):  # validations after epochs 2, 4 and the last (5)
        writer.add_scalar("val/dice", value, step)
        writer.add_scalar("val/loss", 1 - value, step)
    writer.close()
    (loaded,) = find_jobs(tmp_path / "sweep")
    assert monitored_curve(loaded) == ([2.0, 4.0, 5.0], pytest.approx([0.2, 0.5, 0.8]))

    summarize(tmp_path / "sweep")
    png = (tmp_path / "sweep" / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_cli_writes_to_output_and_prints_the_tables(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--output", str(out), "--no-plot"]) == 0
    assert "## Mean ± sample std (n - 1) over seeds" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.md", "summary_grouped.csv"]


def test_bad_folders_get_one_clear_message(tmp_path, caplog):
    with pytest.raises(DataError, match=f"No job folders .* under {tmp_path}"):
        find_jobs(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'} is not a folder; pass a sweep folder" in caplog.text
