"""``unet-eval`` on each split, as a user runs it: which images are scored, and how."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from skimage import io as skio

from unet_train.engine.fit import fit

from .conftest import TINY, compose_config
from .test_cli import BIN, only_run_dir, run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """best.pt of a 1-epoch tiny run on 64 px synthetic images (8 train, 2 val, 2 test)."""
    run_dir = tmp_path_factory.mktemp("trained")
    fit(compose_config([*TINY, "trainer.max_epochs=1"]), run_dir)
    return run_dir / "checkpoints" / "best.pt"


def evaluate(checkpoint: Path, cwd: Path, *overrides: str) -> tuple[dict, Path]:
    run([str(BIN / "unet-eval"), f"ckpt={checkpoint}", *overrides], cwd=cwd)
    out = only_run_dir(cwd / "outputs" / "eval")
    return json.loads((out / "metrics.json").read_text()), out


@pytest.mark.slow
def test_the_train_split_is_scored_image_by_image_whole_and_unaugmented(checkpoint, tmp_path):
    """split=train with samples_per_epoch=20 (batch 4, 32 px crops in training): still the 8 images, once, 64 px."""
    metrics, out = evaluate(checkpoint, tmp_path, "split=train", "+data.samples_per_epoch=20")
    names = [row["name"] for row in metrics["details"]["per_image"]]
    assert names == [f"train-{i:03d}" for i in range(8)] and metrics["details"]["images"] == 8
    predictions = sorted((out / "predictions").iterdir())
    assert [p.stem for p in predictions] == names
    assert skio.imread(predictions[0]).shape == (64, 64)
    assert metrics["train/dice"] == pytest.approx(sum(r["dice"] for r in metrics["details"]["per_image"]) / 8)


@pytest.mark.slow
def test_data_keys_override_the_stored_data_config_as_written(checkpoint, tmp_path):
    """``data.num_val=1`` (no ``+``) changes the checkpoint's data config; a misspelt key is refused in one line."""
    metrics, _ = evaluate(checkpoint, tmp_path, "data.num_val=1", "save_predictions=false")
    assert [row["name"] for row in metrics["details"]["per_image"]] == ["val-000"]
    result = run([str(BIN / "unet-eval"), f"ckpt={checkpoint}", "data.num_vall=1"], cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        "data.num_vall=1: the checkpoint's config has no key data.num_vall; check the spelling, "
        "or write +data.num_vall=1 to add it."
    )
