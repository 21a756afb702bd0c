"""3D augmentation of a volume crop: flips, in-plane 90-degree rotations, axis swaps, intensity jitter.

Albumentations is 2D-only, so the few 3D transforms training needs are written here on NumPy. Each
transform is ``(image, mask, rng, spacing) -> (image, mask)`` with ``image`` float32 ``(d, h, w, C)``,
``mask`` ``(d, h, w)`` (or None) and ``spacing`` the crop's voxel size ``(z, y, x)``; every draw comes
from ``rng``, which the dataset seeds per item, so a resumed run sees the same crops. They never change
the crop's shape (a batch stacks crops of ``data.patch_size``), so a rotation or swap only happens
between two axes of equal length and, for a swap, comparable spacing.

A YAML ``train_transform`` of ``data=volumes`` is a :class:`Compose3D` of these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from unet_train.errors import ConfigError

Mask = np.ndarray | None


class Transform3D(Protocol):
    def __call__(
        self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]
    ) -> tuple[np.ndarray, Mask]: ...


def _probability(p: float, what: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{what}: p={p} must be a probability in [0, 1].")
    return float(p)


def comparable(a: float, b: float, ratio: float = 1.25) -> bool:
    """Whether two voxel sides are alike enough that exchanging the axes keeps the anatomy plausible."""
    return max(a, b) <= ratio * min(a, b)


class RandomFlip3D:
    """Flip each of ``axes`` (0 = z, 1 = y, 2 = x) with probability ``p``: valid at any spacing."""

    def __init__(self, axes: Sequence[int] = (0, 1, 2), p: float = 0.5) -> None:
        if not set(axes) <= {0, 1, 2}:
            raise ConfigError(f"RandomFlip3D: axes={list(axes)} must be among 0 (z), 1 (y), 2 (x).")
        self.axes, self.p = tuple(axes), _probability(p, "RandomFlip3D")

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]) -> Any:
        for axis in self.axes:
            if rng.random() < self.p:
                image = np.flip(image, axis)
                mask = None if mask is None else np.flip(mask, axis)
        return image, mask


class RandomRotate90InPlane:
    """Rotate the (y, x) plane by a random multiple of 90 degrees with probability ``p`` (by 180 only when the
    crop is not square in-plane): the plane's two axes share their spacing in microscopy and most scans."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p, "RandomRotate90InPlane")

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]) -> Any:
        if rng.random() >= self.p:
            return image, mask
        square = image.shape[1] == image.shape[2] and comparable(spacing[1], spacing[2])
        turns = int(rng.integers(1, 4)) if square else 2
        image = np.rot90(image, turns, axes=(1, 2))
        return image, None if mask is None else np.rot90(mask, turns, axes=(1, 2))


class RandomAxisSwap:
    """Exchange two axes with probability ``p``, only between axes of equal length and comparable spacing
    (an isotropic volume); on anisotropic data (thick z) it leaves z alone."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = _probability(p, "RandomAxisSwap")

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]) -> Any:
        pairs = [
            (a, b)
            for a, b in ((0, 1), (0, 2), (1, 2))
            if image.shape[a] == image.shape[b] and comparable(spacing[a], spacing[b])
        ]
        if not pairs or rng.random() >= self.p:
            return image, mask
        a, b = pairs[int(rng.integers(len(pairs)))]
        image = np.swapaxes(image, a, b)
        return image, None if mask is None else np.swapaxes(mask, a, b)


class IntensityJitter:
    """With probability ``p``: ``image * (1 + U(-contrast, contrast)) + U(-brightness, brightness) * std``, then
    Gaussian noise of ``noise`` times the crop's standard deviation; float-safe (no clipping)."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, noise: float = 0.0, p: float = 0.5) -> None:
        if min(brightness, contrast, noise) < 0:
            raise ConfigError("IntensityJitter: brightness, contrast and noise must be 0 or more.")
        self.brightness, self.contrast, self.noise = brightness, contrast, noise
        self.p = _probability(p, "IntensityJitter")

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]) -> Any:
        if rng.random() >= self.p:
            return image, mask
        scale = float(image.std()) or 1.0  # shifts relative to the crop's own contrast, whatever the scheme
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        shift = rng.uniform(-self.brightness, self.brightness) * scale
        out = image * np.float32(gain) + np.float32(shift)
        if self.noise > 0:
            out = out + rng.normal(0.0, self.noise * scale, size=image.shape).astype(np.float32)
        return out.astype(np.float32, copy=False), mask


class Compose3D:
    """Apply ``transforms`` in order (the 3D counterpart of ``albumentations.Compose``)."""

    def __init__(self, transforms: Sequence[Transform3D]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: Mask, rng: np.random.Generator, spacing: Sequence[float]) -> Any:
        for transform in self.transforms:
            image, mask = transform(image, mask, rng, spacing)
        return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)
