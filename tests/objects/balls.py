"""A generated folder of instance volumes whose answer is known: pairs of touching balls, bright at their centres."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.volume_folder import write_tiff

SHAPE = (8, 32, 32)  # z, y, x
SPACING = (2.0, 1.0, 1.0)  # z twice the in-plane side


def touching_balls(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 image, uint16 ids)``: two pairs of balls (radius in voxels of the in-plane side, z sections twice as
    thick) that touch along a plane (each voxel of a pair's union goes to the nearer centre)."""
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    labels = np.zeros(shape, dtype=np.uint16)
    image = np.full(shape, 20.0)
    half = shape[2] // 2
    for k in range(2):
        radius = rng.uniform(5.0, 6.5)
        cz, cy, cx = shape[0] / 2 - 0.5, rng.uniform(radius + 1, shape[1] - radius - 1), k * half + half / 2
        step = 0.8 * radius * np.array([np.sin(rng.uniform(0, np.pi)), np.cos(rng.uniform(0, np.pi))])
        centres = [(cz, cy + step[0], cx + step[1] / 2), (cz, cy - step[0], cx - step[1] / 2)]
        dists = np.stack([np.sqrt((2 * (z - c[0])) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) for c in centres])
        inside, nearer = dists.min(0) <= radius, dists.argmin(0)
        for j in range(2):
            obj = inside & (nearer == j) & (labels == 0)
            labels[obj] = 2 * k + j + 1
            image[obj] = 60 + 180 * (1 - dists[j][obj] / radius) ** 0.5
    image += rng.normal(0, 4, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_balls(root: Path, count: int, seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Path:
    """``count`` volumes into ``root/images/b*.tif`` and their ids into ``root/masks/b*.tif`` (ImageJ stacks with
    :data:`SPACING`); ``root/test/images/t0.tif`` unlabelled."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks", "test/images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = touching_balls(rng, shape)
        write_tiff(root / "images" / f"b{i:02d}.tif", image, SPACING)
        write_tiff(root / "masks" / f"b{i:02d}.tif", labels, SPACING)
    write_tiff(root / "test" / "images" / "t0.tif", touching_balls(rng, shape)[0], SPACING)
    return root
