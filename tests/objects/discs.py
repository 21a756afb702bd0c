"""A generated instance dataset whose answer is known: pairs of touching discs, bright centres, a dim seam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from skimage import io as skio


def touching_discs(rng: np.random.Generator, size: int = 64, pairs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 image, uint16 ids)``: ``pairs`` pairs of discs that touch (each pixel of a pair's union goes to
    the nearer centre, so the two meet along a straight seam), each brightest at its centre."""
    labels = np.zeros((size, size), dtype=np.uint16)
    image = np.full((size, size), 20.0)
    yy, xx = np.mgrid[:size, :size]
    cells = size // pairs
    for k in range(pairs):
        radius = rng.uniform(5.5, 7.5)
        angle = rng.uniform(0, np.pi)
        cy = rng.uniform(radius + 2, size - radius - 2)
        cx = k * cells + cells / 2
        offset = 0.8 * radius * np.array([np.sin(angle), np.cos(angle)])
        centres = [np.array([cy, cx]) + offset, np.array([cy, cx]) - offset]
        dists = np.stack([np.hypot(yy - c[0], xx - c[1]) for c in centres])
        inside = dists.min(0) <= radius
        nearer = dists.argmin(0)
        for j in range(2):
            obj = inside & (nearer == j) & (labels == 0)
            labels[obj] = 2 * k + j + 1
            image[obj] = 60 + 180 * (1 - dists[j][obj] / radius) ** 0.5
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_discs(root: Path, count: int, seed: int = 0, size: int = 64) -> Path:
    """``count`` images into ``root/images/*.png`` and their ids into ``root/masks/*.tif``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, labels = touching_discs(rng, size)
        skio.imsave(root / "images" / f"d{i:02d}.png", image, check_contrast=False)
        tifffile.imwrite(root / "masks" / f"d{i:02d}.tif", labels)
    return root
