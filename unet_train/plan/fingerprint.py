"""A dataset fingerprint: what ``unet-plan`` knows about the training split before it plans.

:func:`training_split` is the one place that reads the files, always before any normalisation:
``data=folder`` from the files with the data module's own readers (:mod:`unet_train.data.reading`:
each image in its own dtype, TIFF axes resolved, palette masks as their indices, before channel
matching), other data configs as their ``load_split`` decodes them. The splits are the ones training
reads, ``data.fold`` included. :func:`compute_fingerprint` is a pure function of the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unet_train.data.reading import read_image, read_mask
from unet_train.data.splits import kfold_indices
from unet_train.errors import DataError
from unet_train.labels import IGNORE_INDEX

PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.8, 99.9)


def training_split(
    data: Any, target: str | None = None, ids: list[np.ndarray] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[np.ndarray]]:
    """The training split's images (raw values), masks (class indices) and names, and the validation masks.

    Instance data: the masks are the classes of ``target`` (default ``data.target``) drawn from the object ids,
    and ``ids`` (when given) receives the training images' encoded ids."""
    from unet_train.data.folder import ImageFolder, encode_mask
    from unet_train.data.instances import InstanceTarget, encode_instances
    from unet_train.objects.heads import affinity_offsets

    if isinstance(data, ImageFolder):
        image_paths, mask_paths = data._pairs(data.root, masks_required=True)
        assert mask_paths is not None
        # The stems training reads: data.fold's blocks of all the labelled images, else the val_fraction split.
        if data.fold is None:
            train, val = data._split_stems(len(image_paths))
        else:
            train, val = kfold_indices(len(image_paths), data.fold, data.num_folds)
        images = [read_image(image_paths[i]) for i in train]
        # The data module's own decoding: {0,255} binary, indices checked against the classes, ignore_index unlabelled.
        # data.num_classes=auto resolves over the masks of every split training reads.
        classes, ignore = data.num_classes, data.ignore_index

        def masks_of(indices: Sequence[int]) -> list[np.ndarray]:
            if data.instance_target is not None:  # object ids: the classes the model learns from them
                offsets = affinity_offsets({"affinity_offsets": data.affinity_offsets})
                learnt = InstanceTarget(target or data.instance_target, offsets)
                encoded = [encode_instances(read_mask(mask_paths[i]), mask_paths[i], ignore) for i in indices]
                if ids is not None and indices is train:
                    ids.extend(encoded)
                return [learnt(e)[0] for e in encoded]
            return [encode_mask(read_mask(mask_paths[i]), classes, mask_paths[i], ignore) for i in indices]

        return images, masks_of(train), [image_paths[i].stem for i in train], masks_of(val)
    split, val_split = data.raw_split("train"), data.raw_split("val")
    if split.masks is None:
        raise DataError(f"The training split of {type(data).__name__} has no masks; unet-plan needs labelled data.")
    return list(split.images), list(split.masks), list(split.names), list(val_split.masks or [])


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "median": float(np.median(array)), "max": float(array.max())}


def compute_fingerprint(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str],
    val_masks: Sequence[np.ndarray] = (),
) -> dict:  # fmt: skip
    """The fingerprint of a training split: sizes, channels, dtype, intensities, classes and foreground.

    Intensity percentiles are over all pixels of all images, per channel, on the raw values; classes
    come from every mask training reads (``val_masks`` too: a class only a validation image holds is
    still a class), their shares over the labelled pixels (not ``IGNORE_INDEX``) and the share of the
    training images holding each (``class_images``); foreground (every class but 0) is per training
    image. ``val_masks`` also give the validation split's size.
    """
    if not images:
        raise DataError("The training split is empty; unet-plan needs at least one image.")
    for image, mask, name in zip(images, masks, names):
        if image.shape[:2] != mask.shape:
            raise DataError(f"{name}: image is {image.shape[:2]} but its mask is {mask.shape}.")
    channels = sorted({1 if im.ndim == 2 else int(im.shape[2]) for im in images})
    dtypes = sorted({im.dtype.str.lstrip("<>|=") for im in images})
    top_channels = max(channels)
    per_channel: list[list[np.ndarray]] = [[] for _ in range(top_channels)]
    for image in images:
        planes = image[..., None] if image.ndim == 2 else image
        for c in range(top_channels):  # a grey image among RGB ones counts its grey plane in every channel
            per_channel[c].append(planes[..., min(c, planes.shape[2] - 1)].ravel())
    intensities = []
    for values in per_channel:
        flat = np.concatenate(values).astype(np.float64)
        pct = np.percentile(flat, PERCENTILES)
        intensities.append({
            "min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()), "std": float(flat.std()),
            "percentiles": {f"{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
        })  # fmt: skip
    counts: dict[int, int] = {}
    for mask in [*masks, *val_masks]:
        found, number = np.unique(mask, return_counts=True)
        for v, n in zip(found.tolist(), number.tolist()):
            if v != IGNORE_INDEX:
                counts[int(v)] = counts.get(int(v), 0) + int(n)
    total = max(sum(counts.values()), 1)
    # In how many training images each class occurs: a class of 2 % of the pixels in every image is
    # learned from per-class crops; one in 5 % of the images is also rarely drawn at all.
    holding: dict[int, int] = {}
    for mask in masks:
        for v in np.unique(mask).tolist():
            if v != IGNORE_INDEX:
                holding[int(v)] = holding.get(int(v), 0) + 1
    labelled = [m != IGNORE_INDEX for m in masks]
    foreground = [float(((m > 0) & ok).sum() / max(ok.sum(), 1)) for m, ok in zip(masks, labelled)]
    heights, widths = [im.shape[0] for im in images], [im.shape[1] for im in images]
    sizes: dict[str, int] = {}
    for h, w in zip(heights, widths):
        sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
    return {
        "num_images": len(images),
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),  # "HxW": number of images
        "height": _stats(heights),
        "width": _stats(widths),
        "channels": channels,  # the channel counts found (more than one: mixed grey and colour)
        "dtypes": dtypes,
        "bit_depth": _bit_depth(dtypes),
        "intensity": intensities,
        "classes": {str(k): counts[k] / total for k in sorted(counts)},  # class index: share of labelled pixels
        "class_images": {str(k): holding.get(k, 0) / len(masks) for k in sorted(counts)},  # share of training images
        "num_classes": max(2, max(counts, default=0) + 1),
        "foreground_share": {**_stats(foreground), "mean": float(np.mean(foreground))},
        "foreground_share_per_image": dict(zip(names, foreground)),
        "num_val_images": len(val_masks),
        "val_pixels": int(sum(m.size for m in val_masks)),  # what one validation pass reads
    }


def _bit_depth(dtypes: Sequence[str]) -> int | str:
    """Bits of the stored integer type (8, 16, 32), or ``float``."""
    if any(d.startswith("f") for d in dtypes):
        return "float"
    return max(np.dtype(d).itemsize * 8 if d != "b1" else 1 for d in dtypes)
