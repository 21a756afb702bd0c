"""Unlabelled pixels from data.ignore_index and <root>/valid/, kept through augmentation and out of loss and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage import io as skio

from unet_train.data import DeviceAugment, ImageFolder
from unet_train.data.sampling import reseed_transform
from unet_train.engine.evaluate import evaluate
from unet_train.engine.runtime import make_runtime
from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.losses import BCEDiceLoss
from unet_train.models import UNet

from ..conftest import compose_config

SIZE = (32, 40)


def write_pairs(root: Path, masks: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None = None) -> None:
    """Grey images (a fixed pattern) with the given masks, and valid-pixel masks if given."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks") + (("valid",) if valid is not None else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        image = rng.integers(0, 255, mask.shape, dtype=np.uint8)
        skio.imsave(root / "images" / f"{stem}.png", image, check_contrast=False)
        skio.imsave(root / "masks" / f"{stem}.png", mask, check_contrast=False)
    for stem, v in (valid or {}).items():
        skio.imsave(root / "valid" / f"{stem}.png", v, check_contrast=False)


def binary_mask(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(SIZE) > 0.7).astype(np.uint8) * 255


def field_of_view() -> np.ndarray:
    rows, cols = np.mgrid[: SIZE[0], : SIZE[1]]
    return (((rows - 16) ** 2 + (cols - 20) ** 2) < 14**2).astype(np.uint8) * 255  # a disc: the labelled part


def test_a_valid_folder_marks_unlabelled_pixels_and_a_missing_file_means_all_valid(tmp_path):
    masks = {"a": binary_mask(1), "b": binary_mask(2)}
    write_pairs(tmp_path, masks, valid={"a": field_of_view()})  # no valid/b.png
    split = ImageFolder(root=str(tmp_path), num_workers=0).split("all")
    assert split.names == ["a", "b"] and split.masks is not None
    a, b = split.masks
    inside = field_of_view() > 0
    np.testing.assert_array_equal(a[~inside], IGNORE_INDEX)
    np.testing.assert_array_equal(a[inside], masks["a"][inside] // 255)
    np.testing.assert_array_equal(b, masks["b"] // 255)


def test_ignore_index_in_the_mask_files(tmp_path):
    mask = np.zeros(SIZE, np.uint8)
    mask[:, 10:20] = 1
    mask[:, 30:] = 2  # "unlabelled"
    write_pairs(tmp_path / "indexed", {"a": mask})
    read = ImageFolder(root=str(tmp_path / "indexed"), ignore_index=2, num_workers=0).split("all").masks[0]
    np.testing.assert_array_equal(read, np.where(mask == 2, IGNORE_INDEX, mask))
    # Binary {0, 255} masks with another value for unlabelled pixels.
    write_pairs(tmp_path / "binary", {"a": np.where(mask == 2, 128, mask * 255).astype(np.uint8)})
    read = ImageFolder(root=str(tmp_path / "binary"), ignore_index=128, num_workers=0).split("all").masks[0]
    np.testing.assert_array_equal(read, np.where(mask == 2, IGNORE_INDEX, mask))
    # Without ignore_index the value is an unknown class, and the message says what to set.
    with pytest.raises(DataError, match=r"a.png has values \[0, 1, 2\].*set data.ignore_index"):
        ImageFolder(root=str(tmp_path / "indexed"), num_workers=0).split("all")


def test_ignore_index_must_not_be_a_class():
    with pytest.raises(ConfigError, match="data.ignore_index=1 must be a mask value that is no class"):
        ImageFolder(root="x", ignore_index=1, num_classes=2)


def test_valid_masks_with_the_wrong_size_or_no_image_are_refused(tmp_path):
    write_pairs(tmp_path, {"a": binary_mask(1)}, valid={"a": np.ones((10, 10), np.uint8)})
    with pytest.raises(
        DataError, match=r"Valid-pixel mask .*valid/a.png is \(10, 10\) but its image a.png is \(32, 40\)"
    ):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")
    (tmp_path / "valid" / "a.png").rename(tmp_path / "valid" / "typo.png")
    with pytest.raises(DataError, match="Valid-pixel masks without an image in .*valid: typo"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")


@pytest.mark.parametrize("data", ["folder", "isbi", "synthetic"])
def test_the_augmentation_keeps_the_ignore_value_a_label(data, tmp_path):
    """Crops, flips, rotations and elastic deformation move mask values (nearest), never blend them."""
    cfg = compose_config([f"data={data}", "data.patch_size=48", "data.foreground_oversample=0.5"])
    transform = instantiate(cfg.data.train_transform)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    mask = (rng.random((64, 64)) > 0.5).astype(np.uint8)
    mask[:, :20] = IGNORE_INDEX
    for seed in range(20):
        reseed_transform(transform, seed)
        out = transform(image=image, mask=mask)["mask"]
        assert out.shape == (48, 48) and set(np.unique(out).tolist()) <= {0, 1, IGNORE_INDEX}
    # The folder recipe pads masks with the ignore value when its padding is a constant.
    cfg = compose_config(
        ["data=folder", "data.patch_size=48", "data.root=x", "data.train_transform.transforms.0.border_mode=0"]
    )
    pad = instantiate(cfg.data.train_transform.transforms[0])
    padded = pad(image=image[:40, :40], mask=mask[:40, :40])["mask"]
    assert padded.shape == (48, 48) and (padded[:4] == IGNORE_INDEX).all()


def test_device_augment_keeps_the_ignore_value_a_label():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(2, (4, 32, 32), generator=g)
    masks[:, :, :10] = IGNORE_INDEX
    _, out = DeviceAugment(rotate_p=1.0, elastic_p=1.0)(torch.rand(4, 1, 32, 32, generator=g), masks, generator=g)
    assert out is not None and set(out.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert (out == IGNORE_INDEX).any()


def test_other_labels_under_the_unlabelled_pixels_give_identical_loss_and_metrics(tmp_path):
    """Two copies of a folder whose masks differ only where valid/ says unlabelled: same numbers everywhere."""
    valid = {f"i{k}": field_of_view() for k in range(3)}
    masks = {stem: binary_mask(k) for k, stem in enumerate(valid)}
    flipped = {stem: np.where(field_of_view() > 0, m, 255 - m).astype(np.uint8) for stem, m in masks.items()}
    write_pairs(tmp_path / "one", masks, valid)
    write_pairs(tmp_path / "two", flipped, valid)
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=1, base_channels=4, depth=2)
    runtime = make_runtime("cpu", "32", False, deterministic=False)
    results = []
    for name in ("one", "two"):
        data = ImageFolder(root=str(tmp_path / name), num_workers=0, val_batch_size=3, persistent_workers=False)
        loader = data.dataloader("all", shuffle=False)
        batch = next(iter(loader))
        results.append((evaluate(model, loader, runtime, 2, loss_fn=BCEDiceLoss()), batch["mask"]))
    (one, mask_one), (two, mask_two) = results
    assert not np.array_equal(masks["i0"], flipped["i0"])
    assert torch.equal(mask_one, mask_two) and (mask_one == IGNORE_INDEX).any()
    assert one.metrics == two.metrics and one.per_image == two.per_image
    assert {"loss", "dice", "pixel_error"} <= set(one.metrics)


def test_auto_classes_refuse_an_ignore_index_that_takes_the_binary_foreground(tmp_path):
    # Binary {0, 255} masks with data.ignore_index=255: every foreground pixel would become
    # unlabelled and num_classes=auto would train background only; refused with the fix.
    write_pairs(tmp_path, {"a": binary_mask(1), "b": binary_mask(2)})
    data = ImageFolder(root=str(tmp_path), ignore_index=255, num_classes="auto", num_workers=0)
    with pytest.raises(DataError, match=r"hold only 0 and data.ignore_index=255.*set data.ignore_index=null"):
        data.split("all")
    # A real ignore value next to the classes is still left out of them.
    masks = {"a": binary_mask(1) // 255, "b": binary_mask(2) // 255}
    masks["a"][:4] = 255
    write_pairs(tmp_path / "indexed", masks)
    data = ImageFolder(root=str(tmp_path / "indexed"), ignore_index=255, num_classes="auto", num_workers=0)
    assert data.num_classes == 2
    np.testing.assert_array_equal(data.split("all").masks[0][:4], IGNORE_INDEX)


def test_two_files_of_one_stem_are_refused_not_one_silently_dropped(tmp_path):
    write_pairs(tmp_path, {"a": binary_mask(1), "b": binary_mask(2)})
    skio.imsave(tmp_path / "images" / "a.tif", np.zeros(SIZE, np.uint16), check_contrast=False)
    with pytest.raises(DataError, match=r"images holds a.png and a.tif, two files of one stem; keep one"):
        ImageFolder(root=str(tmp_path), num_workers=0).split("all")


def test_auto_classes_of_voc_style_masks_name_ignore_index(tmp_path):
    # Classes 0..2 and a 255 border (Pascal VOC's void): the message points at data.ignore_index.
    masks = {"a": binary_mask(1) // 255 * 2, "b": binary_mask(2) // 255}
    masks["a"][:2] = 255
    write_pairs(tmp_path, masks)
    data = ImageFolder(root=str(tmp_path), num_classes="auto", num_workers=0)
    with pytest.raises(DataError, match=r"look like grey levels.*\(or data.ignore_index=255 if 255 marks unlabelled"):
        data.split("all")
    data = ImageFolder(root=str(tmp_path), num_classes="auto", ignore_index=255, num_workers=0)
    assert data.num_classes == 3


def test_a_palette_valid_mask_is_read_by_its_indices_not_its_colours(tmp_path):
    masks = {"a": binary_mask(1), "b": binary_mask(2)}
    write_pairs(tmp_path, masks)
    (tmp_path / "valid").mkdir()
    inside = field_of_view() > 0
    valid = Image.fromarray(inside.astype(np.uint8), mode="P")
    valid.putpalette([255, 255, 255, 0, 0, 0])  # index 0 (unlabelled) drawn white, index 1 black
    valid.save(tmp_path / "valid" / "a.png")
    a = ImageFolder(root=str(tmp_path), num_workers=0).split("all").masks[0]
    np.testing.assert_array_equal(a[~inside], IGNORE_INDEX)
    np.testing.assert_array_equal(a[inside], masks["a"][inside] // 255)
