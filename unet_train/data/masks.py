"""Class masks' values: stored values to class indices, and ``data.num_classes: auto`` from the values found.

Shared by folders of images (:mod:`unet_train.data.folder`) and of volumes (:mod:`unet_train.data.volumes`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unet_train.errors import DataError
from unet_train.labels import IGNORE_INDEX

log = logging.getLogger(__name__)


def encode_mask(mask: np.ndarray, num_classes: int, path: Path, ignore_index: int | None = None) -> np.ndarray:
    """Stored mask values -> class indices: binary {0,255} or {0,1}, or indexed values 0..K-1.

    Pixels equal to ``ignore_index`` (a value that is no class) are unlabelled: they become
    ``IGNORE_INDEX`` and the other values are read as without them.
    """
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
        labels = mask.astype(np.uint8)  # num_classes <= MAX_CLASSES, so every class and IGNORE_INDEX fit
    if ignored is not None:
        labels[ignored] = IGNORE_INDEX
    return labels


def value_list(values: set[int], show: int = 10) -> str:
    """``[0, 1, 2, 3, 4, ..., 254, 255] (37 values)``: a long list cut in the middle, and said to be cut."""
    ordered = sorted(values)
    if len(ordered) <= show:
        return str(ordered)
    head, tail = ordered[: show - show // 2], ordered[-(show // 2) :]
    return f"[{', '.join(map(str, head))}, ..., {', '.join(map(str, tail))}] ({len(ordered)} values)"


def infer_num_classes(values: set[int], where: str, jpeg: bool = False, ids: bool = False) -> int:
    """``num_classes: auto``: 2 for binary {0,255} or {0,1} masks, else the largest index + 1.

    ``jpeg``: the masks include JPEG files, whose lossy compression turns class edges into in-between values.
    ``ids``: the masks may hold object ids (16/32-bit, ``data.labels=auto`` found too few values to say so): a
    refusal names ``data.labels=instances`` too.
    """
    if values <= {0, 255}:
        return 2
    if min(values) < 0:
        raise DataError(f"Masks in {where} hold negative values {sorted(v for v in values if v < 0)[:5]}.")
    classes = max(2, max(values) + 1)
    absent_count = classes - len(values)  # every value is in 0..classes-1; counted, not listed (ids reach 2**32)
    if classes > 8 and absent_count > classes / 2:
        void = ""
        if IGNORE_INDEX in values:
            void = f" (or data.ignore_index={IGNORE_INDEX} if {IGNORE_INDEX} marks unlabelled pixels)"
        if jpeg:
            raise DataError(
                f"Masks in {where} are JPEG files, whose lossy compression blurs class values at every edge: they "
                f"hold the values {value_list(values)}; save the masks as PNG or TIFF (lossless)."
            )
        raise DataError(
            f"Masks in {where} hold the values {value_list(values)}, which look like grey levels rather than "
            f"class indices 0..K-1; map them to indices or set data.num_classes{void}"
            + (", or data.labels=instances if each value is one object's id." if ids else ".")
        )
    if absent_count:
        absent = sorted(set(range(classes)) - values)  # at most half of the classes, so about as many as the values
        log.warning("data.num_classes=auto: %d classes, but class(es) %s never appear in the masks", classes, absent)
    return classes
