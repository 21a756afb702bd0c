"""Training end to end with unlabelled pixels, foreground oversampling and a k-fold split."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import io as skio

from unet_train.engine.fit import fit

from ..conftest import compose_config


def write_folder(root, flip_unlabelled: bool) -> None:
    """Six 48x48 images with a small bright square each; the bottom rows are unlabelled (valid/)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "valid"):
        (root / sub).mkdir(parents=True)
    valid = np.full((48, 48), 255, np.uint8)
    valid[36:] = 0
    for i in range(6):
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(4, 40, 2)
        mask[y : y + 5, x : x + 5] = 255
        image = (rng.integers(0, 60, (48, 48)) + (mask > 0) * 150).astype(np.uint8)
        if flip_unlabelled:  # other labels where nothing is labelled
            mask[36:] = 255 - mask[36:]
        skio.imsave(root / "images" / f"im{i}.png", image, check_contrast=False)
        skio.imsave(root / "masks" / f"im{i}.png", mask, check_contrast=False)
        skio.imsave(root / "valid" / f"im{i}.png", valid, check_contrast=False)


@pytest.mark.slow
def test_labels_under_unlabelled_pixels_change_no_training_number(tmp_path):
    results = []
    for flip in (False, True):
        root = tmp_path / f"data{int(flip)}"
        write_folder(root, flip)
        cfg = compose_config(
            [
                "data=folder",
                f"data.root={root}",
                "data.patch_size=32",
                "data.batch_size=2",
                "data.num_workers=0",
                "data.foreground_oversample=0.5",
                "data.fold=2",
                "data.num_folds=3",
                "trainer=smoke",
                "trainer.max_epochs=1",
                "model.base_channels=4",
                "model.depth=2",
            ]
        )
        metrics = fit(cfg, tmp_path / f"run{int(flip)}")
        metrics.pop("time_s"), metrics.pop("validation_s")
        results.append(metrics)
    assert results[0] == results[1]
    assert results[0]["steps"] == 2  # fold 2 of 3 trains on 4 of the 6 images: 2 batches of 2
    assert np.isfinite(results[0]["val/loss"])
