"""k-fold cross-validation: one mechanism for every dataset; folds disjoint and covering; clear range errors."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import io as skio

from unet_train.build import build_data
from unet_train.data import ISBI2012, ImageFolder, SyntheticMembranes
from unet_train.data.splits import kfold_indices
from unet_train.errors import ConfigError

from ..conftest import compose_config


@pytest.mark.parametrize(("total", "k"), [(30, 5), (7, 3), (5, 5), (10, 2)])
def test_kfold_indices_are_disjoint_and_cover_everything(total, k):
    vals = []
    for fold in range(k):
        train, val = kfold_indices(total, fold, k)
        assert sorted(train + val) == list(range(total)) and not set(train) & set(val)
        vals.append(val)
    assert sorted(i for v in vals for i in v) == list(range(total))  # each item validated exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert kfold_indices(7, 1, 3) == ([0, 1, 2, 5, 6], [3, 4])  # contiguous blocks of 3, 2, 2


def check_folds(make, k: int) -> None:
    """Every fold's train and val of a dataset: disjoint, together the ``all`` split, vals covering it once."""
    everything = make(None).split("all").names
    seen = []
    for fold in range(k):
        data = make(fold)
        train, val = data.split("train").names, data.split("val").names
        assert sorted(train + val) == sorted(everything) and not set(train) & set(val)
        seen += val
    assert sorted(seen) == sorted(everything)


def test_synthetic_folds():
    def make(fold):
        return SyntheticMembranes(image_size=32, num_train=5, num_val=2, num_workers=0, fold=fold, num_folds=3)

    check_folds(make, 3)
    data = make(2)
    assert data.split("val").names == ["val-000", "val-001"]  # the last block of train-000..004, val-000..001
    np.testing.assert_array_equal(data.split("val").images[0], make(None).split("val").images[0])


def test_folder_folds(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(7):
        skio.imsave(tmp_path / "images" / f"s{i}.png", np.full((16, 16), i * 10, np.uint8), check_contrast=False)
        skio.imsave(tmp_path / "masks" / f"s{i}.png", np.zeros((16, 16), np.uint8), check_contrast=False)

    def make(fold):
        return ImageFolder(root=str(tmp_path), num_workers=0, fold=fold, num_folds=4)

    check_folds(make, 4)
    assert make(0).split("val").names == ["s0", "s1"]  # sorted stems in blocks of 2, 2, 2, 1
    assert make(3).split("val").names == ["s6"]
    with pytest.raises(ConfigError, match=r"data.num_folds=8 is more than the 7 labelled images of ImageFolder"):
        ImageFolder(root=str(tmp_path), num_workers=0, fold=0, num_folds=8).split("train")


def test_isbi_folds(isbi_root):
    check_folds(lambda fold: ISBI2012(root=str(isbi_root), num_workers=0, fold=fold, num_folds=5), 5)


@pytest.mark.parametrize("data", ["synthetic", "isbi", "folder"])
def test_a_fold_out_of_range_is_refused_with_the_range(data):
    base = [f"data={data}", *(["data.root=x"] if data == "folder" else [])]
    with pytest.raises(ConfigError, match=r"data.fold=5 is out of range for data.num_folds=5; choose a fold in 0..4"):
        build_data(compose_config([*base, "data.fold=5", "data.num_folds=5"]).data)
    with pytest.raises(ConfigError, match="data.num_folds=1 must be at least 2"):
        build_data(compose_config([*base, "data.fold=0", "data.num_folds=1"]).data)
