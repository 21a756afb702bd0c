"""Split configuration: overlapping train/val refused for every dataset, and splits read for scoring."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_train.data import ISBI2012
from unet_train.data.base import SegmentationData, Split
from unet_train.data.splits import format_indices, parse_indices
from unet_train.errors import ConfigError


@pytest.fixture
def small_isbi(tmp_path) -> Path:
    """ISBI-shaped stacks, 30 slices of 16x16: slice i of the volume is filled with the value i."""
    volume = np.repeat(np.arange(30, dtype=np.uint8)[:, None, None], 16, axis=1).repeat(16, axis=2)
    labels = np.where(np.indices((30, 16, 16))[2] < 4, 0, 255).astype(np.uint8)  # membrane: the left 4 columns
    tifffile.imwrite(tmp_path / "train-volume.tif", volume)
    tifffile.imwrite(tmp_path / "train-labels.tif", labels)
    tifffile.imwrite(tmp_path / "test-volume.tif", volume + 100)
    return tmp_path


def test_overlapping_isbi_slices_are_refused_with_the_shared_ones(small_isbi):
    data = ISBI2012(root=str(small_isbi), val_slices="20-29", num_workers=0)  # default train_slices=0-24
    with pytest.raises(ConfigError) as info:
        data.split("train")
    assert str(info.value).startswith(
        "data.train_slices=0-24 and data.val_slices=20-29 share slice(s) 20-24: a model validated on its "
        "training slices scores too well; make the two disjoint."
    )
    with pytest.raises(ConfigError, match="share slice"):
        data.split("val")  # whichever split is read first
    disjoint = ISBI2012(root=str(small_isbi), train_slices="0-19", val_slices="20-29", num_workers=0)
    assert (len(disjoint.split("train")), len(disjoint.split("val"))) == (20, 10)


def test_isbi_slices_listed_twice_and_impossible_folds_are_refused(small_isbi):
    with pytest.raises(ConfigError, match=r"data.train_slices=0-24,3 lists slice\(s\) 3 more than once"):
        ISBI2012(root=str(small_isbi), train_slices="0-24,3", num_workers=0).split("train")
    with pytest.raises(ConfigError, match=r"data.num_folds=1 must be at least 2"):
        ISBI2012(root=str(small_isbi), fold=0, num_folds=1, num_workers=0).split("train")
    with pytest.raises(ConfigError, match=r"data.num_folds=31 is more than the 30 labelled images"):
        ISBI2012(root=str(small_isbi), fold=0, num_folds=31, num_workers=0).split("val")
    folds = [ISBI2012(root=str(small_isbi), fold=k, num_folds=4, num_workers=0) for k in range(4)]
    vals = [set(f.split("val").names) for f in folds]
    assert sum(len(v) for v in vals) == 30 and len(set().union(*vals)) == 30  # every slice validated exactly once
    assert all(not set(f.split("train").names) & v for f, v in zip(folds, vals))


def test_index_ranges_read_and_write_back():
    assert parse_indices("0-2,5", 10, "x") == [0, 1, 2, 5]
    assert format_indices([5, 0, 2, 1, 7, 8]) == "0-2,5,7-8"
    assert parse_indices(format_indices([3, 4, 9]), 10, "x") == [3, 4, 9]


class Listed(SegmentationData):
    """A dataset whose splits are given as (name, fill value) lists: any split configuration, made by hand."""

    def __init__(self, splits: dict[str, list[tuple[str, int]]]) -> None:
        super().__init__(patch_size=4, num_workers=0)
        self.splits = splits

    def load_split(self, split: str) -> Split:
        items = self.splits[split]
        images = [np.full((8, 8), value, dtype=np.uint8) for _, value in items]
        return Split(images, [np.zeros((8, 8), dtype=np.uint8) for _ in items], [name for name, _ in items])


def test_any_dataset_whose_train_and_val_share_an_image_is_refused():
    data = Listed({"train": [("a", 1), ("b", 2), ("c", 3)], "val": [("c", 3), ("d", 4)]})
    data.split("train")
    with pytest.raises(ConfigError) as info:
        data.split("val")
    assert str(info.value) == (
        "The train and val splits of Listed share 1 image(s) (c); "
        "change the split settings so that no image is in both."
    )


def test_identical_pixels_under_other_names_are_reported(caplog):
    data = Listed({"train": [("a", 1), ("b", 2)], "val": [("copy-of-b", 2), ("d", 4)], "test": [("e", 5)]})
    with caplog.at_level(logging.WARNING, logger="unet_train.data.base"):
        data.split("train")
        data.split("test")
        assert not caplog.records
        data.split("val")
    assert [r.getMessage() for r in caplog.records] == [
        "The val and train splits hold 1 identical image(s) (copy-of-b = b): their scores are not independent."
    ]


def test_a_split_read_for_scoring_gives_each_image_once_whole_and_unaugmented(small_isbi):
    """What unet-eval split=train reads: not samples_per_epoch augmented crops with the last batch dropped."""
    import albumentations as A

    data = ISBI2012(
        root=str(small_isbi),
        num_workers=0,
        patch_size=8,
        batch_size=4,
        val_batch_size=3,
        samples_per_epoch=100,
        train_transform=A.Compose([A.RandomCrop(8, 8), A.HorizontalFlip(p=1.0)]),
    )
    training = data.dataloader("train")
    assert sum(len(b["name"]) for b in training) == 100  # the training loader: 100 random 8x8 crops
    scoring = data.dataloader("train", shuffle=False, training=False)
    batches = list(scoring)
    names = [name for batch in batches for name in batch["name"]]
    assert names == [f"train-{i:02d}" for i in range(25)]  # each training slice once, in order
    assert [len(b["name"]) for b in batches] == [3] * 8 + [1]  # val_batch_size, last partial batch kept
    first = batches[0]
    assert first["image"].shape == (3, 1, 16, 16)
    assert first["mask"][0, :, :4].eq(1).all() and first["mask"][0, :, 4:].eq(0).all()  # not flipped
    assert float(first["image"][1].max()) == pytest.approx(1 / 255)  # slice 1 is filled with 1


def test_slices_that_a_fold_would_ignore_are_refused(small_isbi):
    with pytest.raises(ConfigError) as info:
        ISBI2012(root=str(small_isbi), fold=1, val_slices="20-29", num_workers=0)
    assert str(info.value) == (
        "data.fold=1 chooses the slices itself, so data.train_slices=0-24 and data.val_slices=20-29 would be "
        "ignored; set data.fold=null or leave the slices at their defaults (0-24, 25-29)."
    )


def test_a_split_of_too_few_items_says_what_to_do():
    from unet_train.data.splits import random_split

    with pytest.raises(ConfigError, match=r"out of 1: validation takes at least one; add another"):
        random_split(1, 0.2, 0)  # one image in a folder (one volume validates on a slab of itself)
    with pytest.raises(ConfigError, match=r"out of 4: validation takes at least one; lower data.val_fraction"):
        random_split(4, 0.9, 0)


def test_the_typical_split_holds_out_the_items_nearest_the_median_shares():
    from unet_train.data.splits import typical_split

    # median shares: value 0 0.6, value 1 0.4; L1 distances A 0.6, B 0.2, C 0.0, D 0.4, E 0.8
    shares = [{0: 0.9, 1: 0.1}, {0: 0.5, 1: 0.5}, {0: 0.6, 1: 0.4}, {0: 0.4, 1: 0.6}, {0: 1.0}]
    assert typical_split(shares, 0.4) == ([0, 3, 4], [1, 2])
    assert typical_split(shares, 0.2) == ([0, 1, 3, 4], [2])
    assert typical_split(shares, 0.0) == ([0, 1, 2, 3, 4], [])
    # a value one item lacks counts as share 0 there; equal distances go to the earlier item
    assert typical_split([{0: 1.0}, {0: 0.5, 2: 0.5}, {0: 0.5, 2: 0.5}], 0.2) == ([0, 2], [1])
    with pytest.raises(ConfigError, match=r"out of 2: validation takes at least one; lower data.val_fraction"):
        typical_split(shares[:2], 0.8)
