"""Instance labels in data=folder: ids read and renumbered, detected, augmented as ids, the target drawn after."""

from __future__ import annotations

import logging

import albumentations as A
import numpy as np
import pytest
import tifffile
import torch

from unet_train.data import ImageFolder
from unet_train.data.instances import InstanceTarget, encode_instances, looks_like_instances
from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.objects.targets import boundary_target

from ..objects.discs import touching_discs, write_discs


def test_ids_are_renumbered_without_255_and_ignored_pixels_become_255():
    mask = np.array([[0, 7, 7, 900], [70000, 70000, 5, 3]], dtype=np.uint32)
    ids = encode_instances(mask, "m.tif", ignore_index=5)
    assert ids.dtype == np.float32
    assert ids.tolist() == [[0, 2, 2, 3], [4, 4, IGNORE_INDEX, 1]]  # 3 < 7 < 900 < 70000 in order
    many = np.arange(300, dtype=np.uint16).reshape(15, 20)  # 299 objects: id 255 is skipped, none lost
    out = encode_instances(many, "m.tif")
    assert IGNORE_INDEX not in out and len(np.unique(out)) == 300 and out.max() == 300


def test_negative_ids_are_refused_in_one_line():
    with pytest.raises(DataError, match=r"^Instance mask m.tif holds negative ids \(-2\); ids are 0"):
        encode_instances(np.array([[0, -2]], dtype=np.int32), "m.tif")


@pytest.mark.parametrize(("value", "shown"), [(2.5, "2.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_float_ids_that_are_not_whole_numbers_are_refused_in_one_line(value, shown):
    """A float label volume (or image) of ids: whole numbers are ids; 2.5 was cut to id 2 and NaN to a negative id."""
    mask = np.array([[0.0, 3.0], [7.0, value]], dtype=np.float32)
    with pytest.raises(DataError) as caught:
        encode_instances(mask, "m.tif")
    assert str(caught.value) == (
        f"Instance mask m.tif holds {shown}, not a whole number; object ids must be whole numbers (a label image "
        "resampled with interpolation blends ids: resample it by nearest neighbour)."
    )
    assert encode_instances(mask[:, :1], "m.tif").tolist() == [[0], [1]]  # whole floats are ids


def test_auto_detects_wide_masks_with_many_values_only():
    many = np.arange(20, dtype=np.uint16).reshape(4, 5)
    assert looks_like_instances([many, np.zeros((4, 5), np.uint16)])
    assert not looks_like_instances([many.astype(np.uint8)])  # 8-bit: class indices (or data.labels=instances)
    assert not looks_like_instances([np.array([[0, 1, 2]], dtype=np.uint16)])  # 3 classes in a 16-bit TIFF


def test_the_target_follows_the_augmented_ids(tmp_path):
    """A rotation resamples the ids by nearest neighbour: no blended id appears, and the 3-class target is the
    boundary target of exactly the ids the item carries."""
    root = write_discs(tmp_path, 3)
    rotate = A.Compose([A.Rotate(limit=(30, 30), p=1.0)])
    data = ImageFolder(str(root), labels="instances", num_classes="auto", val_fraction=0.0, num_workers=0,
                       train_transform=rotate, patch_size=64)  # fmt: skip
    assert data.num_classes == 3 and data.instance_target == "boundary"
    item = data.dataset("train")[0]
    ids, target = item["instances"].numpy(), item["mask"].numpy()
    original = tifffile.imread(root / "masks" / "d00.tif")
    assert set(np.unique(ids)) <= set(np.unique(original)) and len(np.unique(ids)) == len(np.unique(original))
    np.testing.assert_array_equal(target, boundary_target(ids))
    assert set(np.unique(target)) == {0, 1, 2}


def test_touching_objects_get_a_boundary_between_them():
    _, labels = touching_discs(np.random.default_rng(0))
    target, ids, _ = InstanceTarget("boundary")(labels.astype(np.float32))
    # the first pair (ids 1 and 2) touches: where they meet, both sides are boundary
    rows = (ids[:-1] == 1) & (ids[1:] == 2) | (ids[:-1] == 2) & (ids[1:] == 1)
    cols = (ids[:, :-1] == 1) & (ids[:, 1:] == 2) | (ids[:, :-1] == 2) & (ids[:, 1:] == 1)
    assert rows.sum() + cols.sum() > 5
    assert (target[:-1][rows] == 2).all() and (target[1:][rows] == 2).all()
    assert (target[:, :-1][cols] == 2).all() and (target[:, 1:][cols] == 2).all()


def test_unlabelled_pixels_stay_unlabelled_in_the_target(tmp_path):
    root = write_discs(tmp_path, 2)
    (root / "valid").mkdir()
    valid = np.ones((64, 64), np.uint8)
    valid[:, :8] = 0
    tifffile.imwrite(root / "valid" / "d00.tif", valid)
    data = ImageFolder(str(root), labels="instances", num_classes="auto", val_fraction=0.0, num_workers=0,
                       patch_size=64)  # fmt: skip
    item = data.dataset("train")[0]
    assert (item["mask"][:, :8] == IGNORE_INDEX).all() and (item["instances"][:, :8] == 0).all()


def test_labels_auto_says_what_it_found(tmp_path, caplog):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(root / "images" / f"a{i}.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        tifffile.imwrite(root / "masks" / f"a{i}.tif", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) // 40)
    with caplog.at_level(logging.INFO, logger="unet_train.data.folder"):
        data = ImageFolder(str(root), num_classes="auto", in_channels="auto", num_workers=0, val_fraction=0.5)
        assert data.num_classes == 3 and data.labels == "instances"
    assert "data.labels=auto: instances (uint16 masks, 25 to 25 object ids per image) -> data.target=boundary" in (
        caplog.text
    )


def test_a_number_of_classes_keeps_masks_as_classes():
    data = ImageFolder("unused", num_classes=2, num_workers=0)
    assert data.labels == "classes" and data.instance_target is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": "instances", "num_classes": 2}, "data.num_classes=2 does not fit data.labels=instances with "
         "data.target=boundary, whose model predicts 3 classes; set data.num_classes=3 or auto."),
        ({"labels": "objects"}, "data.labels='objects' must be classes"),
        ({"labels": "instances", "target": "affinities", "affinity_offsets": [[-1, 0], [0, 0]]},
         "data.affinity_offsets holds [0, 0]; each offset is a list of 2 (or 3, volumes) whole numbers, not all 0"),
        ({"labels": "instances", "target": "affinities", "affinity_offsets": [[-1, 0], [-1.5, 0]]},
         "data.affinity_offsets holds [-1.5, 0]; each offset"),
        ({"labels": "instances", "target": "affinities", "affinity_offsets": [[-1, 0], [0, -1, 0]]},
         "data.affinity_offsets holds [0, -1, 0]; each offset"),
        ({"labels": "instances", "target": "affinities", "affinity_offsets": [[-1, 0], [-1, 0]]},
         "data.affinity_offsets lists an offset twice ([[-1, 0], [-1, 0]]); give each once."),
        ({"labels": "instances", "target": "affinities", "affinity_offsets": []},
         "data.affinity_offsets=[] lists no offset; give at least one, e.g. [[-1, 0], [0, -1]], or leave it out for "
         "the default [[-1, 0], [0, -1], [-3, 0], [0, -3]]."),
        ({"labels": "instances", "target": "distance", "num_classes": 3}, "data.num_classes=3 does not fit "
         "data.labels=instances with data.target=distance, whose model predicts 2 classes; set data.num_classes=2"),
        ({"labels": "instances", "target": "centroids"}, "data.target='centroids' is not known; choose one"),
    ],
)  # fmt: skip
def test_inconsistent_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        ImageFolder("unused", num_workers=0, **kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_dsb_labels_are_detected_as_instances(dsb_subset):
    data = ImageFolder(str(dsb_subset), num_classes="auto", in_channels="auto", num_workers=0, val_fraction=0.34)
    assert data.labels == "instances" and data.in_channels == 3
    item = data.dataset("val")[0]
    truth = tifffile.imread(next((dsb_subset / "masks").glob(f"{item['name']}.tif")))
    assert len(np.unique(item["instances"])) == len(np.unique(truth))


def test_the_distance_target_follows_the_augmented_ids(tmp_path):
    """data.target=distance: the mask is the foreground, the distance map that of exactly the rotated ids."""
    from unet_train.objects.targets import distance_target

    root = write_discs(tmp_path, 3)
    rotate = A.Compose([A.Rotate(limit=(30, 30), p=1.0)])
    data = ImageFolder(str(root), labels="instances", target="distance", num_classes="auto", val_fraction=0.0,
                       num_workers=0, train_transform=rotate, patch_size=64)  # fmt: skip
    assert data.num_classes == 2 and data.instance_target == "distance"
    item = data.dataset("train")[0]
    ids = item["instances"].numpy()
    np.testing.assert_array_equal(item["mask"].numpy(), (ids > 0).astype(np.int64))
    assert item["distance"].dtype == torch.float32
    np.testing.assert_allclose(item["distance"].numpy(), distance_target(ids))


def test_device_augmentation_of_instance_labels_is_refused_in_one_line(tmp_path):
    from unet_train.build import resolve_data_config

    from ..conftest import compose_config

    root = write_discs(tmp_path, 3)
    cfg = compose_config(["data=folder", f"data.root={root}", "data.labels=instances", "data.target=distance"])
    data = ImageFolder(str(root), labels="instances", target="distance", num_workers=0, val_fraction=0.0,
                       device_augment=lambda images, masks: (images, masks))  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        resolve_data_config(cfg, data)
    assert str(caught.value).startswith("data.device_augment augments masks after the instance target was drawn")
    assert "\n" not in str(caught.value)


def test_an_affinity_offset_as_long_as_the_training_crop_is_refused_in_one_line(tmp_path):
    from tests.objects.discs import write_discs

    root = write_discs(tmp_path / "discs", 4)
    kwargs = {"labels": "instances", "target": "affinities", "patch_size": 8, "num_workers": 0}
    data = ImageFolder(str(root), affinity_offsets=[[-1, 0], [0, -8]], **kwargs)
    with pytest.raises(ConfigError) as caught:
        data.dataset("train")
    assert str(caught.value) == (
        "data.affinity_offsets holds [0, -8], which reaches 8 px along an axis, as far as or beyond the training "
        "crop data.patch_size=8: no pair of a crop's pixels is that far apart, so its channel would learn nothing; "
        "keep offsets under 8 px or raise data.patch_size."
    )
    assert len(data.dataset("val")) > 0  # whole validation images are not cropped
    ImageFolder(str(root), affinity_offsets=[[-1, 0], [0, -7]], **kwargs).dataset("train")  # 7 px fit in 8


def test_an_affinity_offset_of_three_axes_on_2d_images_is_refused_in_one_line(tmp_path):
    from tests.objects.discs import write_discs

    root = write_discs(tmp_path / "discs", 4)
    kwargs = {"labels": "instances", "target": "affinities", "patch_size": 16, "num_workers": 0}
    data = ImageFolder(str(root), affinity_offsets=[[-1, 0, 0], [0, -1, 0]], **kwargs)
    for split in ("train", "val"):  # a traceback from the first batch before
        with pytest.raises(ConfigError) as caught:
            data.dataset(split)
        assert str(caught.value) == (
            "data.affinity_offsets holds [-1, 0, 0], an offset of 3 axes, but the images are 2D: give 2 numbers per "
            "offset, e.g. [[-1, 0], [0, -1], [-3, 0], [0, -3]]."
        )
