"""One training volume and its labels (:class:`VolumeCase`), read block by block, and where a random crop of it lies.

A crop that reaches out of its volume (a volume smaller than ``data.patch_size``) is padded: the image mirrored,
the labels ``IGNORE_INDEX``; :mod:`unet_train.data.volume_data` serves the crops, :mod:`unet_train.data.sections`
the sections.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_train.data.folder import encode_mask
from unet_train.data.instances import check_ids, encode_instances
from unet_train.data.limits import check_pixels, describe_position
from unet_train.data.normalize import normalize_image
from unet_train.data.volume_readers import Volume
from unet_train.errors import DataError
from unet_train.labels import IGNORE_INDEX

MAX_FOREGROUND = 20_000  # foreground voxel positions kept per class and volume for oversampling
Shape3 = tuple[int, ...]  # (z, y, x)


@dataclass
class VolumeCase:
    """One volume and its labels: ``image`` is ``(Z, Y, X, C)``, ``mask`` (``Z, Y, X``, one channel) or None.

    ``spec`` is the intensity scaling of this volume (per-volume statistics already filled in); ``foreground``
    maps each foreground class value to a sample of its voxel positions ``(N, 3)`` (filled by :meth:`scan`).
    """

    image: Volume
    mask: Volume | None
    name: str
    spacing: tuple[float, ...]  # (z, y, x)
    unit: str | None = None  # of the spacing (OME-NGFF names), where the file states one and data.spacing is unset
    num_classes: int = 2
    ignore_index: int | None = None
    instances: bool = False  # the mask holds object ids (data.labels=instances), read as encode_instances does
    spec: dict[str, Any] = field(default_factory=dict)
    foreground: dict[int, np.ndarray] = field(default_factory=dict)
    # Opens the files again: a loader worker forked from this process must not share its open files (a TIFF or
    # NIfTI is read by seek and read, and forked processes share the file offset). None: arrays in memory.
    opener: Callable[[], tuple[Volume, Volume | None]] | None = None
    pid: int = field(default_factory=os.getpid)

    def __getstate__(self) -> dict[str, Any]:
        """A loader worker started by ``spawn`` (macOS, Windows) gets the case pickled without its open files; it
        opens them again when it first reads (:meth:`_own_files`: the opener may belong to a data module that is
        unpickled after this case)."""
        state = dict(self.__dict__)
        if self.opener is not None:
            state.update(image=None, mask=None, pid=-1)
        return state

    def _own_files(self) -> None:
        if self.opener is not None and self.pid != os.getpid():
            self.image, self.mask = self.opener()
            self.pid = os.getpid()

    @property
    def shape(self) -> tuple[int, ...]:
        self._own_files()
        return self.image.shape

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape[:3]))

    def scan(self, positions: bool = True) -> set[int]:
        """Read the mask plane by plane once: its values, and (``positions``) a sample of each foreground class's
        positions; of object ids, of all foreground voxels together, as class 1 (what the instance targets'
        foreground is)."""
        self._own_files()
        if self.mask is None:
            return set()
        if self.mask.shape[:3] != self.image.shape[:3]:
            raise DataError(f"{self.mask.name} is {self.mask.shape[:3]} (z, y, x) but its image is {self.shape[:3]}.")
        check_pixels(self.mask.name, self.mask.shape[1:3], "its planes are read whole: ")  # before reading one
        values: set[int] = set()
        found: dict[int, list[np.ndarray]] = {}
        rng = np.random.default_rng(0)
        per_plane = max(1, MAX_FOREGROUND // self.mask.depth)
        for z in range(self.mask.depth):
            plane = self.mask.read(z, 0, self.mask.shape[1], 0, self.mask.shape[2])[..., 0]
            if plane.dtype.kind == "f" and not self.instances:  # classes become uint8: a fraction would be cut off
                check_whole(plane, self.mask.name, z)
            present = np.unique(plane)
            if self.instances:  # ids: whole numbers 0 or more, refused here rather than in a crop read mid-training
                check_ids(present, self.mask.name, self.ignore_index)
            values.update(int(v) for v in present)
            if not positions:
                continue
            if self.instances:  # every id is foreground (one mask per id would cost a pass per object)
                labelled = plane != self.ignore_index if self.ignore_index is not None else True
                present, plane = np.array([1]), ((plane != 0) & labelled).astype(np.uint8)
            for value in present:
                if value == 0 or value == self.ignore_index:
                    continue
                ys, xs = np.nonzero(plane == value)
                keep = rng.choice(len(ys), min(per_plane, len(ys)), replace=False)
                found.setdefault(int(value), []).append(np.stack([np.full(len(keep), z), ys[keep], xs[keep]], 1))
        self.foreground = {v: np.concatenate(parts) for v, parts in found.items()}
        return values

    def _inside(self, origin: Shape3, size: Shape3) -> tuple[Shape3, Shape3, list[tuple[int, int]]]:
        """The part of the block at ``origin`` that lies in the volume, and the padding before and after it on
        each axis (a crop of a volume smaller than ``data.patch_size`` reaches out of it)."""
        low = tuple(max(o, 0) for o in origin)
        high = tuple(min(o + s, n) for o, s, n in zip(origin, size, self.shape[:3]))
        pads = [(lo - o, o + s - hi) for o, s, lo, hi in zip(origin, size, low, high)]
        return low, tuple(hi - lo for lo, hi in zip(low, high)), pads

    def read_image(self, origin: Shape3, size: Shape3) -> np.ndarray:
        """The normalised float32 ``(d, h, w, C)`` block at ``origin``; where it reaches out of the volume, the volume
        is mirrored (without repeating its edge voxel), as the tiled prediction pads every border (tiling.py): a
        volume smaller than the crop then looks to the model in training as any border does in prediction, where
        a constant would be an edge it never meets there."""
        self._own_files()
        low, inside, pads = self._inside(origin, size)
        block = self.image.read_block(low, inside)
        d, h, w, c = block.shape
        block = normalize_image(block.reshape(d * h, w, c), self.spec).reshape(d, h, w, c).astype(np.float32)
        return np.pad(block, [*pads, (0, 0)], mode="reflect") if any(sum(p) for p in pads) else block

    def read_mask(self, origin: Shape3, size: Shape3) -> np.ndarray:
        """Class indices ``(d, h, w)`` at ``origin``: {0,255} binary masks as {0,1}, ``ignore_index`` as 255; voxels
        out of the volume (see :meth:`read_image`) are ``IGNORE_INDEX``, so no loss or metric counts them. Object ids
        (``instances``): float32 ids 1..N of the block (:func:`~unet_train.data.instances.encode_instances`), 255
        unlabelled, which the 3D augmentation moves exactly (it only flips, turns and swaps axes)."""
        self._own_files()
        assert self.mask is not None
        low, inside, pads = self._inside(origin, size)
        block = self.mask.read_block(low, inside)[..., 0]
        if self.instances:
            labels = encode_instances(block, self.mask.name, self.ignore_index)
        else:
            labels = encode_mask(block, self.num_classes, Path(self.mask.name), self.ignore_index)
        return np.pad(labels, pads, constant_values=IGNORE_INDEX) if any(sum(p) for p in pads) else labels


def check_whole(plane: np.ndarray, name: str, z: int) -> None:
    """Refuse a float label plane with a fraction (a label volume resampled with linear interpolation), naming the
    first; whole-number floats are class indices."""
    fractions = np.argwhere(plane != np.round(plane))
    if fractions.size:
        y, x = (int(i) for i in fractions[0])
        where = describe_position((z, y, x), "zyx")
        raise DataError(
            f"Mask {name} has non-integer values (the first, {plane[y, x]:g}, at {where}); "
            "label volumes store class indices: round them, or resample labels with nearest-neighbour interpolation."
        )


def crop_origin(case: VolumeCase, size: Shape3, rng: np.random.Generator, foreground_p: float) -> Shape3:
    """A random crop corner; with probability ``foreground_p`` the crop is centred (kept inside the volume) on a
    voxel of a foreground class drawn uniformly among those present, as nnU-Net's oversampling does.

    On an axis where the volume is shorter than the crop, the crop holds all of it at a random place (the corner
    is then negative) and :meth:`VolumeCase.read_image` pads the rest, so every crop has ``size``.
    """
    top = [s - p for s, p in zip(case.shape[:3], size)]
    low, high = [min(t, 0) for t in top], [max(t, 0) for t in top]
    if foreground_p > 0 and rng.random() < foreground_p and case.foreground:
        classes = sorted(case.foreground)
        positions = case.foreground[classes[int(rng.integers(len(classes)))]]
        centre = positions[int(rng.integers(len(positions)))]
        return tuple(int(min(max(c - p // 2, lo), hi)) for c, p, lo, hi in zip(centre, size, low, high))
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high))


def item_seed(index: int | tuple[int, int], draws: bool) -> tuple[int, int]:
    """The item and its seed: an EpochSampler passes ``(index, item_seed)``, so the crop and its augmentation follow
    from the seed alone; a plain index draws a seed where the item ``draws`` (whole volumes, as validated, do not)."""
    if isinstance(index, tuple):
        return index
    return index, int(torch.randint(2**31 - 1, ()).item()) if draws else 0
