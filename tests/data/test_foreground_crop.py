"""ForegroundCrop: the share of foreground-centred crops, uniform over classes, seeded per item, RandomCrop at 0."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from unet_train.build import build_data
from unet_train.data import ForegroundCrop, SyntheticMembranes
from unet_train.data.base import Split
from unet_train.data.sampling import reseed_transform
from unet_train.errors import ConfigError
from unet_train.labels import IGNORE_INDEX

from ..conftest import compose_config


def sparse_image() -> tuple[np.ndarray, np.ndarray]:
    """A 200x200 image whose mask has one pixel of class 1, a 5x5 square of class 2 and an unlabelled band."""
    image = np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[30, 170] = 1
    mask[150:155, 20:25] = 2
    mask[:, 100:110] = IGNORE_INDEX
    return image, mask


def crops(transform: A.Compose, image: np.ndarray, mask: np.ndarray, seeds: range) -> list[np.ndarray]:
    out = []
    for seed in seeds:
        reseed_transform(transform, seed)
        out.append(transform(image=image, mask=mask)["mask"])
    return out


def test_the_share_of_foreground_crops_and_the_classes_drawn_uniformly():
    image, mask = sparse_image()
    transform = A.Compose([ForegroundCrop(16, 16, foreground_p=0.4)])
    drawn = crops(transform, image, mask, range(2000))
    has_1 = np.array([(m == 1).any() for m in drawn])
    has_2 = np.array([(m == 2).any() for m in drawn])
    # A uniform 16 px crop holds the lone class-1 pixel with probability (16/185)**2 < 1 %, the square about 1 %.
    share = (has_1 | has_2).mean()
    assert abs(share - 0.4) < 0.05, share
    # Classes are drawn uniformly, not by pixel count (class 2 has 25 times more pixels).
    assert abs(has_1.sum() / (has_1 | has_2).sum() - 0.5) < 0.08
    # The drawn pixel is in the crop: class 1 sits near the top-right, the crop is shifted to fit.
    assert all(m.shape == (16, 16) for m in drawn)


def test_every_crop_is_centred_on_foreground_at_share_one_unless_there_is_none():
    image, mask = sparse_image()
    transform = A.Compose([ForegroundCrop(16, 16, foreground_p=1.0)])
    assert all(((m == 1) | (m == 2)).any() for m in crops(transform, image, mask, range(200)))
    background = np.where(mask == IGNORE_INDEX, IGNORE_INDEX, 0).astype(np.uint8)  # no foreground: uniform crops
    assert all(m.shape == (16, 16) for m in crops(transform, image, background, range(20)))


def test_the_same_seed_gives_the_same_crops():
    image, mask = sparse_image()
    transform = A.Compose([ForegroundCrop(16, 16, foreground_p=0.5), A.HorizontalFlip(p=0.5)])
    first = crops(transform, image, mask, range(50))
    crops(transform, image, mask, range(100, 130))  # other items in between
    again = crops(transform, image, mask, range(50))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert len({a.tobytes() for a in first}) > 10


@pytest.mark.parametrize("pad", [False, True])
def test_at_share_zero_it_is_random_crop_bit_for_bit(pad):
    image, mask = sparse_image()
    size = 250 if pad else 32  # larger than the image: RandomCrop's own padding
    ours = A.Compose([ForegroundCrop(size, size, pad_if_needed=pad), A.HorizontalFlip(p=0.5), A.RandomRotate90()])
    theirs = A.Compose([A.RandomCrop(size, size, pad_if_needed=pad), A.HorizontalFlip(p=0.5), A.RandomRotate90()])
    for seed in range(30):
        reseed_transform(ours, seed)
        reseed_transform(theirs, seed)
        a, b = ours(image=image, mask=mask), theirs(image=image, mask=mask)
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


def test_a_crop_larger_than_the_image_pads_around_the_drawn_pixel():
    image, mask = sparse_image()
    transform = A.Compose([ForegroundCrop(220, 220, foreground_p=1.0, pad_if_needed=True, fill_mask=IGNORE_INDEX)])
    for m in crops(transform, image, mask, range(10)):
        assert m.shape == (220, 220) and (m == 1).sum() == 1 and (m == IGNORE_INDEX).sum() > 220 * 20


def test_the_data_configs_oversample_by_data_foreground_oversample():
    """Through the synthetic recipe and the dataset's per-item seeds: 0 keeps today's crops exactly."""
    image, mask = sparse_image()
    shares = {}
    for share in (0.0, 0.5):
        cfg = compose_config(["data=synthetic", "data.patch_size=16", f"data.foreground_oversample={share}"])
        data = build_data(cfg.data)
        assert isinstance(data, SyntheticMembranes)
        data._cache["train"] = Split([image], [mask], ["sparse"])  # one sparse image instead of membranes
        dataset = data.dataset("train")
        items = [dataset[(0, seed)]["mask"].numpy() for seed in range(600)]
        shares[share] = np.mean([((m == 1) | (m == 2)).any() for m in items])
        again = [dataset[(0, seed)]["mask"].numpy() for seed in range(20)]
        assert all(np.array_equal(a, b) for a, b in zip(items[:20], again))
    assert shares[0.0] < 0.03 and abs(shares[0.5] - 0.5) < 0.07, shares


def rare_class_image() -> tuple[np.ndarray, np.ndarray]:
    """200x200: class 1 fills a 60x60 block (3,600 px), class 2 is a 2x2 speck (4 px, 0.01 % of the image)."""
    image = np.random.default_rng(1).integers(0, 255, (200, 200), dtype=np.uint8)
    mask = np.zeros((200, 200), np.uint8)
    mask[20:80, 20:80] = 1
    mask[150:152, 160:162] = 2
    return image, mask


@pytest.mark.parametrize(("rule", "expected"), [("per_class", 0.33 / 2), ("foreground", 0.33 * 4 / 3604)])
def test_a_class_of_four_pixels_is_the_centre_as_often_as_the_rule_says(rule, expected):
    """per_class: half the oversampled crops (two classes present) hold the speck; foreground: 4 in 3,604."""
    image, mask = rare_class_image()
    transform = A.Compose([ForegroundCrop(16, 16, foreground_p=0.33, classes=rule)])
    drawn = crops(transform, image, mask, range(3000))
    # A uniform 16 px crop holds the speck with probability (17 / 185) ** 2 = 0.8 %, on top of the centred ones.
    uniform = 0.67 * (17 / 185) ** 2
    share = np.mean([(m == 2).any() for m in drawn])
    assert abs(share - (expected + uniform)) < 0.02, share
    again = crops(transform, image, mask, range(3000))  # seeded: the same crops again
    assert np.mean([(m == 2).any() for m in again]) == share


def test_data_oversample_classes_reaches_the_crop_and_a_wrong_value_is_one_line():
    image, mask = rare_class_image()
    shares = {}
    for rule in ("per_class", "foreground"):
        overrides = ["data=synthetic", "data.patch_size=16", "data.foreground_oversample=1.0"]
        data = build_data(compose_config([*overrides, f"data.oversample_classes={rule}"]).data)
        assert data.oversample_classes == rule
        data._cache["train"] = Split([image], [mask], ["rare"])
        dataset = data.dataset("train")
        shares[rule] = np.mean([(dataset[(0, seed)]["mask"].numpy() == 2).any() for seed in range(400)])
    assert abs(shares["per_class"] - 0.5) < 0.08 and shares["foreground"] < 0.03, shares
    with pytest.raises(ConfigError, match=r"^data.oversample_classes='pixels': choose per_class or foreground.$"):
        build_data(compose_config(["data=synthetic", "data.oversample_classes=pixels"]).data)
