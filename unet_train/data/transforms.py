"""Albumentations transforms of the project: foreground-centred crops, float-safe intensity changes, padding.

:class:`ForegroundCrop` centres a share of training crops on a foreground pixel
(``data.foreground_oversample``). Normalised images are float32 and need not lie in [0, 1]
(z-scores, percentile scaling without clipping). Albumentations 2 clips the output of its
pixel-level transforms on float32 images to [0, 1] (``albucore.clipped``), so
:class:`RandomBrightnessContrast` here is the same transform without that clip for float images.
Geometric transforms (crops, flips, rotations, elastic deformation, padding) do not clip.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from pydantic import Field

from unet_train.data.sampling import check_oversample_classes
from unet_train.labels import IGNORE_INDEX


class ForegroundCrop(A.RandomCrop):
    """A ``RandomCrop`` that centres a share ``foreground_p`` of its crops on a foreground pixel.

    For such a crop with ``classes="per_class"`` (nnU-Net's rule), a class is drawn uniformly among
    the foreground classes present in the mask (values ``>= 1``; unlabelled pixels are no class),
    then a pixel uniformly among that class's pixels, so a class of 2 % of the pixels is the centre
    as often as one of 30 %; with ``classes="foreground"`` the pixel is drawn uniformly among all
    foreground pixels (each class in proportion to its pixels). The crop is centred on it and
    shifted inside the image where the image edge is nearer than half a crop, so the pixel always
    lies in the crop. The other crops, and every
    crop of a mask without foreground, are ``RandomCrop``'s uniform ones.

    Every draw comes from the transform's own generators, which the dataset reseeds from each
    item's seed (:func:`unet_train.data.sampling.reseed_transform`): a crop is a function of the
    seed, whichever worker makes it, so resumed runs see the same crops. With
    ``foreground_p=0`` nothing extra is drawn and the crops are exactly ``RandomCrop``'s.

    Args:
        height, width: crop size.
        foreground_p: share of crops centred on a foreground pixel, in [0, 1].
        classes: ``per_class`` or ``foreground``: how the centre's class is drawn (above).
        pad_if_needed, pad_position, border_mode, fill, fill_mask, p: as ``RandomCrop``.
    """

    class InitSchema(A.RandomCrop.InitSchema):
        foreground_p: float = Field(ge=0, le=1)
        classes: str = "per_class"  # checked by check_oversample_classes: one line naming data.oversample_classes

    def __init__(
        self,
        height: int,
        width: int,
        foreground_p: float = 0.0,
        classes: str = "per_class",
        pad_if_needed: bool = False,
        pad_position: Literal["center", "top_left", "top_right", "bottom_left", "bottom_right", "random"] = "center",
        border_mode: int = cv2.BORDER_CONSTANT,
        fill: tuple[float, ...] | float = 0.0,
        fill_mask: tuple[float, ...] | float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(
            height=height,
            width=width,
            pad_if_needed=pad_if_needed,
            pad_position=pad_position,
            border_mode=border_mode,
            fill=fill,
            fill_mask=fill_mask,
            p=p,
        )
        self.foreground_p = foreground_p
        self.classes = check_oversample_classes(classes)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        # The coin is drawn only when oversampling is on: at 0 the random stream is RandomCrop's.
        if self.foreground_p > 0 and self.py_random.random() < self.foreground_p and data.get("mask") is not None:
            height, width = params["shape"][:2]
            fits = self.pad_if_needed or (self.height <= height and self.width <= width)
            pixel = self._foreground_pixel(np.asarray(data["mask"])) if fits else None
            if pixel is not None:
                return self._crop_around(pixel, (height, width))
        return super().get_params_dependent_on_data(params, data)

    def _foreground_pixel(self, mask: np.ndarray) -> tuple[int, int] | None:
        """``(row, col)`` of a foreground pixel drawn as ``classes`` says; None if the mask has no foreground."""
        if mask.ndim == 3:  # (H, W, 1)
            mask = mask[..., 0]
        flat = mask.reshape(-1)
        counts = np.bincount(flat.astype(np.intp, copy=False))
        present = [c for c in range(1, len(counts)) if counts[c] and c != IGNORE_INDEX]
        if not present:
            return None
        if self.classes == "foreground":  # every foreground pixel equally likely: large classes dominate
            pixels = np.flatnonzero((flat > 0) & (flat != IGNORE_INDEX))
        else:
            pixels = np.flatnonzero(flat == present[self.py_random.randrange(len(present))])
        index = int(pixels[self.py_random.randrange(len(pixels))])
        return divmod(index, mask.shape[1])

    def _crop_around(self, pixel: tuple[int, int], shape: tuple[int, int]) -> dict[str, Any]:
        """Crop coordinates (and RandomCrop's padding, if any) of the crop centred on ``pixel``."""
        pad_params = self._get_pad_params(shape, (self.height, self.width))
        row, col = pixel
        height, width = shape
        if pad_params is not None:
            row, col = row + pad_params["pad_top"], col + pad_params["pad_left"]
            height += pad_params["pad_top"] + pad_params["pad_bottom"]
            width += pad_params["pad_left"] + pad_params["pad_right"]
        top = min(max(row - self.height // 2, 0), height - self.height)
        left = min(max(col - self.width // 2, 0), width - self.width)
        return {"crop_coords": (left, top, left + self.width, top + self.height), "pad_params": pad_params}


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
