"""A tiny folder of generated volumes (bright balls on noise, their masks) for the 3D tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

SHAPE = (8, 32, 32)  # z, y, x
SPACING = (2.0, 0.5, 0.5)  # anisotropic, as thick sections: z is 4x the in-plane side


def ball_volume(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image of 2-3 bright balls on noise and its {0, 255} mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    mask = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(2, 4))):
        cz, cy, cx = (rng.uniform(0.2, 0.8) * s for s in shape)
        mask |= ((z - cz) * 4) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < rng.uniform(25, 64)
    image = np.clip(40 + 150 * mask + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    return image, (mask * 255).astype(np.uint8)


def write_tiff(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = SPACING) -> None:
    """An ImageJ TIFF stack with its spacing (z as ``spacing``, y/x as the resolution tags), in micrometres."""
    tifffile.imwrite(
        path,
        array,
        imagej=True,
        resolution=(1 / spacing[2], 1 / spacing[1]),
        metadata={"axes": "ZYX", "spacing": spacing[0], "unit": "um"},
    )


def make_volume_folder(root: Path, count: int = 4, shape: tuple[int, int, int] = SHAPE) -> Path:
    """``root/images/vol{i}.tif`` and ``root/masks/vol{i}.tif``; ``root/test/images/test0.tif``."""
    for folder in ("images", "masks", "test/images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = ball_volume(i, shape)
        write_tiff(root / "images" / f"vol{i}.tif", image)
        write_tiff(root / "masks" / f"vol{i}.tif", mask)
    write_tiff(root / "test" / "images" / "test0.tif", ball_volume(99, shape)[0])
    return root
