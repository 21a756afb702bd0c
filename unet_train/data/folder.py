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
from unet_train.labels import IGNORE_INDEX

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


def read_mask(path: Path, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Read a mask as class indices: binary {0,255} or {0,1}, or indexed values 0..K-1.

    Pixels equal to ``ignore_index`` (a value that is no class) are unlabelled: they become
    ``IGNORE_INDEX`` and the other values are read as without them.
    """
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
    ignored = None
    if ignore_index is not None:
        ignored = mask == ignore_index
        values = values[values != ignore_index]
    if num_classes == 2 and set(values.tolist()) <= {0, 255}:
        labels = (mask == 255).astype(np.uint8)
    elif values.max(initial=0) >= num_classes or values.min(initial=0) < 0:
        unlabelled = "" if ignore_index is not None else "; set data.ignore_index if one value marks unlabelled pixels"
        raise DataError(
            f"Mask {path} has values {values.tolist()[:10]}; expected {{0, 255}} or {{0, 1}} for a binary "
            f"problem, or class indices 0..{num_classes - 1} (data.num_classes={num_classes}){unlabelled}."
        )
    else:
        labels = mask.astype(np.uint8 if num_classes <= 256 else np.int64)
    if ignored is not None:
        labels[ignored] = IGNORE_INDEX
    return labels


def read_valid(path: Path) -> np.ndarray:
    """Read a valid-pixel mask (e.g. a field of view) as booleans: non-zero = labelled."""
    try:
        array = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else skio.imread(path)
    except Exception as exc:
        raise DataError(f"Could not read valid-pixel mask {path}: {exc}") from exc
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (2, 4):  # grey or RGB with alpha: drop alpha
        array = array[..., :-1]
    if array.ndim == 3:
        array = array.any(axis=2)
    if array.ndim != 2:
        raise DataError(f"Valid-pixel mask {path} has shape {array.shape}; expected a 2D image (non-zero = labelled).")
    return array != 0


def _files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return {p.stem: p for p in files}


class ImageFolder(SegmentationData):
    """Images and masks in ``root/images`` and ``root/masks`` with matching stems.

    ``a.png`` pairs with ``masks/a.png`` (or ``a.tif``...). A deterministic ``val_fraction`` of
    the stems (shuffled with ``split_seed``) is held out for validation. An optional
    ``root/test/images`` folder (masks in ``root/test/masks`` optional) is the test split.

    Unlabelled pixels: mask pixels equal to ``ignore_index``, and pixels that are zero in an
    optional ``root/valid/a.png`` (a field of view, say; non-zero = labelled; an image without a
    file there is labelled everywhere). Both count in no loss and no metric.

    Args:
        root: dataset folder.
        val_fraction: share of images held out for validation (at least one when > 0).
        split_seed: seed of the train/val shuffle.
        images_dir, masks_dir: sub-folder names.
        ignore_index: mask value of unlabelled pixels (not a class), or None.
        valid_dir: sub-folder of valid-pixel masks (used when it exists).
        **kwargs: loader and transform settings of :class:`SegmentationData`.
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        images_dir: str = "images",
        masks_dir: str = "masks",
        ignore_index: int | None = None,
        valid_dir: str = "valid",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1).")
        if ignore_index is not None and not self.num_classes <= ignore_index <= 65535:
            raise ConfigError(
                f"data.ignore_index={ignore_index} must be a mask value that is no class: at least "
                f"data.num_classes={self.num_classes} (255 is common), or null."
            )
        self.root = Path(root).expanduser()
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.ignore_index, self.valid_dir = ignore_index, valid_dir

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

    def _valid_files(self, base: Path) -> dict[str, Path]:
        """The valid-pixel masks in ``base/valid_dir`` by stem ({} without the folder); each must have an image."""
        folder = base / self.valid_dir
        if not folder.is_dir():
            return {}
        files = _files(folder)
        orphans = sorted(set(files) - set(_files(base / self.images_dir)))
        if orphans:
            raise DataError(
                f"Valid-pixel masks without an image in {folder.resolve()}: {', '.join(orphans[:5])}; "
                "name each after its image (same stem) or remove it."
            )
        return files

    def _load(self, image_paths: Sequence[Path], mask_paths: Sequence[Path] | None, base: Path) -> Split:
        images = [read_image(p) for p in image_paths]
        masks = None if mask_paths is None else [read_mask(p, self.num_classes, self.ignore_index) for p in mask_paths]
        if masks is not None:
            valid_files = self._valid_files(base)
            for image, mask, path, image_path in zip(images, masks, mask_paths or [], image_paths):
                if image.shape[:2] != mask.shape:
                    raise DataError(f"Mask {path} is {mask.shape} but its image is {image.shape[:2]}.")
                valid_path = valid_files.get(image_path.stem)
                if valid_path is None:  # no file: every pixel is labelled
                    continue
                valid = read_valid(valid_path)
                if valid.shape != mask.shape:
                    raise DataError(
                        f"Valid-pixel mask {valid_path} is {valid.shape} but its image {image_path.name} is "
                        f"{image.shape[:2]}; give it the image's size."
                    )
                mask[~valid] = IGNORE_INDEX
        return Split(images, masks, [p.stem for p in image_paths])

    def load_split(self, split: str) -> Split:
        if split == "test":
            base = self.root / "test"
            return self._load(*self._pairs(base, masks_required=False), base)
        images, masks = self._pairs(self.root, masks_required=True)
        assert masks is not None
        if split == "all":
            return self._load(images, masks, self.root)
        train, val = self._split_stems(len(images))
        chosen = train if split == "train" else val
        return self._load([images[i] for i in chosen], [masks[i] for i in chosen], self.root)
