"""Volumes for 3D training: cases read lazily, random 3D crops, and the data module base that serves them.

A :class:`~unet_train.data.volume_case.VolumeCase` is one image volume (a
:class:`~unet_train.data.volume_readers.Volume`, so TIFF, NIfTI, HDF5 and Zarr files, or an array in memory) with
its label volume, voxel spacing and intensity scaling.
Training reads random crops of ``data.patch_size`` (``[z, y, x]``, or one int for a cube) straight from the
file where the format allows it (Zarr/HDF5 chunks, the NIfTI proxy); validation, ``unet-eval`` and the
checks read whole volumes. A :class:`VolumeData` yields ``{"image": float32 (C, D, H, W), "mask": int64
(D, H, W), "name": str}``; with ``spatial_dims=2`` it is the 2D data module it derives from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.utils import get_class
from omegaconf import ListConfig, OmegaConf
from torch.utils.data import Dataset

from unet_train.data.base import SegmentationData, array_to_tensor
from unet_train.data.instances import InstanceTarget
from unet_train.data.limits import check_pixels
from unet_train.data.normalize import (
    fill_dataset_stats,
    needs_dataset_stats,
    resolve_spec,
)
from unet_train.data.scale_warnings import is_wide_integer, warn_default_scaling
from unet_train.data.sections import SectionDataset, check_context_slices
from unet_train.data.volume_case import Shape3, VolumeCase, crop_origin, item_seed
from unet_train.data.volume_readers import Volume, sample_pixels
from unet_train.errors import ConfigError, DataError
from unet_train.objects.heads import check_offset_axes, check_offsets_fit

log = logging.getLogger(__name__)


def stated_unit(volume: Volume) -> str | None:
    """The one unit (OME-NGFF name, e.g. ``micrometer``) of a volume's stated z, y, x sizes; None where the file
    states no size, no unit, or different units on different axes."""
    units = {volume.units.get(axis) for axis in "zyx" if axis in volume.scale}
    return units.pop() if len(units) == 1 and None not in units else None


def voxel_spacing(spacing: Any) -> tuple[float, float, float]:
    """``data.spacing`` as three positive, finite voxel sides ``(z, y, x)``; anything else (a string, nested
    lists, zero, NaN) is refused in one line."""
    sides: list[float] = []
    if isinstance(spacing, Sequence) and not isinstance(spacing, str | bytes):
        try:
            sides = [float(s) for s in spacing if not isinstance(s, bool)]
        except (TypeError, ValueError):
            sides = []
    if len(sides) != 3 or len(sides) != len(spacing) or not all(0 < s < math.inf for s in sides):
        shown = OmegaConf.to_container(spacing) if isinstance(spacing, ListConfig) else spacing
        raise ConfigError(f"data.spacing={shown!r} must be three positive, finite voxel sides [z, y, x], or null.")
    return (sides[0], sides[1], sides[2])


def spacing_label(spacing: Sequence[float], unit: str | None) -> str:
    """What a length measured with ``spacing`` is in: its ``unit``, ``voxel`` for unit sides without one, else
    ``spacing unit`` (the file or data.spacing gave sizes but no unit)."""
    if unit:
        return unit
    return "voxel" if all(float(s) == 1.0 for s in spacing) else "spacing unit"


def patch_shape(patch_size: int | Sequence[int]) -> Shape3:
    """``data.patch_size`` as ``(z, y, x)``: an int is a cube; a list gives the three sides."""
    sides = [patch_size] * 3 if isinstance(patch_size, int) else list(patch_size)
    if len(sides) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise ConfigError(f"data.patch_size={patch_size!r} must be a positive int or three of them [z, y, x].")
    return (int(sides[0]), int(sides[1]), int(sides[2]))


class VolumeDataset(Dataset):
    """Items of volume cases: random crops of ``size`` (training) or whole volumes (``size`` None)."""

    def __init__(
        self,
        cases: Sequence[VolumeCase],
        size: Shape3 | None = None,
        transform: Callable[..., Any] | None = None,
        foreground_p: float = 0.0,
        to_target: InstanceTarget | None = None,
    ) -> None:
        self.cases, self.size, self.transform, self.foreground_p = list(cases), size, transform, foreground_p
        # Object ids: the augmented ids -> (training target, ids, the target's maps), drawn after augmentation.
        self.to_target = to_target

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def has_masks(self) -> bool:
        return all(case.mask is not None for case in self.cases)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item_seed(index, self.size is not None or self.transform is not None)
        case = self.cases[index]
        rng = np.random.default_rng(seed)
        size = self.size or case.shape[:3]
        origin = crop_origin(case, size, rng, self.foreground_p) if self.size else (0, 0, 0)
        image = case.read_image(origin, size)
        mask = None if case.mask is None else case.read_mask(origin, size)
        if self.transform is not None:
            image, mask = self.transform(image, mask, rng, case.spacing)
        item: dict[str, Any] = {"image": array_to_tensor(np.moveaxis(image, -1, 0)), "name": case.name}
        if mask is not None:
            if self.to_target is not None:
                mask, ids, extras = self.to_target(mask, case.spacing)
                item["instances"] = array_to_tensor(ids, np.int64)
                item.update({name: array_to_tensor(value, np.float32) for name, value in extras.items()})
            item["mask"] = array_to_tensor(mask, np.int64)
        return item


@dataclass
class VolumeSplit:
    """The cases of one split (``images`` holds them, as :class:`~unet_train.data.base.Split` holds images)."""

    images: list[VolumeCase]
    names: list[str]

    @property
    def masks(self) -> list[Volume] | None:
        masks = [case.mask for case in self.images if case.mask is not None]
        return masks if len(masks) == len(self.images) else None

    def __len__(self) -> int:
        return len(self.images)


class VolumeData(SegmentationData):
    """A data module that serves 3D volumes when ``spatial_dims=3`` (subclasses implement :meth:`load_cases`).

    Args:
        spatial_dims: 3 trains on volumes; 2 is the 2D data module of the subclass (slices).
        spacing: voxel size ``[z, y, x]`` for every volume, over what the files state (None: from the files,
            1 where a file states none).
        volume_transform: the 3D training augmentation (a :class:`~unet_train.data.augment3d.Compose3D`).
        patch_size: ``[z, y, x]`` or one int (a cube); a volume shorter than it on an axis is padded there (the
            padding's labels ignored), so every crop has this shape. A 2.5D run crops ``[y, x]`` of it.
        context_slices: ``k`` > 0 trains a 2.5D model (``spatial_dims=2``): ``2k + 1`` sections as channels, the
            centre one's mask (:mod:`unet_train.data.sections`); 0: off.
        **kwargs: as :class:`SegmentationData`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        spacing: Sequence[float] | None = None,
        volume_transform: Callable[..., Any] | None = None,
        patch_size: int | Sequence[int] = 256,
        context_slices: int = 0,
        **kwargs: Any,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ConfigError(f"data.spatial_dims={spatial_dims} must be 2 (images, slices) or 3 (volumes).")
        self.context_slices = check_context_slices(context_slices, spatial_dims)
        # A 2D run reads its sections from the volume cases (lazily, with their context) where it has context or
        # the dataset has no 2D images of its own (data=volumes); else it is the 2D data module (load_split).
        self.from_sections = spatial_dims == 2 and (context_slices > 0 or self.planes_from_volumes)
        if spatial_dims == 2 and not self.from_sections and not isinstance(patch_size, int):
            raise ConfigError(f"data.patch_size={patch_size!r} is a list: give one int, or data.spatial_dims=3.")
        shape = patch_shape(patch_size)
        super().__init__(patch_size=max(shape), **kwargs)
        if (spatial_dims == 3 or self.from_sections) and self.fold is not None:
            what = "data.spatial_dims=3" if spatial_dims == 3 else f"data.context_slices={context_slices}"
            raise ConfigError(
                f"data.fold={self.fold} cuts a dataset into 2D folds; with {what} set data.fold=null "
                "(and choose the split with the dataset's own settings)."
            )
        self.spatial_dims = spatial_dims
        self.patch = shape
        self.spacing_override = None if spacing is None else voxel_spacing(spacing)
        self.volume_transform = volume_transform
        self._cases: dict[str, VolumeSplit] = {}

    # Whether a 2D run (without context) also reads sections of the volume cases (data=volumes has no load_split).
    planes_from_volumes = False

    # -- to implement -------------------------------------------------------------------------
    def load_cases(self, split: str) -> list[VolumeCase]:
        """The cases of ``split`` (train, val, test or all), opened but not read."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, ...]:
        """The training volumes' voxel size ``(z, y, x)`` (their median per axis)."""
        cases = self.split("train").images
        return tuple(float(np.median([c.spacing[a] for c in cases])) for a in range(3))

    def split(self, name: str) -> Any:
        if self.spatial_dims == 2 and not self.from_sections:
            return super().split(name)
        if name not in ("train", "val", "test", "all"):
            raise ConfigError(f"split={name!r} is not known; choose one of train, val, test, all.")
        if name not in self._cases:
            if name != "train" and needs_dataset_stats(self.normalize):
                self.split("train")  # the dataset statistics every split is scaled with
            cases = self.load_cases(name)
            if not cases:
                raise DataError(f"The {name!r} split of {type(self).__name__} is empty; check data.root and the split.")
            for case in cases:
                if name != "train":  # read a whole volume at a time (training reads random crops)
                    check_pixels(case.image.name, case.shape)
                self._check_case(case)
            if needs_dataset_stats(self.normalize):  # only the training split gets here
                self.normalize = fill_dataset_stats(self.normalize, [_pixels(c.image) for c in cases])
            if name == "train" and self.normalize["scheme"] == "scale_linear" and self.normalize["gain"] is None:
                _say_narrow_range(cases)
            for case in cases:
                case.spec = volume_spec(case.image, self.normalize)
            if name == "train":
                self._fit_patch(cases)
            self._cases[name] = VolumeSplit(cases, [c.name for c in cases])
            log.info("%s split: %d volume(s) %s, spacing %s", name, len(cases),
                     ", ".join(f"{c.name} {c.shape[:3]}" for c in cases[:4]), cases[0].spacing)  # fmt: skip
        return self._cases[name]

    def _check_case(self, case: VolumeCase) -> None:
        if case.shape[3] != self.in_channels:
            raise DataError(
                f"{case.image.name} has {case.shape[3]} channel(s) but data.in_channels={self.in_channels}; set "
                f"data.in_channels={case.shape[3]} (or data.channels=first|last if the channels were read as z)."
            )
        case.num_classes, case.ignore_index = self.num_classes, getattr(self, "ignore_index", None)
        case.instances = self.instance_target is not None
        values = case.scan() - ({case.ignore_index} if case.ignore_index is not None else set())
        if case.instances:  # ids: checked as scanned (check_ids)
            return
        binary = self.num_classes == 2 and values <= {0, 255}
        if values and not binary and (max(values) >= self.num_classes or min(values) < 0):
            raise DataError(
                f"{case.mask.name if case.mask else case.name}: mask values {sorted(values)[:10]} are outside the "
                f"classes 0..{self.num_classes - 1}; set data.num_classes, data.ignore_index, or fix the mask."
            )

    def _fit_patch(self, cases: Sequence[VolumeCase]) -> None:
        """Keep ``data.patch_size`` (a batch stacks crops of one shape) and say which volumes are padded to it."""
        if self.from_sections:  # a 2.5D or 2D crop is one section deep (its context is not the patch's z)
            self.patch = (1, *self.patch[1:])
        small = [c for c in cases if any(n < p for n, p in zip(c.shape[:3], self.patch))]
        if small:
            log.info(
                "%d training volume(s) smaller than the crop %s (z, y, x) on some axis (%s): their crops are padded "
                "to it, the image mirrored and the padding's labels ignored",
                len(small), list(self.patch), ", ".join(f"{c.name} {c.shape[:3]}" for c in small[:4]),
            )  # fmt: skip

    def dataset(
        self, split: str, augment: bool | None = None, sample_weight: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> Any:
        if self.spatial_dims == 2 and not self.from_sections:
            return super().dataset(split, augment, sample_weight)
        if sample_weight is not None:
            raise ConfigError(
                "Per-pixel loss weights (loss=weighted_bce) are for 2D images; choose another loss for 3D and 2.5D."
            )
        augment = split == "train" if augment is None else augment
        cases = self.split(split).images
        to_target = self._instance_target(augment)
        if self.from_sections:
            if not augment:
                return SectionDataset(cases, self.context_slices)
            plane = self.train_transform  # data=isbi's albumentations (it crops); else crops read, the 3D transform
            crop = None if plane is not None else (self.patch[1], self.patch[2])
            block = None if plane is not None else self.volume_transform
            return SectionDataset(cases, self.context_slices, True, crop, plane, block, self.foreground_oversample)
        if not augment:
            return VolumeDataset(cases, to_target=to_target)
        return VolumeDataset(cases, self.patch, self.volume_transform, self.foreground_oversample, to_target)

    def _instance_target(self, augment: bool) -> InstanceTarget | None:
        """What draws the training target from a crop's object ids (None for class masks); the offsets of the
        affinities target checked against the volumes' three axes and the training crop. (Sections with ids are
        refused where the ids are taken up, ``VolumeFolder._use_instances``.)"""
        target = self.instance_target
        if target is None:
            return None
        if target == "affinities" and self.affinity_offsets:
            check_offset_axes(self.affinity_offsets, 3)
            if augment:
                check_offsets_fit(self.affinity_offsets, self.patch)
        return InstanceTarget(target, self.affinity_offsets)


def sections_scaled_per_volume(data_cfg: Mapping[str, Any]) -> bool:
    """Whether a 2D or 2.5D model trained with the data config ``data_cfg`` (a checkpoint's) saw each section scaled
    by its whole volume's statistics, as :class:`VolumeData` serves sections: with any ``context_slices``, or from a
    dataset whose class trains 2D models on its volumes' sections (:attr:`VolumeData.planes_from_volumes`:
    ``data=volumes``); else each plane was an image scaled on its own."""
    if int(data_cfg.get("context_slices") or 0) > 0:
        return True
    target = data_cfg.get("_target_")  # a checkpoint's targets are checked (unet_train.trust) before this reads one
    return isinstance(target, str) and bool(getattr(get_class(target), "planes_from_volumes", False))


def _pixels(volume: Volume) -> np.ndarray:
    """A sample of a volume's pixels as an ``(N, 1, C)`` image (what :func:`fill_dataset_stats` reads)."""
    planes = None if volume.depth > 64 else list(range(volume.depth))  # small volumes: every plane
    pixels = sample_pixels(volume, 1_000_000, planes)
    return pixels[:, None, :]


def _say_narrow_range(cases: Sequence[VolumeCase]) -> None:
    """Warn, as the 2D data do (:func:`~unet_train.data.scale_warnings.warn_default_scaling`), of integer and float
    volumes together and of 16/32-bit integer volumes that scale_linear with gain null maps near 0 (a CT in HU),
    from up to 8 planes of each (:func:`~unet_train.data.volume_readers.sample_pixels`)."""
    ranges: dict[np.dtype, tuple[int, int]] = {}
    for case in cases:
        if is_wide_integer(case.image.dtype):
            pixels = sample_pixels(case.image, 1 << 18)
            low, high = int(pixels.min()), int(pixels.max())
            seen = ranges.get(case.image.dtype, (low, high))
            ranges[case.image.dtype] = (min(seen[0], low), max(seen[1], high))
    warn_default_scaling([case.image.dtype for case in cases], ranges)


def volume_spec(volume: Volume, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` for one volume: ``per: image`` statistics (percentile, zscore) taken over the whole volume (on a
    regular sample of planes and windows for large ones) and fixed, so every crop of it is scaled alike."""
    spec = resolve_spec(spec)
    if spec["scheme"] not in ("percentile", "zscore") or spec["per"] != "image":
        return spec
    keys = ("min_value", "max_value") if spec["scheme"] == "percentile" else ("mean", "std")
    fixed = fill_dataset_stats({**spec, "per": "dataset", **dict.fromkeys(keys)}, [_pixels(volume)])
    return fixed
