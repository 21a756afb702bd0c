"""The data contract: decoded images in memory, a dataset of dicts, and loaders built from config.

A data config (``configs/data/*.yaml``) instantiates a subclass of :class:`SegmentationData`.
It loads and decodes its images once (``load_split``, in their own dtype), normalises each image
once by ``data.normalize`` (:mod:`unet_train.data.normalize`) and keeps them in memory; a
:class:`SegmentationDataset` applies the albumentations pipeline per item and yields
``{"image": float32 (C, H, W), "mask": int64 (H, W), "name": str}``.

Unlabelled pixels hold :data:`~unet_train.labels.IGNORE_INDEX` (255) in the mask from loading
on; the losses and metrics leave them out. With ``fold`` set, the train and val splits are the
k-fold split of the ``all`` split, the same way for every dataset (:func:`kfold_indices`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from unet_train.cpus import default_workers
from unet_train.data.dataset import SegmentationDataset, Split, array_to_tensor, image_to_tensor
from unet_train.data.instances import InstanceTarget
from unet_train.data.normalize import (
    describe,
    fill_dataset_stats,
    keeps_uint8,
    needs_dataset_stats,
    normalize_image,
    resolve_spec,
)
from unet_train.data.sampling import EpochSampler, check_oversample_classes
from unet_train.data.scale_warnings import is_wide_integer, warn_default_scaling
from unet_train.data.splits import check_shared_images, kfold_indices
from unet_train.data.transforms import padded_size
from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX, MAX_CLASSES
from unet_train.objects.heads import check_offset_axes, check_offsets_fit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
__all__ = ["SPLITS", "SegmentationData", "SegmentationDataset", "Split", "array_to_tensor", "image_to_tensor"]


class SegmentationData:
    """Base of every data config: loader settings, transforms, and splits held in memory.

    Subclasses implement :meth:`load_split`. Args common to all datasets:

    Args:
        in_channels: image channels the model gets (checked against the files); ``auto``: from
            the files, where the dataset supports it (:meth:`resolve_auto`).
        num_classes: classes including background (2 for a binary problem); ``auto`` as above.
        normalize: the intensity normalisation spec (:mod:`unet_train.data.normalize`); None is
            ``scale_linear`` with ``gain: null`` (uint8 / 255).
        patch_size: training crop side (used by the transforms through interpolation).
        batch_size: training batch size (validation uses ``val_batch_size``).
        num_workers: loader worker processes; 0 loads in the main process.
        train_transform, val_transform: albumentations pipelines (or None).
        device_augment: a batched augmentation applied by the training loop after the batch
            reaches the device (:class:`~unet_train.data.device_augment.DeviceAugment`), or None.
        fold, num_folds: with ``fold`` set (0..num_folds-1), train and val are the k-fold split
            of the ``all`` split (see :func:`kfold_indices`) instead of the dataset's own split.
        foreground_oversample: share of training crops centred on a foreground pixel; the
            crop transform reads it (``unet_train.data.transforms.ForegroundCrop``).
        oversample_classes: how that pixel's class is drawn: ``per_class`` (uniformly among the
            classes present, so rare classes are seen) or ``foreground`` (by pixel count).
    """

    def __init__(
        self,
        in_channels: int | str = 1,
        num_classes: int | str = 2,
        patch_size: int = 256,
        batch_size: int = 4,
        val_batch_size: int = 1,
        num_workers: int | str = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        samples_per_epoch: int | None = None,
        train_transform: Callable[..., dict[str, Any]] | None = None,
        val_transform: Callable[..., dict[str, Any]] | None = None,
        device_augment: Callable[..., Any] | None = None,
        normalize: Mapping[str, Any] | None = None,
        fold: int | None = None,
        num_folds: int = 5,
        foreground_oversample: float = 0.0,
        oversample_classes: str = "per_class",
    ) -> None:
        for name, value in (("patch_size", patch_size), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ConfigError(f"data.{name}={value} must be a positive integer.")
        if num_folds < 2:
            raise ConfigError(f"data.num_folds={num_folds} must be at least 2.")
        if fold is not None and not 0 <= fold < num_folds:
            raise ConfigError(
                f"data.fold={fold} is out of range for data.num_folds={num_folds}; choose a fold in "
                f"0..{num_folds - 1}, or data.fold=null for the dataset's own train/val split."
            )
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ConfigError(f"data.foreground_oversample={foreground_oversample} must be a share in [0, 1].")
        # auto: a training run measures it (engine/workers.py); elsewhere two workers, one CPU left to the model
        self.workers_auto = num_workers == "auto"
        if self.workers_auto:
            num_workers = default_workers()
        elif not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be 0 or more, or auto.")
        self._in_channels = _count_or_auto(in_channels, "in_channels", 1)
        self._num_classes = _count_or_auto(num_classes, "num_classes", 2)
        self.normalize = resolve_spec(normalize)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers: int = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.samples_per_epoch = samples_per_epoch
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.device_augment = device_augment
        self.fold, self.num_folds = fold, num_folds
        self.foreground_oversample = foreground_oversample
        self.oversample_classes = check_oversample_classes(oversample_classes)
        self._cache: dict[str, Split] = {}
        self._raw_all: Split | None = None  # the all split as stored, when folds cut it

    # Instance labels (the masks hold object ids): the training target drawn from them after augmentation
    # (a name of :data:`unet_train.data.instances.TARGETS`), or None for class masks.
    instance_target: str | None = None
    # The neighbour offsets of the ``affinities`` target (data.affinity_offsets, checked by objects/heads.py).
    affinity_offsets: list[tuple[int, ...]] | None = None

    # -- to implement -------------------------------------------------------------------------
    def load_split(self, split: str) -> Split:
        """Decode and return the images of ``split`` (train, val, test or all), as stored (any dtype)."""
        raise NotImplementedError

    def resolve_auto(self) -> None:
        """Set ``in_channels`` / ``num_classes`` given as ``auto`` from the data (subclasses that can)."""
        raise ConfigError(f"{type(self).__name__} cannot infer data.in_channels/num_classes: set them to numbers.")

    # -- channels and classes, possibly inferred ------------------------------------------------
    @property
    def in_channels(self) -> int:
        if self._in_channels is None:
            self.resolve_auto()
            assert self._in_channels is not None
        return self._in_channels

    @in_channels.setter
    def in_channels(self, value: int) -> None:
        self._in_channels = value

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self.resolve_auto()
            assert self._num_classes is not None
        if self._num_classes > MAX_CLASSES:
            raise ConfigError(
                f"data.num_classes={self._num_classes} is more than {MAX_CLASSES}: mask value {IGNORE_INDEX} marks "
                f"unlabelled pixels, so classes are 0..{MAX_CLASSES - 1}."
            )
        return self._num_classes

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self._num_classes = value

    # -- shared -------------------------------------------------------------------------------
    def split(self, name: str) -> Split:
        """The decoded split, loaded once and cached in memory; shapes and labels are checked."""
        if name not in SPLITS:
            raise ConfigError(f"split={name!r} is not known; choose one of {', '.join(SPLITS)}.")
        if name not in self._cache:
            if name != "train" and needs_dataset_stats(self.normalize):
                self.split("train")  # fills the dataset statistics every split is normalised with
            split = self.raw_split(name)
            if len(split) == 0:
                where = f" in {Path(self.root).resolve()}" if hasattr(self, "root") else ""
                raise DataError(
                    f"The {name!r} split of {type(self).__name__}{where} is empty; check data.root and the split "
                    "settings (data.val_fraction, data.train_slices, data.val_slices)."
                )
            self._check(split, name)
            if needs_dataset_stats(self.normalize):  # only the training split gets here
                self.normalize = fill_dataset_stats(self.normalize, split.images)
            split = self._normalized(split, name)
            check_shared_images(type(self).__name__, name, split, self._cache)
            self._cache[name] = split
        return self._cache[name]

    def raw_split(self, name: str) -> Split:
        """The split as stored, before normalisation (``data.fold``'s part of ``all`` when set); not cached."""
        folded = self.fold is not None and name in ("train", "val")
        return self._fold_split(name) if folded else self.load_split(name)

    def _fold_split(self, name: str) -> Split:
        """Fold ``self.fold``'s train or val part of the ``all`` split (the images are shared, not copied)."""
        if self._raw_all is None:  # as stored: each fold is normalised like any split (dataset stats from its train)
            self._raw_all = self.load_split("all")
        pool = self._raw_all
        if len(pool) < self.num_folds:
            raise ConfigError(
                f"data.num_folds={self.num_folds} is more than the {len(pool)} labelled images of "
                f"{type(self).__name__}; choose data.num_folds<={len(pool)}."
            )
        train, val = kfold_indices(len(pool), self.fold or 0, self.num_folds)
        chosen = train if name == "train" else val
        masks = pool.masks
        return Split(
            [pool.images[i] for i in chosen],
            None if masks is None else [masks[i] for i in chosen],
            [pool.names[i] for i in chosen],
        )

    def _normalized(self, split: Split, name: str) -> Split:
        """Each image normalised once; uint8 images under plain division by 255 stay uint8 (see keeps_uint8)."""
        spec = self.normalize
        images = [im if keeps_uint8(spec, im.dtype) else normalize_image(im, spec) for im in split.images]
        megabytes = sum(im.nbytes for im in images) / 2**20
        dtypes = sorted({str(im.dtype) for im in split.images})
        log.info("%s split: %d %s image(s), %s (%.0f MB in memory)", name, len(images), "/".join(dtypes),
                 describe(spec), megabytes)  # fmt: skip
        if name == "train" and spec["scheme"] == "scale_linear" and spec["gain"] is None:
            ranges: dict[np.dtype, tuple[int, int]] = {}
            for im in (im for im in split.images if is_wide_integer(im.dtype)):
                low, high = int(im.min()), int(im.max())
                seen = ranges.get(im.dtype, (low, high))
                ranges[im.dtype] = (min(seen[0], low), max(seen[1], high))
            warn_default_scaling([im.dtype for im in split.images], ranges)
        return Split(images, split.masks, split.names)

    def _check(self, split: Split, name: str) -> None:
        for i, image in enumerate(split.images):
            channels = 1 if image.ndim == 2 else image.shape[2]
            if channels != self.in_channels:
                raise DataError(
                    f"{split.names[i]} has {channels} channel(s) but data.in_channels={self.in_channels}; "
                    f"set data.in_channels={channels}."
                )
            if split.masks is None or self.instance_target is not None:  # ids: checked when read
                continue
            mask = split.masks[i]
            if mask.shape != image.shape[:2]:
                raise DataError(f"{split.names[i]}: image is {image.shape[:2]} but its mask is {mask.shape}.")
            labelled = mask[mask != IGNORE_INDEX]
            top = int(labelled.max()) if labelled.size else 0
            if top >= self.num_classes or (labelled.size and int(labelled.min()) < 0):
                raise DataError(
                    f"{split.names[i]}: mask value {top} is outside the classes 0..{self.num_classes - 1}; "
                    f"set data.num_classes or fix the mask."
                )
        if name == "train":
            smallest = min(min(im.shape[:2]) for im in split.images)
            if self.train_transform is not None and self.patch_size > smallest:
                padded = padded_size(self.train_transform)
                if padded is None or min(padded) < self.patch_size:
                    raise ConfigError(
                        f"data.patch_size={self.patch_size} is larger than the smallest training image "
                        f"({smallest} px); choose data.patch_size<={smallest}. Or pad the images first "
                        "(albumentations.PadIfNeeded with min_height/min_width >= data.patch_size before the crop)."
                    )
                small = sum(min(im.shape[:2]) < self.patch_size for im in split.images)
                log.info(
                    "%d training image(s) smaller than data.patch_size=%d are padded to at least %dx%d by PadIfNeeded",
                    small, self.patch_size, *padded,
                )  # fmt: skip

    def dataset(
        self,
        split: str,
        augment: bool | None = None,
        sample_weight: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> SegmentationDataset:
        """The dataset of ``split``; training augmentation applies to ``train`` unless told otherwise."""
        augment = split == "train" if augment is None else augment
        transform = self.train_transform if augment else self.val_transform
        items = self.split(split)  # loading decides instance_target where data.labels=auto
        target = self.instance_target
        if target == "affinities" and self.affinity_offsets:  # offsets of the images' axes; training crops fit them
            check_offset_axes(self.affinity_offsets, 2)
            if augment:
                check_offsets_fit(self.affinity_offsets, self.patch_size)
        to_target = None if target is None else InstanceTarget(target, self.affinity_offsets)
        return SegmentationDataset(items, transform, sample_weight, to_target)

    def dataloader(
        self,
        split: str,
        *,
        shuffle: bool | None = None,
        sampler: Sampler | None = None,
        pin_memory: bool = False,
        seed: int = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        sample_weight: Callable[[np.ndarray], np.ndarray] | None = None,
        training: bool | None = None,
    ) -> DataLoader:
        """A DataLoader of ``split``: training shuffles, drops the last partial batch and samples crops.

        ``training`` (default: ``split == "train"``) picks how the split is read: for training
        (augmented, ``batch_size``, ``samples_per_epoch`` draws, last partial batch dropped) or for
        scoring (each image once, whole, with ``val_transform`` and ``val_batch_size``), which is
        how validation and ``unet-eval`` read any split, the training split included.

        ``samples_per_epoch`` draws that many random crops per epoch (with replacement over the
        images); useful when a dataset has only a handful of large images, like ISBI's 25.
        Shuffled loaders use an :class:`EpochSampler` seeded with ``seed``: call
        :func:`unet_train.data.sampling.set_loader_epoch` before each epoch. ``sample_weight``
        adds a per-pixel ``weight`` map to each item (see :class:`SegmentationDataset`).
        """
        train = split == "train" if training is None else training
        dataset = self.dataset(split, augment=train, sample_weight=sample_weight)
        shuffle = train if shuffle is None else shuffle
        if sampler is None and (shuffle or (train and self.samples_per_epoch)):
            num_samples = self.samples_per_epoch if train else None
            sampler = EpochSampler(len(dataset), seed, shuffle=True, num_samples=num_samples)
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=worker_init_fn,
            # Its own generator: creating the loader's iterator (which draws the workers' base
            # seed) must not advance the global torch RNG that dropout draws from.
            generator=torch.Generator().manual_seed(seed),
            pin_memory=pin_memory and self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            drop_last=train and len(dataset) >= self.batch_size,
        )


def _count_or_auto(value: int | str, key: str, smallest: int) -> int | None:
    """A count setting: an integer >= ``smallest``, or ``auto`` (None: inferred from the data)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        what = "at least 2 (background + one class)" if key == "num_classes" else "a positive integer"
        raise ConfigError(f"data.{key}={value!r} must be {what}, or auto.")
    return value
