"""Intensity normalisation by a named scheme (``data.normalize``), the same in training, unet-eval and unet-predict.

A spec is a mapping with a ``scheme`` and its parameters (``configs/data/normalize/*.yaml``)::

    {scheme: scale_linear, gain: <float|null>, offset: <float>}
        x * gain + offset; gain null = 1 / (dtype max): uint8 1/255, uint16 1/65535, float 1
    {scheme: percentile, low: 1.0, high: 99.8, per: image|dataset, min_value: <list|null>,
     max_value: <list|null>, clip: <bool>}
        (x - lo) / (hi - lo + 1e-6) per channel, lo/hi the low/high percentiles of the image or of
        the training split (then stored in min_value/max_value); clip: to [0, 1] afterwards
    {scheme: zscore, per: image|dataset, mean: <list|null>, std: <list|null>}
        (x - mean) / (std + 1e-6) per channel, of the image or of the training split

The names map one to one onto bioimage.io's preprocessing operations (see
:func:`bioimageio_preprocessing`): ``scale_linear``; ``percentile`` is ``scale_range`` (per
sample, or with the dataset's values a ``scale_linear``) followed by ``clip`` when asked;
``zscore`` is ``zero_mean_unit_variance`` per image and ``fixed_zero_mean_unit_variance`` with
dataset statistics. ``eps`` is 1e-6, as bioimage.io's default.

Statistics of ``per: dataset`` are computed once on the training split (:func:`fill_dataset_stats`)
and written into the run's config, so they travel in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from unet_train.data.reading import channels_of, match_channels
from unet_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EPS = 1e-6
DEFAULTS: dict[str, dict[str, Any]] = {
    "scale_linear": {"gain": None, "offset": 0.0},
    "percentile": {"low": 1.0, "high": 99.8, "per": "image", "min_value": None, "max_value": None, "clip": False},
    "zscore": {"per": "image", "mean": None, "std": None},
}
DATASET_STATS = {"percentile": ("min_value", "max_value"), "zscore": ("mean", "std")}
# Pixels of the training split beyond which float percentiles are taken from an even subsample.
MAX_EXACT_VALUES = 1 << 25


def resolve_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checked spec holding exactly its scheme's parameters (defaults filled in); None = scale_linear.

    Parameters of another scheme are tolerated at their default values (what a Hydra merge leaves
    behind) and refused otherwise, with the key named.
    """
    if spec is None:
        return {"scheme": "scale_linear", **DEFAULTS["scale_linear"]}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"data.normalize={spec!r} must be a mapping with a scheme (e.g. data/normalize=scale_linear)."
        )
    raw = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    assert isinstance(raw, dict)
    given: dict[str, Any] = {str(key): value for key, value in raw.items()}
    scheme = given.pop("scheme", None)
    if scheme not in DEFAULTS:
        raise ConfigError(
            f"data.normalize.scheme={scheme!r} is not known; choose one of {', '.join(DEFAULTS)} "
            "(e.g. data/normalize=percentile)."
        )
    out = {"scheme": scheme, **DEFAULTS[scheme]}
    for key, value in given.items():
        if key in out:
            out[key] = value
            continue
        owners = [s for s, params in DEFAULTS.items() if key in params]
        if not owners:
            raise ConfigError(f"data.normalize.{key} is not a normalisation parameter (scheme {scheme} takes "
                              f"{', '.join(DEFAULTS[scheme])}).")  # fmt: skip
        if value != DEFAULTS[owners[0]][key]:
            raise ConfigError(
                f"data.normalize.{key}={value!r} belongs to scheme {owners[0]}, not {scheme} (which takes "
                f"{', '.join(DEFAULTS[scheme])}); choose the scheme with data/normalize={scheme} and give its keys."
            )
    _check(out)
    return out


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"data.normalize.{key}={value!r} must be a finite number.")
    return float(value)


def _values(spec: dict[str, Any], key: str) -> list[float] | None:
    value = spec[key]
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"data.normalize.{key}={value!r} must be a list of numbers, one per channel, or null.")
    return [_number(v, key) for v in value]


def _check(spec: dict[str, Any]) -> None:
    scheme = spec["scheme"]
    if scheme == "scale_linear":
        spec["offset"] = _number(spec["offset"], "offset")
        if spec["gain"] is not None:
            spec["gain"] = _number(spec["gain"], "gain")
        return
    if spec["per"] not in ("image", "dataset"):
        raise ConfigError(f"data.normalize.per={spec['per']!r} must be image or dataset.")
    if scheme == "percentile":
        low, high = _number(spec["low"], "low"), _number(spec["high"], "high")
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"data.normalize.low={low:g} and high={high:g} must satisfy 0 <= low < high <= 100.")
        spec["low"], spec["high"] = low, high
        if not isinstance(spec["clip"], bool):
            raise ConfigError(f"data.normalize.clip={spec['clip']!r} must be true or false.")
    first, second = DATASET_STATS[scheme]
    a, b = _values(spec, first), _values(spec, second)
    if (a is None) != (b is None) or (a is not None and b is not None and len(a) != len(b)):
        raise ConfigError(
            f"data.normalize.{first} and {second} must both be null or both lists of one value per channel."
        )
    if a is not None and spec["per"] == "image":
        raise ConfigError(f"data.normalize.{first}/{second} are dataset statistics: set data.normalize.per=dataset.")
    if scheme == "zscore" and b is not None and min(b) < 0:
        raise ConfigError(f"data.normalize.std={b} must not be negative.")
    spec[first], spec[second] = a, b


def needs_dataset_stats(spec: Mapping[str, Any]) -> bool:
    """Whether ``spec`` asks for training-split statistics it does not hold yet."""
    fields = DATASET_STATS.get(spec["scheme"])
    if fields is None:
        return False
    return spec["per"] == "dataset" and spec[fields[0]] is None


def keeps_uint8(spec: Mapping[str, Any], dtype: np.dtype) -> bool:
    """True when ``spec`` on ``dtype`` is plain division by 255: the loader keeps such images as uint8.

    They are augmented as uint8 and divided by 255 when they become tensors (today's exact path, a
    quarter of the memory); :func:`normalize_image` computes the same float32 values.
    """
    return (
        np.dtype(dtype) == np.uint8
        and spec["scheme"] == "scale_linear"
        and spec["gain"] is None
        and spec["offset"] == 0.0
    )


def dtype_max(dtype: np.dtype) -> float:
    """The largest value of an integer dtype; 1.0 for floats (what ``gain: null`` divides by)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def _channel_view(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 2 else x


def _per_channel(values: list[float], channels: int, key: str) -> np.ndarray:
    if len(values) != channels:
        raise ConfigError(
            f"data.normalize.{key} has {len(values)} value(s) but the images have {channels} channel(s); "
            "give one per channel (or null to compute them on the training split)."
        )
    return np.asarray(values, dtype=np.float64)


def normalize_image(image: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """``image`` ``(H, W)`` or ``(H, W, C)`` normalised by ``spec`` (module docs): float32 of the same shape."""
    scheme = spec["scheme"]
    x = _channel_view(image)
    channels = x.shape[2]
    if scheme == "scale_linear":
        out = x.astype(np.float32)
        if spec["gain"] is None:
            out /= np.float32(dtype_max(image.dtype))
        else:
            out *= np.float32(spec["gain"])
        if spec["offset"]:
            out += np.float32(spec["offset"])
        return out.reshape(image.shape)
    if scheme == "percentile":
        if spec["per"] == "image":
            lo_hi = np.percentile(x.reshape(-1, channels), [spec["low"], spec["high"]], axis=0)
            lo, hi = lo_hi[0], lo_hi[1]
        else:
            lo, hi = _dataset_values(spec, channels)
        shift, scale = lo, 1.0 / (hi - lo + EPS)
    elif scheme == "zscore":
        if spec["per"] == "image":
            flat = x.reshape(-1, channels)
            mean, std = flat.mean(axis=0, dtype=np.float64), flat.std(axis=0, dtype=np.float64)
        else:
            mean, std = _dataset_values(spec, channels)
        shift, scale = mean, 1.0 / (std + EPS)
    else:
        raise ConfigError(f"data.normalize.scheme={scheme!r} is not known; choose one of {', '.join(DEFAULTS)}.")
    out = (x.astype(np.float32) - shift.astype(np.float32)) * scale.astype(np.float32)
    if scheme == "percentile" and spec["clip"]:
        np.clip(out, 0.0, 1.0, out=out)
    return out.reshape(image.shape)


def _dataset_values(spec: Mapping[str, Any], channels: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = DATASET_STATS[spec["scheme"]]
    if spec[first] is None:
        raise ConfigError(
            f"data.normalize.per=dataset needs {first} and {second}: unet-train computes them on the training "
            "split; give them (one value per channel) to use them elsewhere."
        )
    return _per_channel(spec[first], channels, first), _per_channel(spec[second], channels, second)


def fill_dataset_stats(spec: Mapping[str, Any], images: Sequence[np.ndarray]) -> dict[str, Any]:
    """``spec`` with its ``per: dataset`` statistics computed over ``images`` (the training split), if missing."""
    spec = dict(spec)
    if not needs_dataset_stats(spec) or not images:
        return spec
    channels = {1 if im.ndim == 2 else im.shape[2] for im in images}
    if len(channels) != 1:
        raise ConfigError(f"Dataset statistics need images with one number of channels; found {sorted(channels)}.")
    (count,) = channels
    per_channel = [[_channel_view(im)[..., c].ravel() for im in images] for c in range(count)]
    if spec["scheme"] == "percentile":
        stats = [dataset_percentiles(values, [spec["low"], spec["high"]]) for values in per_channel]
        spec["min_value"], spec["max_value"] = [s[0] for s in stats], [s[1] for s in stats]
    else:
        moments = [dataset_mean_std(values) for values in per_channel]
        spec["mean"], spec["std"] = [m[0] for m in moments], [m[1] for m in moments]
    return spec


def dataset_percentiles(values: Sequence[np.ndarray], q: Sequence[float]) -> list[float]:
    """Percentiles ``q`` of all ``values`` together, as ``np.percentile`` (linear) of their concatenation.

    8/16-bit integers go through an exact histogram (no concatenated copy); other types are
    concatenated, or evenly subsampled beyond ``MAX_EXACT_VALUES`` pixels.
    """
    total = sum(v.size for v in values)
    if all(v.dtype.kind in "ui" and v.dtype.itemsize <= 2 for v in values):
        low = min(int(np.iinfo(v.dtype).min) for v in values)
        size = max(int(np.iinfo(v.dtype).max) - low + 1 for v in values)
        counts = np.zeros(size, dtype=np.int64)
        for v in values:
            hist = np.bincount((v.astype(np.int64) - low).ravel())
            counts[: hist.size] += hist
        cumulative = np.cumsum(counts)
        result = []
        for quantile in q:
            position = quantile / 100.0 * (total - 1)
            below = math.floor(position)
            above = min(below + 1, total - 1)
            a = float(np.searchsorted(cumulative, below, side="right") + low)
            b = float(np.searchsorted(cumulative, above, side="right") + low)
            result.append(a + (b - a) * (position - below))
        return result
    step = max(1, math.ceil(total / MAX_EXACT_VALUES))
    if step > 1:
        log.info("Dataset percentiles from every %d-th of %d pixels", step, total)
    joined = np.concatenate([v.ravel()[::step] for v in values])
    return [float(p) for p in np.percentile(joined, list(q))]


def dataset_mean_std(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and (population) standard deviation of all ``values`` together, merged image by image in float64."""
    n, mean, m2 = 0, 0.0, 0.0
    for v in values:
        k = v.size
        if k == 0:
            continue
        mean_k = float(v.mean(dtype=np.float64))
        m2_k = float(((v.astype(np.float64) - mean_k) ** 2).sum())
        delta = mean_k - mean
        total = n + k
        mean += delta * k / total
        m2 += m2_k + delta * delta * n * k / total
        n = total
    return mean, math.sqrt(m2 / n) if n else 0.0


def describe(spec: Mapping[str, Any]) -> str:
    """One line for the log, e.g. ``percentile 1-99.8 per image``."""
    scheme = spec["scheme"]
    if scheme == "scale_linear":
        gain = "1/(dtype max)" if spec["gain"] is None else f"{spec['gain']:g}"
        return f"scale_linear x*{gain}+{spec['offset']:g}"
    if scheme == "percentile":
        text = f"percentile {spec['low']:g}-{spec['high']:g} per {spec['per']}"
        if spec["per"] == "dataset" and spec["min_value"] is not None:
            text += f" (low {_fmt(spec['min_value'])}, high {_fmt(spec['max_value'])})"
        return text + (", clipped to [0, 1]" if spec["clip"] else "")
    text = f"zscore per {spec['per']}"
    if spec["per"] == "dataset" and spec["mean"] is not None:
        text += f" (mean {_fmt(spec['mean'])}, std {_fmt(spec['std'])})"
    return text


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def bioimageio_preprocessing(
    spec: Mapping[str, Any], dtype: np.dtype | str = "uint8", axes: Sequence[str] = ("y", "x")
) -> list[dict[str, Any]]:
    """The bioimage.io (model spec 0.5) preprocessing operations that compute exactly what ``spec`` does.

    ``dtype`` is the images' stored type (it fixes ``gain: null``). Per-image statistics are
    per channel, over the spatial ``axes`` (``[y, x]``; a volume's ``[z, y, x]``: training scales
    each volume by statistics of the whole volume).
    """
    spec = resolve_spec(spec)
    scheme = spec["scheme"]
    if scheme == "scale_linear":
        gain = 1.0 / dtype_max(np.dtype(dtype)) if spec["gain"] is None else spec["gain"]
        return [{"id": "scale_linear", "kwargs": {"gain": gain, "offset": spec["offset"]}}]
    if scheme == "zscore":
        if spec["per"] == "image":
            return [{"id": "zero_mean_unit_variance", "kwargs": {"axes": list(axes), "eps": EPS}}]
        # bioimage.io's fixed_zero_mean_unit_variance takes no eps: it goes into std, as training adds it
        std = [s + EPS for s in spec["std"]]
        return [
            {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": spec["mean"], "std": std, "axis": "channel"}}
        ]
    if spec["per"] == "image":
        ops = [
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": list(axes),
                    "min_percentile": spec["low"],
                    "max_percentile": spec["high"],
                    "eps": EPS,
                },
            }
        ]
    else:  # fixed dataset values: (x - lo) / (hi - lo + eps) is a per-channel linear map
        scale = [1.0 / (hi - lo + EPS) for lo, hi in zip(spec["min_value"], spec["max_value"])]
        offset = [-lo * s for lo, s in zip(spec["min_value"], scale)]
        ops = [{"id": "scale_linear", "kwargs": {"gain": scale, "offset": offset, "axis": "channel"}}]
    if spec["clip"]:
        ops.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    return ops


_CONVERSIONS_LOGGED: set[tuple[int, int]] = set()


def prepare_input(image: np.ndarray, in_channels: int, spec: Mapping[str, Any] | None, where: str) -> np.ndarray:
    """Raw pixels as read (:mod:`unet_train.data.reading`) -> a model input: float32 ``(C, H, W)``.

    The same steps as the training data: grey copied to 3 channels or RGB turned grey when the
    model asks for it (:func:`~unet_train.data.reading.match_channels`), then ``spec`` (the
    checkpoint's ``data.normalize``; None = scale_linear with gain null).
    """
    channels = channels_of(image)
    if channels != in_channels:
        if {channels, in_channels} != {1, 3}:
            raise DataError(
                f"{where} has {channels} channel(s) but the model takes {in_channels}; "
                f"convert the images to {'grey' if in_channels == 1 else f'{in_channels} channels'} first."
            )
        if (channels, in_channels) not in _CONVERSIONS_LOGGED:
            _CONVERSIONS_LOGGED.add((channels, in_channels))
            how = "grey copied to 3 channels" if channels == 1 else "RGB turned grey (BT.601 luminance)"
            log.info("%s: %s, as the model takes %d (and likewise for other such images)", where, how, in_channels)
        image = match_channels(image, in_channels, where)
    out = normalize_image(image, resolve_spec(spec))
    return np.ascontiguousarray((out[..., None] if out.ndim == 2 else out).transpose(2, 0, 1))
