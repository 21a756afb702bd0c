"""The console scripts as a user runs them: real processes, real run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, TINY

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def only_run_dir(base: Path) -> Path:
    runs = [p for p in base.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    run([str(BIN / "unet-train"), *TINY], cwd=work)
    return only_run_dir(work / "outputs")


def test_train_writes_a_complete_run_folder(trained_run):
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert (trained_run / "train.log").read_text().count("epoch 2") == 1
    assert {p.name for p in (trained_run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0 <= metrics["val/dice"] <= 1 and metrics["epochs"] == 2


def test_eval_writes_metrics_and_predictions(trained_run, tmp_path):
    result = run([str(BIN / "unet-eval"), f"ckpt={trained_run / 'checkpoints' / 'best.pt'}"], cwd=tmp_path)
    assert "val/dice" in result.stdout and "val/pixel_error" in result.stdout
    eval_dir = only_run_dir(tmp_path / "outputs" / "eval")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert set(metrics) >= {"val/dice", "val/iou", "val/pixel_error"}
    assert len(metrics["details"]["per_image"]) == 2
    assert sorted(p.name for p in (eval_dir / "predictions").iterdir()) == ["val-000.png", "val-001.png"]
    assert (eval_dir / "per_image.csv").read_text().startswith("name,dice,iou,pixel_error")


def test_resume_continues_in_the_same_run_folder(trained_run, tmp_path):
    run(
        [str(BIN / "unet-train"), f"ckpt={trained_run / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=3"],
        cwd=tmp_path,
    )
    assert not (tmp_path / "outputs").exists()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["steps"] == 6


def test_bad_input_gets_one_clear_message(tmp_path):
    result = run([str(BIN / "unet-train"), "model=nope"], cwd=tmp_path, check=False)
    assert result.returncode != 0 and "Could not find 'model/nope'" in result.stderr
    assert "Available options in 'model'" in result.stderr

    result = run([str(BIN / "unet-train"), "data=isbi", f"data.root={tmp_path / 'missing'}"], cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert f"train-volume.tif not found in {tmp_path / 'missing'}" in result.stderr
    assert "Traceback" not in result.stderr

    fake = tmp_path / "fake.pt"
    fake.write_text("not a checkpoint")
    result = run([str(BIN / "unet-eval"), f"ckpt={fake}"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and f"{fake} is not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_console_scripts_from_an_installed_wheel(tmp_path):
    """Build a wheel, install it into a folder of its own, and run the scripts from elsewhere."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling to build the wheel offline")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO)],
        cwd=tmp_path,
    )
    wheel = next(wheel_dir.glob("unet_train-*.whl"))
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)], cwd=tmp_path)
    assert (site / "unet_train" / "configs" / "train.yaml").is_file()

    env = {**os.environ, "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import unet_train.config as c; print(c.config_dir())"
    assert run([sys.executable, "-c", code], cwd=elsewhere, env=env).stdout.strip() == str(
        site / "unet_train" / "configs"
    )
    run([str(site / "bin" / "unet-train"), *TINY], cwd=elsewhere, env=env)
    ckpt = only_run_dir(elsewhere / "outputs") / "checkpoints" / "best.pt"
    result = run([str(site / "bin" / "unet-eval"), f"ckpt={ckpt}"], cwd=elsewhere, env=env)
    assert "val/dice" in result.stdout


# unet-eval whose scoring waits on each batch (a slow model), so that Ctrl-C lands while the loader's workers run.
SLOW_EVAL = """
import sys, time
import unet_train.engine.evaluate as engine_evaluate
def slow(model, loader, *args, **kwargs):
    for _ in loader:
        print("scoring a batch", file=sys.stderr, flush=True)
        time.sleep(60)
engine_evaluate.evaluate = slow
sys.argv[0] = "unet-eval"
from unet_train.evaluate import main
main()
"""


@pytest.mark.slow
def test_ctrl_c_in_eval_is_one_info_line_and_exit_130(trained_run, tmp_path):
    """Issue 24, item 13: Ctrl-C (SIGINT to the process group, workers included) ends unet-eval at once in one
    INFO line with exit status 130, without a KeyboardInterrupt traceback from it or its workers."""
    import signal

    args = [f"ckpt={trained_run / 'checkpoints' / 'best.pt'}", "data.num_workers=2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EVAL, *args],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As a terminal's foreground job: a suite started in the background (`bash .ci/run &`) passes SIGINT
        # down ignored, and the command rightly keeps it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # until the workers deliver the first batch
        seen.append(line)
        if "scoring a batch" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if "Ctrl-C" in line]
    assert len(lines) == 1 and "[INFO]" in lines[0] and lines[0].endswith("Interrupted by Ctrl-C: unet-eval stopped.")


@pytest.mark.parametrize(
    ("module", "entry", "command"),
    [
        ("unet_train.train", "train", "unet-train"),
        ("unet_train.evaluate", "run_eval", "unet-eval"),
        ("unet_train.predict", "run_predict", "unet-predict"),
        ("unet_train.plan.cli", "plan", "unet-plan"),
        ("unet_train.export.cli", "run_export", "unet-export"),
    ],
)
def test_ctrl_c_in_every_command_is_one_info_line_and_exit_130(module, entry, command, monkeypatch, caplog):
    """Every console script's work runs inside exit_on_user_error, which ends a KeyboardInterrupt in one line."""
    import importlib
    import logging

    from omegaconf import OmegaConf

    from unet_train.cli import exit_on_user_error

    function = getattr(importlib.import_module(module), entry)
    assert function.__code__ is exit_on_user_error(lambda: None).__code__  # the shared wrapper

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", [command])
    with caplog.at_level(logging.INFO, logger="unet_train"), pytest.raises(SystemExit) as info:
        try:
            exit_on_user_error(interrupted)(OmegaConf.create({}))
        except KeyboardInterrupt:  # escaping, it would end the whole test session
            pytest.fail("KeyboardInterrupt escaped exit_on_user_error")
    assert info.value.code == 130
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"Interrupted by Ctrl-C: {command} stopped.")
    ]


@pytest.mark.parametrize("when", ["importing", "loading data"])
def test_ctrl_c_before_the_first_step_is_one_line_and_leaves_no_run_folder(when, tmp_path):
    """Ctrl-C while the console script imported its modules printed a KeyboardInterrupt traceback; while the data
    loaded it left a run folder holding only the log and the config."""
    import signal
    import time

    script = Path(sys.executable).parent / "unet-train"
    args = ["experiment=quickstart", "trainer=smoke", "model.base_channels=4", "model.depth=2", "data.num_workers=0"]
    proc = subprocess.Popen(
        [str(script), *args],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
    )
    assert proc.stderr is not None
    seen = []
    if when == "importing":
        time.sleep(0.3)
    else:
        for line in proc.stderr:
            seen.append(line)
            if "train split" in line:
                break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if "Ctrl-C" in line][-1].endswith(
        "Interrupted by Ctrl-C: unet-train stopped."
    )
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.log")), err


def test_a_user_error_in_a_loader_worker_is_one_line(caplog):
    """A DataError raised in a DataLoader worker (an instance label volume's negative id, read crop by crop) comes
    back with the worker's traceback in its message; the command logs the error's own line."""
    import logging

    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, Dataset

    from unet_train.cli import exit_on_user_error
    from unet_train.errors import DataError

    class Broken(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise DataError("Instance mask m.tif holds negative ids (-4); ids are 0 (background) or more.")

    def load(cfg):
        next(iter(DataLoader(Broken(), num_workers=1)))

    with caplog.at_level(logging.INFO, logger="unet_train"), pytest.raises(SystemExit) as info:
        exit_on_user_error(load)(OmegaConf.create({}))
    assert info.value.code == 2
    assert [r.getMessage() for r in caplog.records] == [
        "Instance mask m.tif holds negative ids (-4); ids are 0 (background) or more."
    ]
