"""Shared fixtures: composing the real configs, shrunk to seconds-long runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from unet_train.config import config_dir
from unet_train.engine.fit import fit

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (python -m pytest -n 2) each worker has a core of its own: one thread per worker, and
    # in the commands the tests start (OMP_NUM_THREADS), rather than two workers of two threads on two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ISBI_ROOT = Path(os.environ.get("UNET_TRAIN_ISBI_ROOT", REPO.parent / "shared" / "data" / "isbi2012"))
DSB_ROOT = Path(os.environ.get("UNET_TRAIN_DSB_ROOT", REPO.parent / "shared" / "data" / "dsb2018-nuclei"))

# A tiny model on tiny synthetic images: a 2-epoch run takes a couple of seconds on 2 CPU cores.
TINY = [
    "experiment=quickstart",
    "trainer=smoke",
    "trainer.channels_last=true",  # no layout measurement (tests/engine/test_autotune.py measures it)
    "trainer.max_epochs=2",
    "trainer.log_every=1",
    "model.base_channels=4",
    "model.depth=2",
    "data.image_size=64",
    "data.patch_size=32",
    "data.num_train=8",
    "data.num_val=2",
    "data.num_test=2",
]


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config from the real ``configs/`` with overrides, as the CLI would."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture(autouse=True, scope="session")
def _session_tuning_cache(tmp_path_factory: pytest.TempPathFactory):
    """Layout measurements (``channels_last: auto``) go to a cache of the test session, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a 2-epoch TINY run, trained once per session (per xdist worker) for the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("tiny")
    fit(compose_config(TINY), run_dir)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture
def isbi_root() -> Path:
    if not (ISBI_ROOT / "train-volume.tif").is_file():
        pytest.skip(f"ISBI 2012 data not found in {ISBI_ROOT} (set UNET_TRAIN_ISBI_ROOT)")
    return ISBI_ROOT


@pytest.fixture
def dsb_subset(tmp_path) -> Path:
    """Three 256 x 256 images of the DSB 2018 nuclei set copied into ``tmp_path`` (skipped where it is absent)."""
    if not (DSB_ROOT / "stats.csv").is_file():
        pytest.skip(f"DSB 2018 nuclei not found in {DSB_ROOT} (set UNET_TRAIN_DSB_ROOT)")
    rows = [line.split(",") for line in (DSB_ROOT / "stats.csv").read_text().splitlines()[1:]]
    stems = [r[0] for r in rows if r[1] == "train" and r[2:4] == ["256", "256"] and r[4] == "grey-dark-background"][:3]
    for sub, suffix, src in (("images", ".png", "images"), ("masks", ".tif", "labels")):
        (tmp_path / sub).mkdir()
        for stem in stems:
            shutil.copy(DSB_ROOT / src / f"{stem}{suffix}", tmp_path / sub / f"{stem}{suffix}")
    return tmp_path


CLOCK_KEYS = ("elapsed", "validation_s", "checkpoint_s", "validation_total_s")  # wall-clock times in a state


def progress(state: dict) -> dict:
    """A checkpoint's ``state`` without its wall-clock times (``elapsed``, the measured validation and checkpoint
    costs), which no rerun repeats."""
    return {key: value for key, value in state.items() if key not in CLOCK_KEYS}
