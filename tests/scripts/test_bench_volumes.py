"""scripts/bench_volumes.py and scripts/baseline_plain3d.py: the data each arm sees and how the plain page predicts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.inference.tiff_volumes import tiff_spacing

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import baseline_plain3d
        import bench_volumes

        yield baseline_plain3d, bench_volumes
    finally:
        sys.path.remove(str(SCRIPTS))


def test_tiled_prediction_stitches_tiles_in_place(scripts):
    # A pointwise net predicts each voxel alone, so tiles of 8 px with a 2 px margin must give exactly the
    # whole volume's argmax; a tile written at a wrong offset or cut at the margin would not.
    plain3d, _ = scripts
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 3, 1)
    volume = np.random.default_rng(0).random((5, 19, 21)).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(volume)[None, None])[0].argmax(0).numpy()
    assert len(np.unique(whole)) >= 2  # not one class everywhere
    np.testing.assert_array_equal(plain3d.predict(model, volume, tile=8, margin=2), whole)


def test_crops_keep_image_and_mask_aligned_on_the_grid(scripts):
    plain3d, _ = scripts
    mask = np.random.default_rng(1).integers(0, 3, (13, 20, 20))
    image, padded = plain3d.pad_to_grid(mask.astype(np.float32)), plain3d.pad_to_grid(mask)
    assert padded.shape == (16, 24, 24)
    x, y = plain3d.crops([image], [padded], np.random.default_rng(0), (16, 16, 16), 6)
    assert x.shape == (6, 1, 16, 16, 16) and y.shape == (6, 16, 16, 16)
    torch.testing.assert_close(x[:, 0], y.float())  # the same flips and turns on both


def test_ct_volumes_and_planes_written_alike(scripts, tmp_path):
    _, bench = scripts
    folder = bench.prepare("ct", tmp_path, side=64)
    names = sorted(p.name for p in (folder / "vol" / "images").glob("*.tif"))
    assert len(names) == 8 and len(list((folder / "vol" / "test" / "masks").glob("*.tif"))) == 2
    with tifffile.TiffFile(folder / "vol" / "test" / "images" / "ct_test0.tif") as tif:
        scale, units = tiff_spacing(tif)
    # a 1/1 resolution tag reads as "none stated", which the volume reader takes as 1 too
    assert scale["z"] == pytest.approx(3.0) and scale.get("y", 1.0) == scale.get("x", 1.0) == 1.0
    assert units["z"] == "millimeter"
    for sub in ("images", "masks"):
        volume = tifffile.imread(folder / "vol" / "test" / sub / "ct_test0.tif")
        planes = sorted((folder / "planes" / "test" / sub).glob("ct_test0_z*.tif"))
        assert volume.shape == (20, 64, 64)
        np.testing.assert_array_equal(np.stack([tifffile.imread(p) for p in planes]), volume)
    image, mask = (tifffile.imread(folder / "vol" / s / "ct0.tif") for s in ("images", "masks"))
    assert set(np.unique(mask).tolist()) <= {0, 1, 2} and (mask == 1).any()
    # organs are brighter than the body around them (contrast the nets can learn), air the darkest
    body = (image > 60) & (mask == 0)
    assert image[mask == 1].mean() > image[body].mean() + 5 and image[~body & (mask == 0)].mean() < 60


def test_scoring_counts_a_class_missing_from_the_test_volume(scripts, tmp_path):
    # Five classes learnt, class 4 only in the training masks: an all-background prediction scores 1 on
    # class 4 and 0 on classes 1-3, 0.25 as unet-eval gives; counting classes from the test masks gave 0.
    _, bench = scripts
    for sub, top in (("masks", 4), ("test/masks", 3)):
        (tmp_path / sub).mkdir(parents=True)
        tifffile.imwrite(tmp_path / sub / "v.tif", np.arange(top + 1, dtype=np.uint8).reshape(-1, 1, 1) * np.ones(
            (1, 2, 2), np.uint8))  # fmt: skip
    truth = tifffile.imread(tmp_path / "test" / "masks" / "v.tif").astype(np.int64)
    classes = bench.count_classes(tmp_path)
    assert classes == 5
    assert bench.score_volumes([np.zeros_like(truth)], [truth], classes) == [0.25]
    assert bench.score_volumes([truth], [truth], classes) == [1.0]
    binary = np.array([[[0, 255], [255, 0]]], np.uint8)  # a binary net's labels as unet-eval writes them
    assert bench.score_volumes([binary], [(binary > 0).astype(np.int64)], 2) == [1.0]
