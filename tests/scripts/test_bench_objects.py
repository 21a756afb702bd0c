"""scripts/bench_objects.py prepares instance folders (ISBI cells from its membrane labels, a binary twin) and
scores every arm's label files by one function."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))  # the script imports bench_matrix beside it, as when run directly
    try:
        spec = importlib.util.spec_from_file_location("bench_objects", SCRIPTS / "bench_objects.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_isbi_cells_are_the_membrane_free_components(bench):
    # 255 = cell, 0 = membrane; cells touching only diagonally are two cells (4-connectivity, as the ISBI metric)
    labels = np.array(
        [
            [255, 255, 0, 255],
            [255, 255, 0, 255],
            [0, 0, 0, 0],
            [255, 0, 255, 255],
            [0, 255, 0, 0],
        ],
        dtype=np.uint8,
    )
    expected = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 0], [3, 0, 4, 4], [0, 5, 0, 0]])
    cells = bench.cells_of(labels)
    assert cells.dtype == np.uint16
    np.testing.assert_array_equal(cells, expected)


def test_write_pair_writes_ids_and_a_binary_twin(bench, tmp_path):
    ids = np.array([[0, 3, 3], [300, 0, 1]], dtype=np.uint16)  # ids past 255 survive (uint16)
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    bench.write_pair(tmp_path, "test", "a", image, ids)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "instances/test/masks/a.tif"), ids)
    twin = np.asarray(Image.open(tmp_path / "binary/test/masks/a.png"))
    np.testing.assert_array_equal(twin, [[0, 255, 255], [255, 0, 255]])
    for kind in ("instances", "binary"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / kind / "test/images/a.png")), image)


def test_prepare_isbi_holds_out_the_last_slices(bench, tmp_path):
    if not (bench.SHARED / "isbi2012/train-volume.tif").is_file():  # the script reads ../shared beside the checkout
        pytest.skip(f"ISBI 2012 data not found in {bench.SHARED / 'isbi2012'}")
    root = bench.prepare("isbi", tmp_path, limit=2)
    train = sorted(p.name for p in (root / "instances/masks").iterdir())
    test = sorted(p.name for p in (root / "instances/test/masks").iterdir())
    assert train == ["slice00.tif", "slice01.tif"] and test == [f"slice{i}.tif" for i in range(25, 30)]
    labels = tifffile.imread(bench.SHARED / "isbi2012/train-labels.tif", key=27)
    ids = tifffile.imread(root / "instances/test/masks/slice27.tif")
    assert ids.max() > 100 and (ids == 0).sum() == (labels == 0).sum()  # a hundred cells, membranes 0
    assert (root / "done").exists() and bench.prepare("isbi", tmp_path, limit=2) == root  # written once


def test_score_means_over_the_test_images(bench, tmp_path):
    truth, labels = tmp_path / "truth", tmp_path / "labels"
    truth.mkdir()
    labels.mkdir()
    two = np.array([[1, 1, 0, 2, 2]], dtype=np.uint16)
    tifffile.imwrite(truth / "a.tif", two)
    tifffile.imwrite(labels / "a_labels.tif", two)  # perfect: F1 1
    tifffile.imwrite(truth / "b.tif", two)
    tifffile.imwrite(labels / "b_labels.tif", np.array([[1, 1, 0, 0, 0]], dtype=np.uint16))  # one missed: F1 2/3
    scores = bench.score(labels, truth)
    assert scores["f1_50"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    assert scores["map"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-4)
    (labels / "b_labels.tif").unlink()
    with pytest.raises(SystemExit, match="no prediction .*b_labels.tif for the test image b"):
        bench.score(labels, truth)
