"""The fingerprint of hand-made folders: sizes, channels, dtype, percentiles, classes and foreground shares."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import compose_config
from unet_train.build import build_data
from unet_train.errors import DataError
from unet_train.plan.derive import DeviceFacts, derive_plan
from unet_train.plan.fingerprint import compute_fingerprint, training_split


def write_folder(root, images, masks, suffix=".tif"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (image, mask) in enumerate(zip(images, masks)):
        tifffile.imwrite(root / "images" / f"{i}{suffix}", image)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")


def test_fingerprint_of_a_16_bit_folder(tmp_path):
    # Two 2x4 images and one 4x2 image: pixel values 1000..1023 (24 values), so the median is 1011.5
    # and the 50th percentile over all pixels is that; max is 1023, min 1000.
    values = np.arange(1000, 1024, dtype=np.uint16)
    images = [values[:8].reshape(2, 4), values[8:16].reshape(2, 4), values[16:].reshape(4, 2)]
    masks = [np.array([[0, 0, 0, 0], [0, 0, 0, 255]], np.uint8),  # binary {0, 255}: 1 foreground pixel of 8
             np.zeros((2, 4), np.uint8),
             np.array([[255, 255], [255, 255], [0, 0], [0, 0]], np.uint8)]  # fmt: skip
    write_folder(tmp_path, images, masks)
    data = build_data(compose_config(["data=folder", f"data.root={tmp_path}", "data.val_fraction=0"]).data)
    got = compute_fingerprint(*training_split(data)[:3])
    assert got["num_images"] == 3
    assert got["sizes"] == {"2x4": 2, "4x2": 1}
    assert got["height"] == {"min": 2.0, "median": 2.0, "max": 4.0}
    assert got["channels"] == [1] and got["dtypes"] == ["u2"] and got["bit_depth"] == 16
    (channel,) = got["intensity"]
    assert channel["min"] == 1000 and channel["max"] == 1023
    assert channel["percentiles"]["50"] == pytest.approx(1011.5)
    assert channel["mean"] == pytest.approx(1011.5)
    # 5 foreground pixels of 24; per image 1/8, 0, 4/8.
    assert got["classes"] == {"0": pytest.approx(19 / 24), "1": pytest.approx(5 / 24)}
    assert got["num_classes"] == 2
    assert got["foreground_share_per_image"] == {"0": 0.125, "1": 0.0, "2": 0.5}
    assert got["foreground_share"]["mean"] == pytest.approx(0.625 / 3)


def test_ignored_pixels_are_no_class_of_the_fingerprint(tmp_path):
    # Masks {0, 1, 255} with data.ignore_index=255: two classes, shares over the 12 labelled pixels of 16.
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    mask = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0], [255, 255, 255, 255]], np.uint8)
    write_folder(tmp_path, [image], [mask], suffix=".png")
    cfg = compose_config(["data=folder", f"data.root={tmp_path}", "data.val_fraction=0", "data.ignore_index=255"])
    got = compute_fingerprint(*training_split(build_data(cfg.data))[:3])
    assert got["num_classes"] == 2
    assert got["classes"] == {"0": pytest.approx(9 / 12), "1": pytest.approx(3 / 12)}
    assert got["foreground_share_per_image"] == {"0": pytest.approx(3 / 12)}


def test_fingerprint_of_mixed_rgb_and_grey_with_palette_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "images" / "b.png")
    for name, value in (("a", 1), ("b", 2)):
        mask = Image.fromarray(np.full((4, 4), value, np.uint8), mode="L").convert("P")
        mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # a LabelMe-style palette PNG
        mask.save(tmp_path / "masks" / f"{name}.png")
    data = build_data(compose_config(["data=folder", f"data.root={tmp_path}", "data.val_fraction=0"]).data)
    got = compute_fingerprint(*training_split(data)[:3])
    assert got["channels"] == [1, 3] and got["dtypes"] == ["u1"] and got["bit_depth"] == 8
    # Channel 0: 16 pixels of 10 and 16 of 200 (the grey image counts in every channel).
    assert [c["mean"] for c in got["intensity"]] == [105.0, 110.0, 115.0]
    assert got["classes"] == {"1": 0.5, "2": 0.5} and got["num_classes"] == 3


def test_a_colour_mask_is_refused_naming_the_file(tmp_path):
    images = [np.zeros((4, 4), np.uint16)]
    write_folder(tmp_path, images, [np.zeros((4, 4, 3), np.uint8) + np.array([0, 1, 2], np.uint8)])
    data = build_data(compose_config(["data=folder", f"data.root={tmp_path}", "data.val_fraction=0"]).data)
    with pytest.raises(DataError, match=r"Mask .*0\.png is a colour image"):
        training_split(data)


@pytest.mark.parametrize(
    ("split", "val"), [(["data.val_fraction=0.25"], 2), (["data.val_fraction=0", "data.num_folds=4", "data.fold=3"], 3)]
)
def test_a_class_only_in_the_validation_images_is_a_class_of_the_plan(tmp_path, split, val):
    # Four images; class 2 only in the validation image (val_fraction 0.25 with split_seed 0 holds out
    # stem 2; fold 3 of 4 validates on the last block, stem 3).
    masks = [np.zeros((8, 8), np.uint8) for _ in range(4)]
    for mask in masks:
        mask[:4] = 1
    masks[val][6:, 6:] = 2
    write_folder(tmp_path, [np.full((8, 8), 100 + i, np.uint16) for i in range(4)], masks)
    data = build_data(compose_config(["data=folder", f"data.root={tmp_path}", *split]).data)
    images, train_masks, names, val_masks = training_split(data)
    assert names == [str(i) for i in range(4) if i != val] and len(val_masks) == 1
    got = compute_fingerprint(images, train_masks, names, val_masks)
    assert got["num_classes"] == 3 and set(got["classes"]) == {"0", "1", "2"}
    assert got["classes"]["2"] == pytest.approx(4 / 256)  # shares over every labelled pixel read
    assert got["num_val_images"] == 1 and got["val_pixels"] == 64


def test_the_fingerprint_reads_raw_values_of_every_data_config():
    # data=synthetic stores uint8 images; normalised by zscore they would look like float data of mean 0.
    cfg = compose_config(
        ["data=synthetic", "data/normalize=zscore", "data.image_size=32", "data.patch_size=32", "data.num_train=2"]
    )
    data = build_data(cfg.data)
    got = compute_fingerprint(*training_split(data)[:3])
    assert got["dtypes"] == ["u1"] and got["bit_depth"] == 8
    raw = data.load_split("train").images
    assert got["intensity"][0]["mean"] == pytest.approx(np.mean(np.stack(raw).astype(np.float64)))
    assert got["intensity"][0]["max"] > 1.0
    normalize = {c.key: c.value for c in derive_plan(got, DeviceFacts("cpu", "test"), 60.0)}["data.normalize"]
    reasons = {c.key: c.reason for c in derive_plan(got, DeviceFacts("cpu", "test"), 60.0)}
    assert normalize["scheme"] == "percentile" and reasons["data.normalize"].startswith("8-bit images")  # raw dtype


def test_each_class_has_its_pixel_share_and_its_share_of_images_and_a_rare_one_is_planned():
    # Four 10x10 training masks: class 1 fills half of each; class 2 is 2 px in one of them (0.5 % of the pixels).
    masks = [np.zeros((10, 10), np.uint8) for _ in range(4)]
    for mask in masks:
        mask[:5] = 1
    masks[3][9, :2] = 2
    images = [np.zeros((10, 10), np.uint8) for _ in masks]
    got = compute_fingerprint(images, masks, ["a", "b", "c", "d"])
    assert got["classes"] == {"0": pytest.approx(198 / 400), "1": pytest.approx(0.5), "2": pytest.approx(2 / 400)}
    assert got["class_images"] == {"0": 1.0, "1": 1.0, "2": 0.25}
    plan = {c.key: c for c in derive_plan(got, DeviceFacts(kind="cpu", name="t", step_seconds={8: 0.01}), 600.0)}
    assert plan["data.foreground_oversample"].value == 0.33
    assert plan["data.foreground_oversample"].reason.startswith("class 2 0.5% (in 25% of the images) of the pixels")
