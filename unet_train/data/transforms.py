"""Albumentations helpers for images of any dtype: float-safe intensity changes, and what a pipeline pads.

Normalised images are float32 and need not lie in [0, 1] (z-scores, percentile scaling without
clipping). Albumentations 2 clips the output of its pixel-level transforms on float32 images to
[0, 1] (``albucore.clipped``), so :class:`RandomBrightnessContrast` here is the same transform
without that clip for float images. Geometric transforms (crops, flips, rotations, elastic
deformation, padding) do not clip.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np


class RandomBrightnessContrast(A.RandomBrightnessContrast):
    """``albumentations.RandomBrightnessContrast`` (``x * alpha + beta``) that does not clip float images.

    uint8 images take albumentations' own path (its lookup table, clipped to [0, 255]), so results
    on uint8 data are identical to it. On float images the brightness shift is in the image's own
    units (``brightness_by_max``: ``beta * 1.0``), which is 0.1 of the range of [0, 1] data or
    0.1 of a standard deviation of z-scored data for ``brightness_limit=0.1``.
    """

    def apply(self, img: np.ndarray, alpha: float, beta: float, **params: Any) -> np.ndarray:
        if img.dtype == np.uint8:
            return super().apply(img, alpha=alpha, beta=beta, **params)
        out = img * np.asarray(alpha, dtype=img.dtype)
        out += np.asarray(beta, dtype=img.dtype)
        return out


def padded_size(transform: Any) -> tuple[int, int] | None:
    """The smallest ``(height, width)`` a pipeline's ``PadIfNeeded`` pads every image to, or None.

    Looks through a ``Compose`` (and nested ones) for ``PadIfNeeded`` with ``min_height`` and
    ``min_width``; a ``OneOf`` or other random container does not always apply its pads, so it
    is not looked into.
    """
    found: tuple[int, int] | None = None
    for step in getattr(transform, "transforms", None) or []:
        if isinstance(step, A.PadIfNeeded) and step.min_height and step.min_width and step.p >= 1.0:
            size = (int(step.min_height), int(step.min_width))
            found = size if found is None else (max(found[0], size[0]), max(found[1], size[1]))
        elif isinstance(step, A.Compose):
            inner = padded_size(step)
            if inner is not None:
                found = inner if found is None else (max(found[0], inner[0]), max(found[1], inner[1]))
    return found
