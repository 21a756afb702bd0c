"""The data config's normalisation (``data.normalize``) as bioimage.io 0.5 preprocessing operations.

Schemes (the statistics are filled in at train time and stored in the checkpoint's config)::

    {scheme: scale_linear, gain: <float|null>, offset: <float>}     x * gain + offset; gain null = 1 / dtype max
    {scheme: percentile, low, high, per: image|dataset, min_value, max_value, clip}   (x - lo) / (hi - lo)
    {scheme: zscore, per: image|dataset, mean, std}                 (x - mean) / std

A config without ``normalize`` is the legacy behaviour: uint8 images divided by 255. Per-image
statistics are per channel (bioimage.io reduces over ``y`` and ``x`` of each sample); dataset
statistics are lists with one value per channel (or one value for all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unet_train.errors import ConfigError

LEGACY = {"scheme": "scale_linear", "gain": 1.0 / 255.0, "offset": 0.0}
SPATIAL = ["y", "x"]


def dtype_gain(dtype: str) -> float:
    """``gain: null`` of ``scale_linear``: 1 / the dtype's maximum for integers (uint8 1/255), 1 for floats."""
    kind = np.dtype(dtype)
    return 1.0 / float(np.iinfo(kind).max) if kind.kind in "ui" else 1.0


def _values(spec: Mapping[str, Any], key: str, channels: int) -> list[float]:
    value = spec.get(key)
    if value is None:
        raise ConfigError(
            f"data.normalize.{key} is null for per=dataset ({spec.get('scheme')}): the statistics are filled in at "
            "train time; export a checkpoint written by a training run."
        )
    values = [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]
    if len(values) not in (1, channels):
        raise ConfigError(f"data.normalize.{key}={values} needs 1 or {channels} (data.in_channels) values.")
    return values


def _broadcast(a: list[float], b: list[float]) -> tuple[list[float], list[float]]:
    """Two per-channel lists of the same length (a single value repeated)."""
    n = max(len(a), len(b))
    return (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)


def _along_channels(op: str, kwargs: dict[str, Any], values: dict[str, list[float]]) -> dict[str, Any]:
    """One value for every channel as a scalar kwarg, several as a list along the channel axis."""
    if all(len(v) == 1 for v in values.values()):
        return {"id": op, "kwargs": {**kwargs, **{k: v[0] for k, v in values.items()}}}
    channels = max(len(v) for v in values.values())
    spread = {k: v * channels if len(v) == 1 else v for k, v in values.items()}
    return {"id": op, "kwargs": {**kwargs, **spread, "axis": "channel"}}


def preprocessing_ops(normalize: Mapping[str, Any] | None, dtype: str, channels: int) -> list[dict[str, Any]]:
    """bioimage.io ``preprocessing`` for a raw input of ``dtype`` with ``channels`` channels.

    The first operation casts to float32 (the model's input type); the rest reproduce the scheme.
    """
    spec = dict(LEGACY if normalize is None else normalize)
    scheme = spec.get("scheme")
    ops: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    per = spec.get("per", "image")
    if scheme in ("percentile", "zscore") and per not in ("image", "dataset"):
        raise ConfigError(f"data.normalize.per={per!r} must be image or dataset.")
    if scheme == "scale_linear":
        gain = dtype_gain(dtype) if spec.get("gain") is None else float(spec["gain"])
        ops.append({"id": "scale_linear", "kwargs": {"gain": gain, "offset": float(spec.get("offset") or 0.0)}})
    elif scheme == "percentile" and per == "image":
        ops.append(
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": SPATIAL,
                    "min_percentile": float(spec.get("low", 1.0)),
                    "max_percentile": float(spec.get("high", 99.8)),
                },
            }
        )
    elif scheme == "percentile":
        low, high = _broadcast(_values(spec, "min_value", channels), _values(spec, "max_value", channels))
        gains = [1.0 / (h - lo) if h > lo else 1.0 for lo, h in zip(low, high)]
        offsets = [-lo * g for lo, g in zip(low, gains)]
        ops.append(_along_channels("scale_linear", {}, {"gain": gains, "offset": offsets}))
    elif scheme == "zscore" and per == "image":
        ops.append({"id": "zero_mean_unit_variance", "kwargs": {"axes": SPATIAL}})
    elif scheme == "zscore":
        mean, std = _broadcast(_values(spec, "mean", channels), _values(spec, "std", channels))
        ops.append(_along_channels("fixed_zero_mean_unit_variance", {}, {"mean": mean, "std": std}))
    else:
        raise ConfigError(
            f"data.normalize.scheme={scheme!r} is not known; choose one of scale_linear, percentile, zscore."
        )
    if scheme == "percentile" and spec.get("clip"):
        ops.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    return ops


def normalize_image(raw: np.ndarray, normalize: Mapping[str, Any] | None) -> np.ndarray:
    """A raw ``(N, C, H, W)`` array normalised as the scheme says, float32.

    This computes the package's test output. The lead's merge connects it to the data normaliser
    (one source of truth); until then it implements the schemes above with NumPy, per channel.
    """
    spec = dict(LEGACY if normalize is None else normalize)
    x = raw.astype(np.float64)
    scheme, per = spec.get("scheme"), spec.get("per", "image")
    channels = x.shape[1]

    def column(values: list[float]) -> np.ndarray:
        return np.asarray(values * channels if len(values) == 1 else values, dtype=np.float64)[None, :, None, None]

    if scheme == "scale_linear":
        gain = dtype_gain(str(raw.dtype)) if spec.get("gain") is None else float(spec["gain"])
        y = x * gain + float(spec.get("offset") or 0.0)
    elif scheme == "percentile":
        if per == "image":
            lo = np.percentile(x, float(spec.get("low", 1.0)), axis=(2, 3), keepdims=True)
            hi = np.percentile(x, float(spec.get("high", 99.8)), axis=(2, 3), keepdims=True)
        else:
            lo, hi = column(_values(spec, "min_value", channels)), column(_values(spec, "max_value", channels))
        y = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
        if spec.get("clip"):
            y = np.clip(y, 0.0, 1.0)
    elif scheme == "zscore":
        if per == "image":
            mean, std = x.mean(axis=(2, 3), keepdims=True), x.std(axis=(2, 3), keepdims=True)
        else:
            mean, std = column(_values(spec, "mean", channels)), column(_values(spec, "std", channels))
        y = (x - mean) / np.where(std > 0, std, 1.0)
    else:
        raise ConfigError(
            f"data.normalize.scheme={scheme!r} is not known; choose one of scale_linear, percentile, zscore."
        )
    return y.astype(np.float32)
