"""The post-processing parameters of an instance model: defaults, the checkpoint's tuned ones, overrides.

A checkpoint is untrusted data: its stored parameters are accepted only as plain numbers in range, under
the names the post-processing takes (:func:`check_params`), so a crafted file can neither pass an argument of
its own to the post-processing nor a value that makes it run away (a ``min_size`` of 1e300, a NaN threshold).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from unet_train.objects import tune

# name -> (lowest, highest, whole number)
RANGES: dict[str, tuple[float, float, bool]] = {
    "threshold": (0.0, 1.0, False),
    "seed_threshold": (0.0, 1.0, False),
    "min_size": (1, 2**31 - 1, True),
}
# Validation and unet-eval report these (``val/f1_50``...); each may be ``monitor`` and what tuning maximises.
OBJECT_METRICS = ("f1_50", "ap_50", "map", "aji", "pq")


def instance_target(data: Mapping[str, Any]) -> str | None:
    """The target an instance model learnt (``data.target`` of a run config), or None for a model of classes."""
    return str(data.get("target", "boundary")) if data.get("labels") == "instances" else None


def defaults(target: str) -> dict[str, Any]:
    """The untuned parameters of ``target``'s post-processing: each grid's first value (see tune.GRIDS)."""
    return {name: values[0] for name, values in tune.GRIDS[target].items()}


def check_params(params: Any, target: str, where: str) -> dict[str, Any]:
    """``params`` as plain numbers in range under ``target``'s names; ValueError naming ``where`` otherwise."""
    names = list(tune.GRIDS[target])
    if not isinstance(params, Mapping) or set(params) != set(names):
        given = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{where} must name exactly {', '.join(names)} (it holds {given})")
    out: dict[str, Any] = {}
    for name in names:
        value = params[name]
        low, high, whole = RANGES[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # an int is compared exactly (one too large for a float would overflow math.isfinite)
        finite = number and (isinstance(value, int) or math.isfinite(value))
        if not finite or not low <= value <= high or (whole and value != int(value)):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"{where}.{name}={value!r} must be {kind} in [{low}, {high}]")
        out[name] = int(value) if whole else float(value)
    return out


def check_stored(entry: Any, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """A checkpoint's ``postprocess`` entry (None if absent) checked against its data config: the parameters of
    its model's target as plain numbers in range. ValueError otherwise."""
    if entry is None:
        return None
    target = instance_target(data)
    if not isinstance(entry, Mapping) or target not in tune.GRIDS or entry.get("target") != target:
        raise ValueError(f"its postprocess entry does not describe the post-processing of its model (target {target})")
    return check_params(entry.get("params"), target, "its postprocess.params")


def merged(target: str, stored: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults, replaced by the stored (tuned) values, replaced by the overrides that are not None."""
    params = {**defaults(target), **(stored or {})}
    params.update({k: v for k, v in (overrides or {}).items() if v is not None and k in params})
    return params


def face_offsets(offsets: list[tuple[int, ...]]) -> list[int]:
    """The positions in ``offsets`` of those the affinities' components join: the face neighbours' (all of them
    where none is one). A longer offset's edge would jump over a thin boundary (a membrane)."""
    return [k for k, offset in enumerate(offsets) if sum(map(abs, offset)) == 1] or list(range(len(offsets)))


def map_channels(target: str, offsets: list[tuple[int, ...]] | None = None) -> dict[str, int | list[int]]:
    """Which channel of the probabilities ``(C, H, W)`` each map the post-processing reads is (affinities: the
    channels of the face offsets, :func:`face_offsets`; ``offsets`` as :func:`outputs_of` takes them)."""
    if target == "boundary":
        return {"interior": 1, "boundary": 2}
    if target == "distance":  # the foreground's sigmoid, then the regressed distance (objects/heads.py)
        return {"foreground": 0, "distance": 1}
    if target == "affinities":  # the foreground's sigmoid, then one affinity per offset
        return {"foreground": 0, "affinities": [1 + k for k in face_offsets(offsets or [])]}
    raise ValueError(f"no post-processing for target {target!r}")


def outputs_of(target: str, probabilities: NDArray, offsets: list[tuple[int, ...]] | None = None) -> dict[str, Any]:
    """The named maps :func:`unet_train.objects.tune.apply` takes, from one image's ``(C, H, W)`` probabilities
    (``offsets``: the affinities target's, :func:`unet_train.objects.heads.affinity_offsets`)."""
    if target == "affinities" and (offsets is None or len(offsets) != len(probabilities) - 1):
        raise ValueError(f"{len(probabilities) - 1} affinity maps need as many offsets (given {offsets})")
    outputs: dict[str, Any] = {name: probabilities[index] for name, index in map_channels(target, offsets).items()}
    if target == "affinities" and offsets is not None:
        outputs["offsets"] = [offsets[k] for k in face_offsets(offsets)]
    return outputs


def instances(
    target: str, probabilities: NDArray, params: Mapping[str, Any], offsets: list[tuple[int, ...]] | None = None
) -> NDArray[np.uint32]:
    """Instance labels of one image from its probabilities ``(C, H, W)`` (classes, then the target's maps)."""
    return tune.apply(target, outputs_of(target, probabilities, offsets), dict(params))


def smallest_dtype(labels: NDArray) -> NDArray:
    """``labels`` as uint16 when every id fits (most images), else uint32."""
    return labels.astype(np.uint16 if int(labels.max(initial=0)) < 2**16 else np.uint32)
