"""A folder of images and masks: ``root/images/*`` and ``root/masks/*`` matched by file stem."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unet_train.data.base import SegmentationData, Split
from unet_train.data.instances import (
    check_labels,
    encode_instances,
    instance_classes,
    looks_like_instances,
    wide_integers,
)
from unet_train.data.masks import encode_mask, infer_num_classes, value_list
from unet_train.data.reading import (
    IMAGE_SUFFIXES,
    channels_of,
    is_tiff,
    match_channels,
    probe_channels,
    read_image,
    read_mask,
)
from unet_train.data.splits import random_split
from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.objects import heads

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "encode_mask", "infer_num_classes", "read_image", "read_mask", "read_valid"]

log = logging.getLogger(__name__)


def read_valid(path: Path) -> np.ndarray:
    """Read a valid-pixel mask (e.g. a field of view) as booleans: non-zero = labelled.

    A palette PNG's values are its indices (as for masks), not its colours; other files their pixels.
    """
    if not is_tiff(path):
        try:
            with Image.open(path) as opened:
                palette = opened.mode in ("P", "PA")
        except Exception as exc:
            raise DataError(f"Could not read valid-pixel mask {path}: {exc}") from exc
        if palette:
            return np.asarray(read_mask(path) != 0)
    array = read_image(path)  # alpha dropped
    return np.asarray(array.any(axis=2) if array.ndim == 3 else array != 0)


def _files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:  # a.png and a.tif: which one is meant?
            raise DataError(
                f"{folder.resolve()} holds {by_stem[path.stem].name} and {path.name}, two files of one stem; "
                "keep one of them (files pair with their mask by stem)."
            )
        by_stem[path.stem] = path
    return by_stem


FOREGROUNDS = ("object", "membrane")

Pair = tuple[str, Path, Path | None]  # stem, image, its mask (None: no mask folder)


def pair_files(
    base: Path,
    images_dir: str,
    masks_dir: str,
    list_files: Callable[[Path], dict[str, Path]],
    kind: str,
    dataset: str,
    masks_required: bool,
) -> list[Pair]:
    """The files of ``base/images_dir`` with their masks in ``base/masks_dir``, matched by stem (``list_files`` lists a
    folder by stem); sorted by stem where there are masks. ``kind`` names what the images are in the messages
    (``images (.png, ...)``), ``dataset`` the config that expects the layout (``data=folder``)."""
    image_dir, mask_dir = base / images_dir, base / masks_dir
    if not image_dir.is_dir():
        raise DataError(
            f"Image folder {image_dir.resolve()} does not exist; {dataset} expects "
            f"<data.root>/{images_dir}/ and <data.root>/{masks_dir}/ (set data.root)."
        )
    images = list_files(image_dir)
    if not images:
        raise DataError(f"No {kind} in {image_dir.resolve()}.")
    if not mask_dir.is_dir():
        if masks_required:
            raise DataError(f"Mask folder {mask_dir.resolve()} does not exist.")
        return [(stem, path, None) for stem, path in images.items()]
    masks = list_files(mask_dir)
    missing = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"images without a mask: {', '.join(missing[:5])}")
        if extra:
            detail.append(f"masks without an image: {', '.join(extra[:5])}")
        fix = "name each mask after its image."
        raise DataError(f"Unmatched file stems in {base.resolve()}: {'; '.join(detail)}; {fix}")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


class ImageFolder(SegmentationData):
    """Images and masks in ``root/images`` and ``root/masks`` with matching stems.

    ``a.png`` pairs with ``masks/a.png`` (or ``a.tif``...). Images are read in their own dtype
    (:mod:`unet_train.data.reading`); grey and RGB images are converted to ``in_channels`` (grey
    copied to 3 channels, RGB to grey by luminance); ``in_channels`` and ``num_classes`` may be
    ``auto`` (see :meth:`resolve_auto`). A deterministic ``val_fraction`` of
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
        foreground: what the positive class of a binary problem is, for the V-Rand/V-Info
            segments and ``unet-predict instances=true instance_method=auto``: ``object`` (cells,
            nuclei, vessels: the segments are its connected components) or ``membrane`` (the
            border between cells, as in ISBI 2012: the segments are what it encloses).
        labels: ``classes`` (mask values are class indices), ``instances`` (each value is one object's id; the
            model learns ``target`` from them, :mod:`unet_train.data.instances`) or ``auto`` (instances when
            ``num_classes`` is auto and the masks are 16/32-bit with many values; the log says what it found).
        target: the training target drawn from instance ids after augmentation: ``boundary``, ``distance`` or
            ``affinities``.
        affinity_offsets: the ``affinities`` target's neighbour offsets (None: short- and long-range along each axis).
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
        foreground: str = "object",
        labels: str = "auto",
        target: str = "boundary",
        affinity_offsets: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_labels(labels, target)
        self.target = target
        self.affinity_offsets = heads.affinity_offsets({"affinity_offsets": affinity_offsets})
        if labels == "auto" and self._num_classes is not None:  # a number of classes says the masks are classes
            labels = "classes"
        self._labels = labels
        if labels == "instances":
            self._use_instances(given=self._num_classes)
        if foreground not in FOREGROUNDS:
            raise ConfigError(
                f"data.foreground={foreground!r} must be object (the positive class is the thing segmented: cells, "
                "nuclei, vessels) or membrane (it is the border between cells, as in ISBI 2012)."
            )
        self.foreground = foreground
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1).")
        self.ignore_index, self.valid_dir = ignore_index, valid_dir
        if self._num_classes is not None:  # with num_classes=auto, checked once the classes are known
            self._check_ignore_index(self._num_classes)
        self.root = Path(root).expanduser()
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self._raw_masks: dict[Path, np.ndarray] = {}  # read while inferring num_classes, used once by _load

    def _use_instances(self, given: int | None = None) -> None:
        """The masks hold object ids: the model learns ``data.target``'s classes from them."""
        classes = instance_classes(self.target, given)
        self._labels, self.instance_target, self._num_classes = "instances", self.target, classes

    @property
    def labels(self) -> str:
        """``classes`` or ``instances``; ``auto`` is decided from the masks on first use."""
        if self._labels == "auto":
            self.resolve_auto()
        return self._labels

    def _check_ignore_index(self, num_classes: int) -> None:
        if self.instance_target is not None:  # any id may mark unlabelled pixels
            return
        if self.ignore_index is not None and not num_classes <= self.ignore_index <= 65535:
            raise ConfigError(
                f"data.ignore_index={self.ignore_index} must be a mask value that is no class: at least "
                f"data.num_classes={num_classes} (255 is common), or null."
            )

    def resolve_auto(self) -> None:
        """``auto`` channels and classes from the training and validation files (not the test split).

        Channels: the most any image has, so a folder of grey and RGB images gives 3 (grey copied
        to 3 channels). Classes: 2 for binary {0,255} or {0,1} masks, else the largest index + 1.
        """
        images, masks = self._pairs(self.root, masks_required=True)
        where = str(self.root.resolve())
        if self._in_channels is None:
            counts = Counter(probe_channels(p) for p in images)
            found = sorted(counts)
            if len(found) > 1 and found != [1, 3]:
                raise DataError(
                    f"Images in {where} have {' and '.join(map(str, found))} channels; only grey and RGB mix "
                    "(grey becomes 3 channels): set data.in_channels or convert the files."
                )
            self._in_channels = found[-1]
            mixed = f" ({counts[3]} RGB, {counts[1]} grey copied to 3 channels)" if found == [1, 3] else ""
            log.info("data.in_channels=auto: %d%s", self._in_channels, mixed)
        if self._num_classes is None:
            values: set[int] = set()
            for path in masks or []:
                raw = read_mask(path)
                self._raw_masks[path] = raw
                values.update(np.unique(raw).tolist())
            ids = False  # labels=auto, masks of a 16/32-bit integer type: maybe ids of a few objects
            if self._labels == "auto":
                if self._detect_instances(list(self._raw_masks.values())):
                    return
                self._labels, ids = "classes", wide_integers([m.dtype for m in self._raw_masks.values()])
            if self.ignore_index is not None and self.ignore_index in values:  # unlabelled, not a class
                values.discard(self.ignore_index)
                if values <= {0}:
                    raise DataError(
                        f"Masks in {where} hold only 0 and data.ignore_index={self.ignore_index}: no pixel would be "
                        "of a foreground class. Binary {0, 255} masks mark the foreground with 255: set "
                        "data.ignore_index=null (or to the value that marks unlabelled pixels)."
                    )
            jpeg = any(path.suffix.lower() in (".jpg", ".jpeg") for path in masks or [])
            self._num_classes = infer_num_classes(values, where, jpeg, ids)
            self._check_ignore_index(self._num_classes)
            log.info("data.num_classes=auto: %d (mask values %s)", self._num_classes, value_list(values))

    def _detect_instances(self, masks: list[np.ndarray]) -> bool:
        """``labels: auto``: switch to instances if ``masks`` look like object ids, and say so."""
        if not looks_like_instances(masks):
            return False
        self._use_instances()
        ids = [len(np.unique(m[m != 0])) for m in masks]
        log.info(
            "data.labels=auto: instances (%s masks, %d to %d object ids per image) -> data.target=%s, %d classes; "
            "data.labels=classes reads them as class indices",
            "/".join(sorted({str(m.dtype) for m in masks})), min(ids), max(ids), self.target, self._num_classes,
        )  # fmt: skip
        return True

    def _pairs(self, base: Path, masks_required: bool) -> tuple[list[Path], list[Path] | None]:
        kind = f"images ({', '.join(IMAGE_SUFFIXES)})"
        pairs = pair_files(base, self.images_dir, self.masks_dir, _files, kind, "data=folder", masks_required)
        masks = [mask for _, _, mask in pairs if mask is not None]
        return [image for _, image, _ in pairs], masks if len(masks) == len(pairs) else None

    def _split_stems(self, n: int) -> tuple[Sequence[int], Sequence[int]]:
        return random_split(n, self.val_fraction, self.split_seed)

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
        in_channels, num_classes = self.in_channels, self.num_classes  # resolves auto first
        images = [read_image(p) for p in image_paths]
        converted = Counter(channels_of(im) for im in images if channels_of(im) != in_channels)
        if converted:
            how = {1: "grey copied to 3 channels", 3: "RGB to grey (ITU-R BT.601 luminance)"}
            log.info(
                "data.in_channels=%d: %s", in_channels,
                ", ".join(f"{n} image(s) {how.get(c, f'with {c} channels')}" for c, n in sorted(converted.items())),
            )  # fmt: skip
        images = [match_channels(im, in_channels, str(p)) for im, p in zip(images, image_paths)]
        masks = None
        if mask_paths is not None:
            raw = [self._raw_masks.pop(p) if p in self._raw_masks else read_mask(p) for p in mask_paths]
            if self.instance_target is not None:
                masks = [encode_instances(m, p, self.ignore_index) for m, p in zip(raw, mask_paths)]
            else:
                masks = [encode_mask(m, num_classes, p, self.ignore_index) for m, p in zip(raw, mask_paths)]
            valid_files = self._valid_files(base)
            for image, mask, path, image_path in zip(images, masks, mask_paths, image_paths):
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
