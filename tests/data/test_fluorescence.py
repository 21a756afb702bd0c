"""16-bit fluorescence-like data: erased by the old uint8 min-max reading, learned with percentile normalisation,
and unet-eval / unet-predict apply the checkpoint's normalisation (not their data config's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage import io as skio

from unet_train.data.synthetic import make_fluorescence_image
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit

from ..conftest import compose_config

BIN = Path(sys.executable).parent


def old_uint8_reading(array: np.ndarray) -> np.ndarray:
    """What data=folder and unet-predict did before: stretch to uint8 by the image's own min and max."""
    low, high = float(array.min()), float(array.max())
    return ((array - low) * (255.0 / (high - low))).astype(np.uint8)


def write_fluorescence(root: Path, n: int = 20, size: int = 64) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image, mask = make_fluorescence_image(rng, size, size, num_objects=4, contrast=(40.0, 70.0), noise=6.0)
        tifffile.imwrite(root / "images" / f"cell{i:02d}.tif", image)
        tifffile.imwrite(root / "masks" / f"cell{i:02d}.tif", mask)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def test_uint8_min_max_reading_erases_the_objects(tmp_path):
    write_fluorescence(tmp_path, n=3)
    for path in sorted((tmp_path / "images").iterdir()):
        image = tifffile.imread(path)
        mask = tifffile.imread(tmp_path / "masks" / path.name).astype(bool)
        assert image.dtype == np.uint16 and (image == 65535).sum() >= 1  # saturated pixels stretch the range
        fine = image < 65535
        assert 30 < image[mask & fine].mean() - image[~mask & fine].mean() < 80  # tens of counts above ~1000
        old = old_uint8_reading(image)
        assert np.unique(old[image < 65535]).tolist() == [0]  # every object and background pixel: one level


@pytest.mark.slow
def test_percentile_normalisation_learns_16_bit_objects_and_travels_in_the_checkpoint(tmp_path):
    root = tmp_path / "data"
    write_fluorescence(root)
    cfg = compose_config(
        ["data=folder", f"data.root={root}", "data/normalize=percentile", "data.patch_size=64", "data.num_workers=0",
         "data.batch_size=8", "data.samples_per_epoch=48", "trainer=smoke", "trainer.max_epochs=16",
         "model.base_channels=8", "model.depth=2", "optim.lr=3e-3"]
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and much faster on a shared machine
    try:
        metrics = fit(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert metrics["best/val/dice"] > 0.9 and metrics["val/dice"] > 0.9, metrics
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert load_checkpoint(best)["config"]["data"]["normalize"]["scheme"] == "percentile"

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # data=folder's own default is scale_linear (which cannot see these objects): eval takes the checkpoint's.
    evaluated = subprocess.run(
        [str(BIN / "unet-eval"), f"ckpt={best}", "data=folder", f"data.root={root}", "save_predictions=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    eval_metrics = json.loads(next((tmp_path / "outputs" / "eval").glob("*/*/metrics.json")).read_text())
    assert eval_metrics["val/dice"] == pytest.approx(metrics["best/val/dice"], abs=1e-4)

    val_names = [row["name"] for row in eval_metrics["details"]["per_image"]]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in val_names:
        (inputs / f"{name}.tif").write_bytes((root / "images" / f"{name}.tif").read_bytes())
    out = tmp_path / "pred"
    predicted = subprocess.run(
        [str(BIN / "unet-predict"), f"ckpt={best}", f"input={inputs}", f"output={out}", "tile_size=64"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    pred = np.concatenate([skio.imread(out / f"{n}.png").ravel() > 0 for n in val_names])
    truth = np.concatenate([tifffile.imread(root / "masks" / f"{n}.tif").ravel() > 0 for n in val_names])
    assert dice(pred, truth) > 0.9
