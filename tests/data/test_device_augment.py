"""The batched device augmentation: exact flips and rotations, masks integral and aligned with images."""

from __future__ import annotations

import pytest
import torch

from unet_train.data import DeviceAugment
from unet_train.engine.fit import fit

from ..conftest import TINY, compose_config

OFF = dict(hflip_p=0, vflip_p=0, rotate90_p=0, rotate_p=0, elastic_p=0, intensity_p=0)


def blobs(n: int = 4, size: int = 48) -> torch.Tensor:
    """Integer masks (N, H, W) of a few rectangles and a disc, different per sample and not symmetric."""
    masks = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        masks[i, 3 + i : 15 + i, 5:30] = 1
        masks[i][(yy - 32) ** 2 + (xx - 30 - i) ** 2 < 64] = 1
        masks[i, 40:46, 2 : 10 + 3 * i] = 1
    return masks


def augment(masks: torch.Tensor, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    images = masks.unsqueeze(1).float()
    out_images, out_masks = DeviceAugment(**{**OFF, **kwargs})(images, masks, torch.Generator().manual_seed(seed))
    assert out_masks is not None
    return out_images, out_masks


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"hflip_p": 1.0}, lambda t: t.flip(-1)),
        ({"vflip_p": 1.0}, lambda t: t.flip(-2)),
        ({"rotate90_p": 1.0}, lambda t: torch.rot90(t, 1, dims=(-2, -1))),
        ({}, lambda t: t),
    ],
    ids=["hflip", "vflip", "rot90", "nothing"],
)
def test_flips_and_rotation_are_exact(kwargs, expected):
    masks = blobs()
    images = torch.rand(4, 2, 48, 48)
    out_images, out_masks = DeviceAugment(**{**OFF, **kwargs})(images, masks)
    assert torch.equal(out_images, expected(images))
    assert torch.equal(out_masks, expected(masks))


def test_each_sample_draws_its_own_orientation():
    masks = blobs(16)
    out_images, out_masks = augment(masks, hflip_p=0.5, vflip_p=0.5, rotate90_p=0.5)
    assert torch.equal(out_images.squeeze(1).long(), out_masks)  # image and mask moved together
    orientations = set()
    for original, result in zip(masks, out_masks):
        candidates = [torch.rot90(original, k, (0, 1)) for k in range(4)]
        candidates += [c.flip(-1) for c in candidates]
        matches = [j for j, c in enumerate(candidates) if torch.equal(c, result)]
        assert matches, "every output is one of the 8 orientations of its input"
        orientations.add(matches[0])
    assert len(orientations) > 2


def test_elastic_and_rotation_keep_masks_integral_and_aligned():
    masks = blobs(8)
    out_images, out_masks = augment(masks, seed=1, rotate_p=1.0, rotate_limit=15, elastic_p=1.0, elastic_alpha=30)
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    assert not torch.equal(out_masks, masks)  # something moved
    # The image is interpolated bilinearly, the mask by nearest neighbour: they agree except on edges.
    agree = (out_images.squeeze(1).round().long() == out_masks).float().mean()
    assert agree > 0.97
    assert out_images.min() >= 0.0 and out_images.max() <= 1.0


def test_the_same_generator_seed_gives_the_same_batch():
    masks = blobs()
    first = augment(masks, seed=3, hflip_p=0.5, rotate_p=0.5, elastic_p=0.5, intensity_p=0.5)
    second = augment(masks, seed=3, hflip_p=0.5, rotate_p=0.5, elastic_p=0.5, intensity_p=0.5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_intensity_changes_the_image_within_bounds_and_leaves_the_mask():
    images = torch.full((6, 1, 16, 16), 0.5)
    masks = torch.zeros(6, 16, 16, dtype=torch.long)
    aug = DeviceAugment(**{**OFF, "intensity_p": 1.0, "brightness_limit": 0.1, "contrast_limit": 0.1})
    out_images, out_masks = aug(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_masks, masks)
    per_sample = out_images.flatten(1)
    assert torch.all(per_sample.std(dim=1) == 0)  # one affine change per sample
    # 0.5 * (1 +- 0.1) +- 0.1 stays within [0.35, 0.65]
    assert per_sample.min() >= 0.35 - 1e-6 and per_sample.max() <= 0.65 + 1e-6
    assert per_sample[:, 0].unique().numel() == 6


def test_non_square_crops_skip_the_90_degree_rotation():
    images = torch.rand(2, 1, 16, 24)
    out_images, _ = DeviceAugment(**{**OFF, "rotate90_p": 1.0})(images)
    assert torch.equal(out_images, images)


def test_fit_applies_the_device_augmentation_to_every_training_batch(tmp_path, monkeypatch):
    seen = []
    original = DeviceAugment.__call__

    def spy(self, images, masks=None, generator=None):
        seen.append((tuple(images.shape), images.device.type, masks.dtype))
        return original(self, images, masks, generator)

    monkeypatch.setattr(DeviceAugment, "__call__", spy)
    cfg = compose_config([*TINY, "trainer.max_epochs=1", "+data.device_augment._target_=unet_train.data.DeviceAugment"])
    metrics = fit(cfg, tmp_path)
    assert metrics["steps"] == 2 and 0.0 <= metrics["val/dice"] <= 1.0
    assert seen == [((4, 1, 32, 32), "cpu", torch.int64)] * 2  # training batches only, not validation
