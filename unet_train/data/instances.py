"""Instance labels as training data: object-id masks, read once, turned into a target after augmentation.

An instance mask holds one integer id per object (0 = background). On loading, the ids are renumbered
1..N per image, skipping :data:`~unet_train.labels.IGNORE_INDEX` (255), which marks unlabelled pixels here
as in class masks (a ``valid/`` mask, ``data.ignore_index``, or the ``fill_mask: 255`` of a constant-border
pad); they are kept as float32, which holds every id below 2**24 exactly and which albumentations resamples
with nearest-neighbour interpolation for masks, so a flip, crop, rotation or elastic deformation moves whole
ids and never blends two. :class:`InstanceTarget` then draws the training target from the augmented ids
(:mod:`unet_train.objects.targets`) and keeps the ids for the object metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.objects.targets import affinity_target, boundary_target, distance_target

log = logging.getLogger(__name__)

LABELS = ("auto", "classes", "instances")
# Each target the model can learn from ids, with the classes it predicts. ``boundary``: background /
# interior / boundary, the common nuclei recipe (touching objects are split by the predicted boundary and
# the interiors are the seeds); it trains with the class losses (cross-entropy + Dice) unchanged.
# ``distance``: background / foreground (the class loss) plus a regression channel of each pixel's normalised
# distance to its object's boundary (unet_train.objects.heads): its peaks seed a watershed, so objects that
# touch along a long seam, whose boundary class is a thin and uncertain line, still get one seed each.
# ``affinities``: background / foreground (the class loss) plus, per offset of ``data.affinity_offsets``, whether a
# pixel and its neighbour there are one object (EM: space-filling objects whose boundaries are one pixel thin).
TARGETS = {"boundary": 3, "distance": 2, "affinities": 2}
MAX_ID = 2**24  # float32 holds every integer below it exactly
# labels=auto: masks of a 16/32-bit integer type with this many distinct values or more in one image are ids
AUTO_MIN_VALUES = 16


def check_labels(labels: str, target: str) -> None:
    """Refuse an unknown ``data.labels`` or ``data.target`` in one line."""
    if labels not in LABELS:
        raise ConfigError(
            f"data.labels={labels!r} must be classes (mask values are class indices), instances (each value is one "
            "object's id) or auto (instances for 16/32-bit masks with many values)."
        )
    if target not in TARGETS:
        raise ConfigError(f"data.target={target!r} is not known; choose one of {', '.join(TARGETS)}.")


def looks_like_instances(masks: list[NDArray]) -> bool:
    """``labels: auto``: every mask is a 16/32-bit integer image and one holds many distinct values."""
    return ids_like([m.dtype for m in masks], [len(np.unique(m)) for m in masks])


def ids_like(dtypes: list[np.dtype], distinct: list[int]) -> bool:
    """``labels: auto`` from the masks' (images' or volumes') dtypes and their numbers of distinct values: every
    one of a 16/32-bit integer type and one with :data:`AUTO_MIN_VALUES` values or more."""
    return wide_integers(dtypes) and max(distinct) >= AUTO_MIN_VALUES


def wide_integers(dtypes: list[np.dtype]) -> bool:
    """Every mask is of a 16/32-bit integer type, as object ids are (a few ids are no less ids than many)."""
    return bool(dtypes) and all(d.kind in "ui" and d.itemsize >= 2 for d in dtypes)


def instance_classes(target: str, given: int | None) -> int:
    """The classes a model of instance labels learns with ``target``; a ``data.num_classes`` ``given`` that differs
    is refused in one line."""
    classes = TARGETS[target]
    if given is not None and given != classes:
        raise ConfigError(
            f"data.num_classes={given} does not fit data.labels=instances with data.target={target}, whose "
            f"model predicts {classes} classes; set data.num_classes={classes} or auto."
        )
    return classes


def check_ids(values: NDArray, path: Path | str, ignore_index: int | None = None) -> None:
    """Refuse in one line stored ids (a mask, or its distinct values) that are not whole numbers 0 or more, the
    ``ignore_index`` aside. A label volume's values are checked so when it is first scanned, before training reads
    its crops (in loader workers, at any step)."""
    if values.dtype.kind not in "uif":
        raise DataError(f"Instance mask {path} holds {values.dtype} values; object ids must be integers.")
    if ignore_index is not None:
        values = values[values != ignore_index]
    if values.dtype.kind == "f":  # whole numbers only: a cast would cut 2.5 (an interpolated label) to id 2, NaN to < 0
        fractional = values[~np.isfinite(values) | (values != np.floor(values))]
        if fractional.size:
            raise DataError(
                f"Instance mask {path} holds {fractional.flat[0]:g}, not a whole number; object ids must be whole "
                "numbers (a label image resampled with interpolation blends ids: resample it by nearest neighbour)."
            )
    if values.size and values.min() < 0:
        raise DataError(f"Instance mask {path} holds negative ids ({values.min():g}); ids are 0 (background) or more.")


def encode_instances(mask: NDArray, path: Path | str, ignore_index: int | None = None) -> NDArray[np.float32]:
    """Stored ids -> float32 ids 1..N (0 background; 255 skipped: it marks unlabelled pixels)."""
    check_ids(mask, path, ignore_index)
    ids = np.asarray(mask, dtype=np.int64)
    ignored = ids == ignore_index if ignore_index is not None else None
    if ignored is not None:
        ids = np.where(ignored, 0, ids)
    values, inverse = np.unique(ids, return_inverse=True)
    renumbered = (np.cumsum(values != 0) * (values != 0))[inverse.reshape(ids.shape)]
    renumbered[renumbered >= IGNORE_INDEX] += 1  # 255 is no object: it marks unlabelled pixels
    if renumbered.max(initial=0) >= MAX_ID:
        raise DataError(f"Instance mask {path} has {len(values) - 1} objects; at most {MAX_ID - 2} per image fit.")
    out = renumbered.astype(np.float32)
    if ignored is not None:
        out[ignored] = IGNORE_INDEX
    return out


class InstanceTarget:
    """Augmented float32 ids (255 = unlabelled) -> (the ``target``'s class map with 255 kept, int64 ids, the
    target's extra maps by name: ``distance`` for the distance target, 0 where unlabelled; ``affinities`` for the
    affinities target, ``(len(offsets), *shape)``, 255 where a pair leaves the image or touches an unlabelled pixel).

    Images and volumes alike (the offsets have as many axes as the ids). A plain class (not a closure) so that the
    loader's worker processes can receive it.
    """

    def __init__(self, target: str, offsets: list[tuple[int, ...]] | None = None) -> None:
        check_labels("instances", target)
        self.target, self.offsets = target, list(offsets or [])
        if target == "affinities" and not self.offsets:
            raise ConfigError("data.target=affinities needs data.affinity_offsets, e.g. [[-1, 0], [0, -1]].")

    def __call__(
        self, mask: NDArray, spacing: tuple[float, ...] | None = None
    ) -> tuple[NDArray[np.uint8], NDArray[np.int64], dict[str, NDArray]]:
        """``spacing``: the voxel sides of a volume's crop (``z, y, x``), which make the distance target physical."""
        ids = np.rint(np.asarray(mask, dtype=np.float64)).astype(np.int64)
        ignored = ids == IGNORE_INDEX
        ids[ignored] = 0
        extras: dict[str, NDArray] = {}
        if self.target == "distance":
            target = (ids > 0).astype(np.uint8)
            extras["distance"] = distance_target(ids, spacing)  # 0 where unlabelled (no id there)
        elif self.target == "affinities":
            target = (ids > 0).astype(np.uint8)
            affs, valid = affinity_target(ids, self.offsets, ignored)
            extras["affinities"] = np.where(valid, affs, IGNORE_INDEX).astype(np.float32)
        else:
            target = boundary_target(ids)
        target[ignored] = IGNORE_INDEX
        return target, ids, extras
