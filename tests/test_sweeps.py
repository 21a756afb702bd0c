"""Sweeps as a user runs them: Hydra multirun, the Optuna sweeper and the launchers, in real processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from unet_train.config import config_dir

from .conftest import TINY
from .test_cli import BIN, run


def only_sweep_dir(work: Path) -> Path:
    sweeps = [p for p in (work / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> tuple[Path, str]:
    """A 2x2 sweep (two models x two seeds) of 2-epoch tiny runs; returns its folder and stdout."""
    work = tmp_path_factory.mktemp("sweep")
    result = run([str(BIN / "unet-train"), "-m", *TINY, "model=vanilla,attention", "seed=0,1"], cwd=work)
    # The summary reads TensorBoard events and draws with matplotlib: their INFO lines stay out of the log.
    assert "][tensorboard][INFO]" not in result.stderr and "][matplotlib" not in result.stderr, result.stderr
    return only_sweep_dir(work), result.stdout


@pytest.mark.slow
def test_multirun_writes_one_folder_per_job_and_a_summary_that_matches(grid_sweep):
    sweep, stdout = grid_sweep
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    combos = [tuple(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-2:]) for job in jobs]
    assert combos == [
        ("model=vanilla", "seed=0"),
        ("model=vanilla", "seed=1"),
        ("model=attention", "seed=0"),
        ("model=attention", "seed=1"),
    ]

    # The callback wrote the summary at the end of the sweep and printed it.
    rows = read_csv(sweep / "summary.csv")
    assert "## Jobs" in stdout and (sweep / "summary.png").read_bytes().startswith(b"\x89PNG")
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    for job, row in zip(jobs, rows):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["epochs"] == 2
        assert f"{row['model']}" in (job / ".hydra" / "overrides.yaml").read_text()
        for key in ("best/val/dice", "best_epoch", "val/dice", "val/pixel_error", "train/loss", "steps"):
            assert float(row[key]) == pytest.approx(metrics[key], rel=1e-12), key


@pytest.mark.slow
def test_grouped_summary_is_the_mean_and_sample_std_over_seeds(grid_sweep):
    sweep, _ = grid_sweep
    grouped = {row["model"]: row for row in read_csv(sweep / "summary_grouped.csv")}
    assert set(grouped) == {"vanilla", "attention"}
    for model, jobs in (("vanilla", (0, 1)), ("attention", (2, 3))):
        dice = [json.loads((sweep / str(n) / "metrics.json").read_text())["val/dice"] for n in jobs]
        a, b = dice
        mean = (a + b) / 2
        assert float(grouped[model]["val/dice mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(grouped[model]["val/dice std"]) == pytest.approx(abs(a - b) / 2**0.5, rel=1e-9, abs=1e-15)
        assert grouped[model]["n"] == "2" and grouped[model]["seeds"] == "0 1"


@pytest.mark.slow
def test_summarize_cli_rebuilds_the_summary(grid_sweep, tmp_path):
    sweep, _ = grid_sweep
    result = run([str(BIN / "unet-summarize"), str(sweep), "--output", str(tmp_path), "--no-plot"], cwd=tmp_path)
    assert result.stdout.strip() == (tmp_path / "summary.md").read_text().strip()
    assert (tmp_path / "summary.csv").read_text() == (sweep / "summary.csv").read_text()


@pytest.mark.slow
def test_optuna_runs_trials_and_reports_their_values(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    run(
        [str(BIN / "unet-train"), *TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1"],
        cwd=tmp_path,
    )
    sweep = only_sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = [json.loads((job / "metrics.json").read_text())["best/val/dice"] for job in jobs]
    assert results["best_value"] == pytest.approx(max(best))  # val/dice: the direction is maximize
    for job in jobs:
        searched = {line.split("=")[0] for line in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())}
        assert {"optim.lr", "data.batch_size", "loss.dice_weight"} <= searched
    rows = read_csv(sweep / "summary.csv")
    assert [float(row["best/val/dice"]) for row in rows] == pytest.approx(best)


def test_optuna_direction_follows_the_monitor():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        for monitor, direction in (("val/dice", "maximize"), ("val/pixel_error", "minimize"), ("val/loss", "minimize")):
            cfg = compose("train", [*TINY, "hparams_search=optuna", f"monitor={monitor}"], return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction
        cfg = compose("train", [*TINY, "hparams_search=optuna", "monitor_mode=min"], return_hydra_config=True)
        assert cfg.hydra.sweeper.direction == "minimize"


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        overrides = [*TINY, "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
        cfg = compose("train", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 720)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_every_job(launcher, tmp_path):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=5"]
    sweep_args = ["trainer.max_epochs=1", "seed=0,1", f"hydra/launcher={launcher}", *extra]
    run([str(BIN / "unet-train"), "-m", *TINY, *sweep_args], cwd=tmp_path)
    sweep = only_sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    assert [json.loads((job / "metrics.json").read_text())["epochs"] for job in jobs] == [1, 1]
    assert [row["seed"] for row in read_csv(sweep / "summary.csv")] == ["0", "1"]
    if launcher == "submitit_local":
        assert list((sweep / ".submitit").rglob("*_result.pkl"))  # each job ran in submitit's own process
