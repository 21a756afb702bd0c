"""The fingerprint of volumes (``data=volumes``, ``data=isbi data.spatial_dims=3``), read lazily.

Each volume is opened, not decoded: its shape, dtype and voxel spacing come from the file's header (as the
data module states them, ``data.spacing`` over the file's), and intensities and class shares from a regular
sample of ``SAMPLED_PLANES`` planes per volume, read plane by plane through the readers' lazy paths (a window
grid where a plane is large). The keys of the 2D fingerprint are kept (a volume counts as one image), so the
schedule, the normalisation and the oversampling are planned by the same functions as for images; the
volume keys are ``spacing`` (per volume and median, ``[z, y, x]``), ``shape`` (median and smallest) and
``anisotropy`` (the coarsest median voxel side over the finest).

Label volumes of object ids (``data.labels=instances``) are fingerprinted as :mod:`unet_train.plan.objects`
fingerprints images: the objects of one block of each training volume (the whole volume up to
:data:`ID_BLOCK` voxels a side, else its centre) give the statistics its rule chooses the target from, and the
class shares are those of that target drawn from the same blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unet_train.data.instances import TARGETS, InstanceTarget
from unet_train.data.volume_data import VolumeCase
from unet_train.data.volume_readers import sample_pixels
from unet_train.errors import DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.objects.heads import DEFAULT_OFFSETS_3D
from unet_train.plan.fingerprint import PERCENTILES, _bit_depth, _stats
from unet_train.plan.objects import object_fingerprint, planned_target

SAMPLED_PLANES = 16  # planes per volume read for intensities and class shares (spread over z)
SAMPLED_PIXELS = 2_000_000  # pixel values per channel the intensity statistics read, over all volumes
ID_BLOCK = (64, 256, 256)  # z, y, x: the most of a label volume of object ids read for its objects


def is_volume_data(data: Any) -> bool:
    """Whether ``data`` trains on volumes (a 3D data module), so the plan reads volumes, not images."""
    return getattr(data, "spatial_dims", 2) == 3 and hasattr(data, "load_cases")


def volume_split(data: Any) -> tuple[list[VolumeCase], list[VolumeCase]]:
    """The training and validation volumes, opened (not read), their masks encoded as training encodes them."""
    train, val = data.load_cases("train"), data.load_cases("val")
    if not train:
        raise DataError(f"The training split of {type(data).__name__} is empty; unet-plan needs at least one volume.")
    for case in [*train, *val]:
        if case.mask is None:
            raise DataError(f"{case.name} has no label volume; unet-plan needs labelled data.")
        case.num_classes, case.ignore_index = data.num_classes, getattr(data, "ignore_index", None)
        case.instances = getattr(data, "instance_target", None) is not None
    return train, val


def sampled_planes(depth: int, count: int = SAMPLED_PLANES) -> list[int]:
    """Up to ``count`` plane indices spread evenly over ``depth`` planes (every plane of a short stack)."""
    return np.unique(np.linspace(0, depth - 1, min(depth, count)).round().astype(int)).tolist()


def id_block(case: VolumeCase) -> np.ndarray:
    """The encoded object ids (255 unlabelled) of ``case``'s centre block of at most :data:`ID_BLOCK` voxels."""
    size = tuple(min(n, b) for n, b in zip(case.shape[:3], ID_BLOCK))
    origin = tuple((n - s) // 2 for n, s in zip(case.shape[:3], size))
    return case.read_mask(origin, size)


def _class_counts(case: VolumeCase, learnt: InstanceTarget | None = None) -> dict[int, int]:
    """Voxels per class on the sampled planes (class indices as training reads them; unlabelled left out); of
    object ids, the classes of the target ``learnt`` draws from the ids of the volume's :func:`id_block`."""
    counts: dict[int, int] = {}
    _, height, width, _ = case.shape
    if learnt is not None:
        blocks = [learnt(id_block(case), case.spacing)[0]]
    else:
        blocks = [case.read_mask((z, 0, 0), (1, height, width)) for z in sampled_planes(case.shape[0])]
    for block in blocks:
        found, number = np.unique(block, return_counts=True)
        for value, n in zip(found.tolist(), number.tolist()):
            if value != IGNORE_INDEX:
                counts[int(value)] = counts.get(int(value), 0) + int(n)
    return counts


def _intensities(cases: Sequence[VolumeCase]) -> list[dict[str, Any]]:
    """Per channel: min, max, mean, std and percentiles of the raw values on the sampled planes."""
    per_volume = max(4096, SAMPLED_PIXELS // len(cases))
    samples = []
    for case in cases:
        planes = sampled_planes(case.shape[0])
        samples.append(sample_pixels(case.image, max(4096, per_volume // len(planes)), planes).astype(np.float64))
    flat = np.concatenate(samples)
    out = []
    for c in range(flat.shape[1]):
        values = flat[:, c]
        pct = np.percentile(values, PERCENTILES)
        out.append({
            "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std()), "percentiles": {f"{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
        })  # fmt: skip
    return out


def compute_volume_fingerprint(
    train: Sequence[VolumeCase], val: Sequence[VolumeCase], num_classes: int, learnt: InstanceTarget | None = None
) -> dict[str, Any]:
    """The fingerprint of training volumes ``train`` (and the validation volumes ``val``): see the module;
    ``learnt``: what draws the target's classes from object ids."""
    if not train:
        raise DataError("The training split is empty; unet-plan needs at least one volume.")
    shapes = np.array([case.shape[:3] for case in train])
    spacings = np.array([case.spacing for case in train], dtype=np.float64)
    median_spacing = [float(s) for s in np.median(spacings, axis=0)]
    counts = [_class_counts(case, learnt) for case in train]
    val_counts = [_class_counts(case, learnt) for case in val]
    totals: dict[int, int] = {}
    for found in [*counts, *val_counts]:
        for value, n in found.items():
            totals[value] = totals.get(value, 0) + n
    labelled = max(sum(totals.values()), 1)
    foreground = [sum(n for v, n in found.items() if v > 0) / max(sum(found.values()), 1) for found in counts]
    names = [case.name for case in train]
    sizes: dict[str, int] = {}
    for d, h, w in shapes.tolist():
        sizes[f"{d}x{h}x{w}"] = sizes.get(f"{d}x{h}x{w}", 0) + 1
    dtypes = sorted({case.image.dtype.str.lstrip("<>|=") for case in train})
    present = sorted(totals)
    return {
        "num_images": len(train),  # volumes: one volume is one "image" of the schedule
        "num_volumes": len(train),
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),  # "DxHxW": number of volumes
        "shape": {"median": [int(v) for v in np.median(shapes, axis=0)], "min": shapes.min(axis=0).tolist()},
        "spacing": {"median": median_spacing, "per_volume": dict(zip(names, spacings.tolist()))},  # [z, y, x]
        "anisotropy": max(median_spacing) / min(median_spacing),
        "height": _stats(shapes[:, 1].tolist()),
        "width": _stats(shapes[:, 2].tolist()),
        "channels": sorted({int(case.shape[3]) for case in train}),
        "dtypes": dtypes,
        "bit_depth": _bit_depth(dtypes),
        "intensity": _intensities(train),
        "classes": {str(k): totals[k] / labelled for k in present},  # class index: share of the sampled voxels
        "class_images": {str(k): sum(k in found for found in counts) / len(train) for k in present},
        "num_classes": max(2, num_classes),
        "foreground_share": {**_stats(foreground), "mean": float(np.mean(foreground))},
        "foreground_share_per_image": dict(zip(names, foreground)),
        "num_val_images": len(val),
        "num_planes": int(shapes[:, 0].sum()),  # sections: the images of a 2D or 2.5D plan (volume_derive.py)
        "num_val_planes": int(sum(case.shape[0] for case in val)),
        # the validation volumes' median shape: a validation's time per voxel depends on it (few planes cost more)
        "val_shape": [int(v) for v in np.median([case.shape[:3] for case in val], axis=0)] if val else None,
        "val_pixels": int(sum(case.voxels for case in val)),  # voxels one validation pass reads
        "sampled_planes": SAMPLED_PLANES,
    }


def volume_fingerprint(data: Any, asked: str | None = None) -> dict[str, Any]:
    """The fingerprint of a 3D data module's training (and validation) volumes (``asked``: a typed ``data.target``
    that the plan keeps instead of the rule's); the files are closed after."""
    train, val = volume_split(data)
    try:
        if getattr(data, "instance_target", None) is None:
            return compute_volume_fingerprint(train, val, data.num_classes)
        objects = object_fingerprint([id_block(case) for case in train])
        target, why = planned_target(objects, asked, unit="voxels")
        learnt = InstanceTarget(target, list(DEFAULT_OFFSETS_3D) if target == "affinities" else None)
        fingerprint = compute_volume_fingerprint(train, val, TARGETS[target], learnt)
        return {**fingerprint, "labels": "instances", "target": target, "target_reason": why, "objects": objects}
    finally:
        for case in [*train, *val]:
            case.image.close()
            if case.mask is not None:
                case.mask.close()
