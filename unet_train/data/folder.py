"""A folder of images and masks: ``root/images/*`` and ``root/masks/*`` matched by file stem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from skimage import io as skio

from unet_train.data.base import SegmentationData, Split
from unet_train.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def read_image(path: Path) -> np.ndarray:
    """Read a 2D image as uint8 ``(H, W)`` or ``(H, W, C)``; names the file on failure."""
    try:
        array = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else skio.imread(path)
    except Exception as exc:
        raise DataError(f"Could not read image {path}: {exc}") from exc
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 4:  # RGBA: drop alpha
        array = array[..., :3]
    if array.ndim not in (2, 3):
        raise DataError(f"{path} has shape {array.shape}; expected a 2D grey or RGB image.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{path} has NaN or infinite pixels; fix or remove the file.")
    if array.dtype != np.uint8:
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        else:
            low, high = float(array.min()), float(array.max())
            scale = 255.0 / (high - low) if high > low else 0.0
            array = ((array - low) * scale).astype(np.uint8)
    return array


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """Read a mask as class indices: binary {0,255} or {0,1}, or indexed values 0..K-1."""
    try:
        mask = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else skio.imread(path)
    except Exception as exc:
        raise DataError(f"Could not read mask {path}: {exc}") from exc
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if not (mask[..., :1] == mask[..., : min(mask.shape[2], 3)]).all():
            raise DataError(f"Mask {path} is a colour image; save masks as single-channel class indices.")
        mask = mask[..., 0]
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    if values.max(initial=0) >= num_classes or values.min(initial=0) < 0:
        raise DataError(
            f"Mask {path} has values {values.tolist()[:10]}; expected {{0, 255}} or {{0, 1}} for a binary "
            f"problem, or class indices 0..{num_classes - 1} (data.num_classes={num_classes})."
        )
    return mask.astype(np.uint8 if num_classes <= 256 else np.int64)


def _files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return {p.stem: p for p in files}


class ImageFolder(SegmentationData):
    """Images and masks in ``root/images`` and ``root/masks`` with matching stems.

    ``a.png`` pairs with ``masks/a.png`` (or ``a.tif``...). A deterministic ``val_fraction`` of
    the stems (shuffled with ``split_seed``) is held out for validation. An optional
    ``root/test/images`` folder (masks in ``root/test/masks`` optional) is the test split.

    Args:
        root: dataset folder.
        val_fraction: share of images held out for validation (at least one when > 0).
        split_seed: seed of the train/val shuffle.
        images_dir, masks_dir: sub-folder names.
        **kwargs: loader and transform settings of :class:`SegmentationData`.
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        images_dir: str = "images",
        masks_dir: str = "masks",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1).")
        self.root = Path(root).expanduser()
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.images_dir, self.masks_dir = images_dir, masks_dir

    def _pairs(self, base: Path, masks_required: bool) -> tuple[list[Path], list[Path] | None]:
        image_dir, mask_dir = base / self.images_dir, base / self.masks_dir
        if not image_dir.is_dir():
            raise DataError(
                f"Image folder {image_dir.resolve()} does not exist; data=folder expects "
                f"<data.root>/{self.images_dir}/ and <data.root>/{self.masks_dir}/ (set data.root)."
            )
        images = _files(image_dir)
        if not images:
            raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir.resolve()}.")
        if not mask_dir.is_dir():
            if masks_required:
                raise DataError(f"Mask folder {mask_dir.resolve()} does not exist.")
            return list(images.values()), None
        masks = _files(mask_dir)
        missing = sorted(set(images) - set(masks))
        extra = sorted(set(masks) - set(images))
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"images without a mask: {', '.join(missing[:5])}")
            if extra:
                detail.append(f"masks without an image: {', '.join(extra[:5])}")
            raise DataError(f"Unmatched file stems in {base.resolve()}: {'; '.join(detail)}.")
        stems = sorted(images)
        return [images[s] for s in stems], [masks[s] for s in stems]

    def _split_stems(self, n: int) -> tuple[Sequence[int], Sequence[int]]:
        order = np.random.default_rng(self.split_seed).permutation(n)
        n_val = max(1, round(n * self.val_fraction)) if self.val_fraction > 0 else 0
        if n_val >= n:
            raise ConfigError(f"data.val_fraction={self.val_fraction} leaves no training image out of {n}.")
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    def _load(self, image_paths: Sequence[Path], mask_paths: Sequence[Path] | None) -> Split:
        images = [read_image(p) for p in image_paths]
        masks = None if mask_paths is None else [read_mask(p, self.num_classes) for p in mask_paths]
        if masks is not None:
            for image, mask, path in zip(images, masks, mask_paths or []):
                if image.shape[:2] != mask.shape:
                    raise DataError(f"Mask {path} is {mask.shape} but its image is {image.shape[:2]}.")
        return Split(images, masks, [p.stem for p in image_paths])

    def load_split(self, split: str) -> Split:
        if split == "test":
            return self._load(*self._pairs(self.root / "test", masks_required=False))
        images, masks = self._pairs(self.root, masks_required=True)
        assert masks is not None
        if split == "all":
            return self._load(images, masks)
        train, val = self._split_stems(len(images))
        chosen = train if split == "train" else val
        return self._load([images[i] for i in chosen], [masks[i] for i in chosen])
