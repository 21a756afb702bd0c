"""A folder of 3D volumes: ``root/images/*`` and ``root/masks/*`` matched by name (``data=volumes``).

TIFF stacks, NIfTI (``.nii``, ``.nii.gz``), HDF5 (``.h5``, ``.hdf5``) and Zarr/OME-Zarr stores, read
lazily through :func:`~unet_train.data.volume_readers.open_volume`; the voxel spacing comes from each file
(ImageJ ``spacing``, OME ``PhysicalSize*``, NIfTI ``pixdim``, OME-NGFF ``scale``, HDF5
``element_size_um``) unless ``data.spacing`` gives it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_train.data.folder import FOREGROUNDS, Pair, infer_num_classes, pair_files, value_list
from unet_train.data.instances import check_labels, ids_like, instance_classes, wide_integers
from unet_train.data.limits import check_pixels
from unet_train.data.sections import check_context_slices
from unet_train.data.splits import random_split, typical_split
from unet_train.data.volume_data import VolumeCase, VolumeData, stated_unit
from unet_train.data.volume_geometry import check_pair_geometry
from unet_train.data.volume_readers import HDF5_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES, Volume
from unet_train.data.volume_readers import open_volume as _open
from unet_train.errors import ConfigError, DataError
from unet_train.objects import heads

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *ZARR_SUFFIXES, *TIFF_SUFFIXES, *HDF5_SUFFIXES)  # longest first matters below
CHANNELS = {"auto": None, "first": "czyx", "last": "zyxc"}
VAL_PICKS = ("auto", "typical", "random", "slabs")
TYPICAL_BELOW = 20  # data.val_pick=auto: the typical volumes validate in a folder of fewer labelled volumes


def volume_stem(path: Path) -> str | None:
    """``a`` for ``a.nii.gz``, ``a.ome.zarr``, ``a.tif``...; None for a file that is no volume."""
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            return stem.removesuffix(".ome") if stem.lower().endswith(".ome") else stem
    return None


def volume_files(folder: Path) -> dict[str, Path]:
    """The volumes in ``folder`` by stem; two files of one stem are refused."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = volume_stem(path)
        if stem is None or path.name.startswith("."):
            continue
        if stem in by_stem:
            raise DataError(
                f"{folder.resolve()} holds {by_stem[stem].name} and {path.name}, two volumes of one stem; keep one."
            )
        by_stem[stem] = path
    return by_stem


class SlabArray:
    """An array (a file's, read lazily) seen through planes ``start:stop`` of its dimension ``dim``: what a
    :class:`~unet_train.data.volume_readers.Volume` of part of a volume reads from."""

    def __init__(self, array: Any, dim: int, start: int, stop: int) -> None:
        self.array, self.dim, self.start, self.stop = array, dim, start, stop
        self.shape = tuple(stop - start if d == dim else int(n) for d, n in enumerate(array.shape))
        self.dtype = array.dtype

    def __getitem__(self, index: tuple[Any, ...]) -> Any:
        index = tuple(index) if isinstance(index, tuple) else (index,)
        key = index[self.dim]
        if isinstance(key, slice):
            low = self.start + (key.start or 0)
            high = self.stop if key.stop is None else min(self.start + key.stop, self.stop)
            key = slice(low, high)
        else:
            key = self.start + int(key)
        return self.array[(*index[: self.dim], key, *index[self.dim + 1 :])]


def slab(volume: Volume, axis: str, start: int, stop: int) -> Volume:
    """Planes ``start:stop`` along ``axis`` (z, y or x) of ``volume``, read lazily from its file."""
    array = SlabArray(volume.array, volume.axes.index(axis), start, stop)
    name = f"{volume.name} ({axis} {start}-{stop - 1})"
    return Volume(array, volume.axes, name, volume.scale, volume.units, handle=volume.handle, channels=volume.channels)


def slab_pair(opener: Any, axis: str, start: int, stop: int) -> tuple[Volume, Volume | None]:
    """The image and mask that ``opener`` opens, cut to planes ``start:stop`` along ``axis``."""
    image, mask = opener()
    return slab(image, axis, start, stop), None if mask is None else slab(mask, axis, start, stop)


class VolumeFolder(VolumeData):
    """3D images and label volumes in ``root/images`` and ``root/masks`` with matching stems.

    A deterministic ``val_fraction`` of the volumes validates: the most typical ones (``val_pick``) or a random pick
    (shuffled with ``split_seed``); a folder of one volume validates on its last ``val_fraction`` of planes along
    its longest axis (at least one crop deep, up to half of it) and trains on the rest. An optional
    ``root/test/images`` is the test split.

    Args:
        root: dataset folder.
        val_fraction, split_seed: the train/val split (at least one volume validates when > 0).
        val_pick: which volumes validate: ``typical`` (those whose label shares lie nearest the folder's median,
            :func:`~unet_train.data.splits.typical_split`), ``random`` (``split_seed``'s shuffle), ``slabs``
            (the last ``val_fraction`` of every volume's planes along its longest axis validate), or ``auto``:
            typical in a folder of fewer than :data:`TYPICAL_BELOW` labelled volumes, where a random pick of one or
            two can hold out a volume unlike the rest, else random (no label pass over many volumes). The
            argument's default is ``random``, so a checkpoint's config from before this key resumes on its split;
            ``configs/data/volumes.yaml`` sets ``auto``.
        images_dir, masks_dir: sub-folder names.
        image_key, mask_key: the dataset (HDF5) or array (Zarr) in each file, where one holds several.
        channels: ``auto`` (from the file's axes or its shape), ``first`` (``c, z, y, x``) or ``last``
            (``z, y, x, c``) for 4D images without axis metadata.
        ignore_index: mask value of unlabelled voxels (not a class), or None.
        foreground: ``object`` or ``membrane`` (see ``data=folder``).
        labels: ``classes``, ``instances`` (each value of a label volume is one object's id; a 3D model learns
            ``target`` from them) or ``auto`` (instances when ``num_classes`` is auto and the label volumes are
            16/32-bit with many values), as ``data=folder``'s (:mod:`unet_train.data.instances`).
        target: the training target drawn from the ids of each crop after augmentation: ``boundary``, ``distance``
            (with the voxel spacing) or ``affinities``.
        affinity_offsets: the ``affinities`` target's ``[z, y, x]`` offsets (None: the face neighbours and three
            voxels along each axis, :data:`~unet_train.objects.heads.DEFAULT_OFFSETS_3D`).
        spatial_dims: 3 (a 3D UNet) or 2 (a 2D UNet on the sections); None: 3, or 2 with ``context_slices`` > 0.
        context_slices: ``k`` neighbouring sections on each side as channels of a 2D model (2.5D); 0: off.
        **kwargs: as :class:`VolumeData` (spacing, patch_size, loader settings...).
    """

    planes_from_volumes = True  # a 2D run trains on the volumes' sections

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        val_pick: str = "random",  # configs/data/volumes.yaml says auto; a run saved before the key keeps its split
        images_dir: str = "images",
        masks_dir: str = "masks",
        image_key: str | None = None,
        mask_key: str | None = None,
        channels: str = "auto",
        ignore_index: int | None = None,
        foreground: str = "object",
        train_transform: Any = None,
        spatial_dims: int | None = None,
        context_slices: int = 0,
        labels: str = "auto",
        target: str = "boundary",
        affinity_offsets: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        dims = spatial_dims or (2 if check_context_slices(context_slices) else 3)
        super().__init__(dims, volume_transform=train_transform, context_slices=context_slices, **kwargs)
        check_labels(labels, target)
        self.target = target
        self.affinity_offsets = heads.affinity_offsets({"affinity_offsets": affinity_offsets}, dims=3)
        if labels == "auto" and self._num_classes is not None:  # a number of classes says the masks are classes
            labels = "classes"
        self._labels = labels
        if labels == "instances":
            self._use_instances(given=self._num_classes)
        if channels not in CHANNELS:
            raise ConfigError(f"data.channels={channels!r} must be auto, first (c, z, y, x) or last (z, y, x, c).")
        if foreground not in FOREGROUNDS:
            raise ConfigError(f"data.foreground={foreground!r} must be object or membrane.")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1).")
        self.root = Path(root).expanduser()
        if val_pick not in VAL_PICKS:
            raise ConfigError(f"data.val_pick={val_pick!r} must be auto, typical, random or slabs.")
        self.val_fraction, self.split_seed, self.val_pick = val_fraction, split_seed, val_pick
        self._typical: tuple[list[int], list[int]] | None = None  # val_pick's split, found once
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.image_key, self.mask_key, self.channels = image_key, mask_key, channels
        self.ignore_index, self.foreground = ignore_index, foreground
        self._slab_said = False  # a slab split is logged once
        self._geometry_warned: set[str] = set()  # label volumes whose NIfTI affine differs from their image's

    @staticmethod
    def _open_keyed(path: Path, key: str | None, channels: int, option: str) -> Volume:
        """:func:`open_volume`, its refusals naming this config's key option (``data.image_key``...)."""
        try:
            return _open(path, key, None, channels)
        except DataError as exc:
            raise DataError(str(exc).replace("input_key", option)) from None

    def _open(self, path: Path, key: str | None, channels: int) -> Volume:
        volume = self._open_keyed(path, key, channels, "data.image_key")
        axes = CHANNELS[self.channels]
        if axes is not None and len(volume.array.shape) == 4 and volume.axes != axes:
            volume = Volume(volume.array, axes, volume.name, volume.scale, volume.units, handle=volume.handle)
        return volume

    def _open_pair(self, image_path: Path, mask_path: Path | None, channels: int) -> tuple[Volume, Volume | None]:
        image = self._open(image_path, self.image_key, channels)
        mask = None if mask_path is None else self._open_keyed(mask_path, self.mask_key, 1, "data.mask_key")
        if mask is not None and mask.shape[3] != 1:
            raise DataError(f"Mask {mask_path} has {mask.shape[3]} channels; a label volume has one.")
        return image, mask

    def _pairs(self, base: Path, masks_required: bool) -> list[Pair]:
        kind = "volumes (TIFF, NIfTI, HDF5, Zarr)"
        return pair_files(base, self.images_dir, self.masks_dir, volume_files, kind, "data=volumes", masks_required)

    def _open_cases(self, pairs: Sequence[Pair], channels: int) -> list[VolumeCase]:
        cases = []
        for stem, image_path, mask_path in pairs:
            opener = functools.partial(self._open_pair, image_path, mask_path, channels)
            image, mask = opener()
            if mask is not None and not self.spacing_override:
                check_pair_geometry(image, mask, self._geometry_warned)
            stated = tuple(float(image.scale.get(axis, 1.0)) for axis in "zyx")
            spacing = self.spacing_override or stated
            if not all(math.isfinite(side) and side > 0 for side in spacing):  # a forged or broken header
                raise DataError(
                    f"{image.name} states the voxel spacing {list(stated)} (z, y, x); a side must be a positive "
                    "number: fix its header, or set data.spacing=[z,y,x] for every volume."
                )
            if self.spacing_override and image.scale and stated != self.spacing_override:
                log.info("%s: data.spacing %s replaces the file's %s", image.name, self.spacing_override, stated)
            unit = None if self.spacing_override else stated_unit(image)
            cases.append(VolumeCase(image, mask, stem, spacing, unit, opener=opener))
        return cases

    def _use_instances(self, given: int | None = None) -> None:
        """The label volumes hold object ids: a 3D model learns ``data.target``'s classes from them."""
        if self.from_sections:  # the sections' objects would need linking across z
            what = f"data.context_slices={self.context_slices}" if self.context_slices else "data.spatial_dims=2"
            raise ConfigError(
                f"data.labels=instances of volumes trains 3D models only, not {what} (sections): set "
                "data.spatial_dims=3 and data.context_slices=0."
            )
        self._num_classes = instance_classes(self.target, given)
        self._labels, self.instance_target = "instances", self.target

    @property
    def labels(self) -> str:
        """``classes`` or ``instances``; ``auto`` is decided from the label volumes on first use."""
        if self._labels == "auto":
            self.resolve_auto()
        return self._labels

    def resolve_auto(self) -> None:
        """``auto`` channels (the first image's), labels (object ids: 16/32-bit label volumes with many values) and
        classes (2 for {0,255}/{0,1}, else the largest value + 1; of ids, the target's)."""
        cases = self._open_cases(self._pairs(self.root, masks_required=True), 3)
        if self._in_channels is None:
            self._in_channels = cases[0].shape[3]
            log.info("data.in_channels=auto: %d", self._in_channels)
        if self._num_classes is None:
            values: set[int] = set()
            distinct = []
            for case in cases:
                case.ignore_index = self.ignore_index
                found = case.scan(positions=False)
                distinct.append(len(found))
                values |= found
            values.discard(self.ignore_index)
            masks = [case.mask for case in cases if case.mask is not None]
            if self._labels == "auto" and ids_like([m.dtype for m in masks], distinct):
                self._use_instances()
                log.info(
                    "data.labels=auto: instances (%s label volumes, up to %d object ids in one) -> data.target=%s, %d "
                    "classes; data.labels=classes reads them as class indices",
                    "/".join(sorted({str(m.dtype) for m in masks})), max(distinct) - 1, self.target,
                    self._num_classes,
                )  # fmt: skip
            else:
                ids = self._labels == "auto" and wide_integers([m.dtype for m in masks])  # a few objects' ids?
                self._labels = "classes" if self._labels == "auto" else self._labels
                self._num_classes = infer_num_classes(values, str(self.root.resolve()), ids=ids)
                log.info("data.num_classes=auto: %d (mask values %s)", self._num_classes, value_list(values))
        for case in cases:
            case.image.close()
            if case.mask is not None:
                case.mask.close()

    def load_cases(self, split: str) -> list[VolumeCase]:
        if split == "test":
            return self._open_cases(self._pairs(self.root / "test", masks_required=False), self.in_channels)
        pairs = self._pairs(self.root, masks_required=True)
        if split != "all" and self.val_fraction > 0 and (len(pairs) == 1 or self.val_pick == "slabs"):
            # one volume, or data.val_pick=slabs: a slab of each validates
            return [self._slab_case(case, split, len(pairs)) for case in self._open_cases(pairs, self.in_channels)]
        if split != "all":
            train, val = self._split(pairs)
            pairs = [pairs[i] for i in (train if split == "train" else val)]
        return self._open_cases(pairs, self.in_channels)

    def _split(self, pairs: Sequence[Pair]) -> tuple[list[int], list[int]]:
        """Train and val indices of the labelled volumes, as ``data.val_pick`` chooses."""
        typical = self.val_pick == "typical" or (self.val_pick == "auto" and len(pairs) < TYPICAL_BELOW)
        if not typical or self.val_fraction == 0:
            return random_split(len(pairs), self.val_fraction, self.split_seed)
        if self._typical is None:
            ids = self.labels == "instances"  # object ids: their foreground share, not each id's
            self._typical = typical_split([self._label_shares(mask, ids) for _, _, mask in pairs], self.val_fraction)
            held = ", ".join(pairs[i][0] for i in self._typical[1])
            log.info(
                "Validation volume(s): %s, of %d, whose label shares lie nearest the folder's median "
                "(data.val_pick=random draws them with data.split_seed instead)", held, len(pairs),
            )  # fmt: skip
        return self._typical

    def _label_shares(self, path: Path | None, ids: bool) -> dict[int, float]:
        """Each label value's share of the labelled voxels of the label volume at ``path``, read plane by plane (of
        object ids: background 0 and foreground 1)."""
        assert path is not None  # masks_required
        mask = self._open_keyed(path, self.mask_key, 1, "data.mask_key")
        check_pixels(mask.name, mask.shape[1:3], "its planes are read whole: ")
        counts: dict[int, int] = {}
        try:
            for z in range(mask.depth):
                plane = mask.read(z, 0, mask.shape[1], 0, mask.shape[2])[..., 0]
                if self.ignore_index is not None:
                    plane = plane[plane != self.ignore_index]
                values, found = np.unique(plane != 0 if ids else plane, return_counts=True)
                for value, count in zip(values.tolist(), found.tolist()):
                    counts[int(value)] = counts.get(int(value), 0) + count
        finally:
            mask.close()
        total = sum(counts.values()) or 1
        return {value: count / total for value, count in counts.items()}

    def _slab_case(self, case: VolumeCase, split: str, count: int = 1) -> VolumeCase:
        """The train or val part of the one labelled volume: the last ``val_fraction`` of its planes along its longest
        axis (z first where sides tie) validate, at least one crop deep where that leaves the other half to train
        (a training part shorter than the crop is padded, as any small volume); the planes before them train. As
        ``data=isbi data.spatial_dims=3`` splits its one stack, by position: neighbouring planes are near copies,
        so a random choice of planes would validate on what training saw. The slab never needs more than half of
        the volume, so a crop that ``plan=auto`` fits to the training part does not change whether it splits."""
        patch = (1, *self.patch[1:]) if self.from_sections else self.patch  # a section crop is one plane deep
        axis = max(range(3), key=lambda a: (case.shape[a], -a))
        planes, crop = case.shape[axis], patch[axis]
        # A lone volume's slab is at least one crop deep (up to half of it); of several, each gives its share.
        held = max(round(planes * self.val_fraction), min(crop, planes // 2) if count == 1 else 1)
        name, letter, folder = case.name, "zyx"[axis], self.root.resolve() / self.images_dir
        if not 0 < held < planes:
            what, fix = (
                ("one labelled volume, ", "add a second labelled volume there (it then validates)")
                if count == 1
                else (f"{count} labelled volumes and data.val_pick=slabs; ", "set data.val_pick=typical")
            )
            raise DataError(
                f"{folder} holds {what}{name} {case.shape[:3]} (z, y, x), too small to hold out a "
                f"validation slab: of its {planes} {letter} plane(s), {held} would validate (data.val_fraction="
                f"{self.val_fraction}) and {planes - held} train; {fix}, or lower data.val_fraction."
            )
        start, stop = (0, planes - held) if split == "train" else (planes - held, planes)
        if not self._slab_said and count > 1:
            log.info(
                "data.val_pick=slabs: each of the %d labelled volumes in %s validates on its last data.val_fraction=%g "
                "of planes along its longest axis (%s: %s %d-%d) and "
                "trains on the rest", count, folder, self.val_fraction, name, letter, planes - held, planes - 1,
            )  # fmt: skip
        elif not self._slab_said:
            log.info(
                "%s holds one labelled volume, %s %s (z, y, x): its last %d of %d %s planes (%s %d-%d) validate, the "
                "rest train; data.val_fraction=%g sets the share (a slab is at least one crop deep, up to half the "
                "volume), or add a second volume there to validate on instead",
                folder, name, case.shape[:3], held, planes, letter, letter,
                planes - held, planes - 1, self.val_fraction,
            )  # fmt: skip
        self._slab_said = True
        if case.mask is not None and case.mask.shape[:3] != case.shape[:3]:  # the slabs could agree where these do not
            raise DataError(f"{case.mask.name} is {case.mask.shape[:3]} (z, y, x) but its image is {case.shape[:3]}.")
        assert case.opener is not None
        opener = functools.partial(slab_pair, case.opener, letter, start, stop)
        image, mask = (
            slab(case.image, letter, start, stop),
            None if case.mask is None else slab(case.mask, letter, start, stop),
        )
        return VolumeCase(image, mask, f"{name}-{letter}{start}-{stop - 1}", case.spacing, case.unit, opener=opener)
