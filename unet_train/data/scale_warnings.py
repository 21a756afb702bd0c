"""Warnings of the default ``scale_linear`` with gain null on training images it scales badly: 16/32-bit integers
that use a small part of their type's range (a CT's int16 HU mapped near 0), and integer and float images together
(each divided by its own type's maximum). The 2D data (:mod:`unet_train.data.base`) and the volumes
(:mod:`unet_train.data.volume_data`) measure the ranges their way and say the same."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from unet_train.data.normalize import dtype_max

log = logging.getLogger(__name__)


def warn_default_scaling(dtypes: Sequence[np.dtype], ranges: Mapping[np.dtype, tuple[int, int]]) -> None:
    """Log :func:`mixed_scaling` of the training images' ``dtypes`` and :func:`narrow_range` of each 16/32-bit
    integer type's ``(low, high)`` values in ``ranges``."""
    for text in (mixed_scaling(dtypes), *(narrow_range(d, low, high) for d, (low, high) in ranges.items())):
        if text:
            log.warning(text)


def is_wide_integer(dtype: np.dtype) -> bool:
    """16/32-bit integers: the types :func:`narrow_range` judges."""
    return np.dtype(dtype).kind in "ui" and np.dtype(dtype).itemsize > 1


def narrow_range(dtype: np.dtype, low: int, high: int) -> str | None:
    """What to say of 16/32-bit integer training images whose values ``low..high`` use under an eighth of their
    type's range, which ``scale_linear`` with gain null maps near 0 (a CT's int16 HU to about -0.03..0.1); None
    for other types and ranges."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui" or dtype.itemsize == 1:
        return None
    most = np.iinfo(dtype).max
    if dtype.kind == "i":  # signed (CT in HU): the values below 0 are mapped below 0
        if max(high, -low) >= most // 8:
            return None
        return (
            f"The {dtype} training images span only {low} to {high} of {np.iinfo(dtype).min} to {most}: scale_linear "
            f"with gain null maps them into [{low / most:.3f}, {high / most:.3f}]; data/normalize=percentile (or a "
            "gain) spreads them over [0, 1]."
        )
    if high >= most // 8:
        return None
    return (
        f"The {dtype} training images reach only {high} of {most}: scale_linear with gain null maps them into "
        f"[0, {high / most:.3f}]; data/normalize=percentile (or a gain) spreads them over [0, 1]."
    )


def mixed_scaling(dtypes: Sequence[np.dtype]) -> str | None:
    """What to say of training images of integer and float types together under ``scale_linear`` with gain null:
    the integers are divided by their type's maximum and the floats by 1 (a CT stored as int16 beside one whose
    NIfTI ``scl_slope`` makes it float32: the same HU 32767 times apart); None for one kind of type."""
    kinds = {np.dtype(d) for d in dtypes}
    integers = sorted(str(d) for d in kinds if d.kind in "ui")
    floats = sorted(str(d) for d in kinds if d.kind == "f")
    if not integers or not floats:
        return None
    maxima = ", ".join(f"{int(dtype_max(np.dtype(d)))} for {d}" for d in integers)
    return (
        f"The training images mix integer ({'/'.join(integers)}) and float ({'/'.join(floats)}) values: scale_linear "
        f"with gain null divides each by its type's maximum ({maxima}, 1 for floats), so equal values reach the "
        "model scaled apart; give a gain for all (e.g. a CT window: data.normalize.gain=0.0025 "
        "data.normalize.offset=0.4) or data/normalize=percentile."
    )
