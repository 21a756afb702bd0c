"""Synthetic EM-like membrane images with exact masks, generated from a seed (and 16-bit fluorescence-like ones).

Each image is a Voronoi tessellation of "cells" whose borders are dark membranes a few pixels
thick, with textured interiors, a few dark organelle blobs, blur and noise. The mask marks the
membranes (class 1), so a model trained here learns the same task as on ISBI 2012.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from unet_train.data.base import SegmentationData, Split
from unet_train.errors import ConfigError


def make_membrane_image(
    rng: np.random.Generator, size: int, num_cells: int, membrane_width: int = 2, noise: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8, ``size x size``) and its membrane mask (uint8 in {0, 1})."""
    points = rng.uniform(0, size, size=(num_cells, 2))
    seeds = np.zeros((size, size), dtype=bool)
    seeds[points[:, 0].astype(int), points[:, 1].astype(int)] = True
    _, (rows, cols) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = rows * size + cols  # unique id per nearest seed: a Voronoi partition
    membrane = find_boundaries(labels, mode="inner")
    if membrane_width > 1:
        membrane = ndimage.binary_dilation(membrane, iterations=membrane_width - 1)

    brightness = rng.uniform(0.55, 0.85, size=num_cells)
    _, inverse = np.unique(labels, return_inverse=True)
    image = brightness[inverse.reshape(size, size) % num_cells]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2.0)
    image = image + 0.06 * texture
    blobs = ndimage.gaussian_filter((rng.uniform(size=(size, size)) > 0.9985).astype(float), 2.5)
    image = image - 0.5 * blobs / max(blobs.max(), 1e-6)
    image = np.where(membrane, rng.uniform(0.1, 0.25), image)
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, noise, (size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), membrane.astype(np.uint8)


def make_fluorescence_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: int = 8,
    background: float = 1000.0,
    contrast: tuple[float, float] = (30.0, 60.0),
    radius: tuple[float, float] = (5.0, 10.0),
    noise: float = 8.0,
    saturated: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image in the style of fluorescence microscopy and its object mask (uint8 in {0, 1}).

    Round objects a few tens of counts (``contrast``) above a background of about ``background``
    counts, with a gentle illumination gradient, Gaussian noise and ``saturated`` hot pixels at
    65535, which stretch the range so that reading the image into uint8 by its min and max erases
    the objects.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    image = background + 20.0 * (cols / max(width - 1, 1) - 0.5) + 10.0 * (rows / max(height - 1, 1) - 0.5)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(num_objects):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
        image[disc & ~mask] += rng.uniform(*contrast)
        mask |= disc
    image += rng.normal(0.0, noise, (height, width))
    image = np.clip(np.round(image), 0, 65535).astype(np.uint16)
    hot = rng.integers(0, height * width, saturated)
    image.flat[hot] = 65535
    return image, mask.astype(np.uint8)


class SyntheticMembranes(SegmentationData):
    """A reproducible synthetic dataset: ``num_train``/``num_val``/``num_test`` images of ``image_size``.

    Args:
        image_size: side of every image.
        num_train, num_val, num_test: images per split.
        cells_per_image: Voronoi cells per image.
        seed: base seed; each split draws from its own stream, so sizes can change independently.
        **kwargs: loader and transform settings of :class:`SegmentationData`.
    """

    def __init__(
        self,
        image_size: int = 128,
        num_train: int = 16,
        num_val: int = 4,
        num_test: int = 4,
        cells_per_image: int = 30,
        membrane_width: int = 2,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.num_classes != 2 or self.in_channels != 1:
            raise ConfigError("The synthetic dataset is binary and grey: use data.num_classes=2, data.in_channels=1.")
        self.image_size = image_size
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.cells_per_image, self.membrane_width, self.seed = cells_per_image, membrane_width, seed

    def resolve_auto(self) -> None:
        self._in_channels = self._in_channels or 1
        self._num_classes = self._num_classes or 2

    def load_split(self, split: str) -> Split:
        if split == "all":
            parts = [self.load_split(s) for s in ("train", "val")]
            return Split(
                [im for p in parts for im in p.images],
                [m for p in parts for m in (p.masks or [])],
                [n for p in parts for n in p.names],
            )
        stream = {"train": 0, "val": 1, "test": 2}[split]
        rng = np.random.default_rng([self.seed, stream])
        pairs = [
            make_membrane_image(rng, self.image_size, self.cells_per_image, self.membrane_width)
            for _ in range(self.counts[split])
        ]
        return Split([p[0] for p in pairs], [p[1] for p in pairs], [f"{split}-{i:03d}" for i in range(len(pairs))])
