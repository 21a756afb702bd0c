"""Raw pixels of a :class:`~unet_train.data.volume_readers.Volume` -> the model's input on the chunked path.

The readers themselves (Zarr, HDF5, TIFF, NIfTI) and :func:`sample_pixels` live in
:mod:`unet_train.data.volume_readers`; the names they define are importable from here too, as before the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unet_train.data.normalize import normalize_image, resolve_spec
from unet_train.data.reading import match_channels
from unet_train.data.volume_readers import (  # re-exported: predict.py imports them from here
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    TIFF_SUFFIXES,
    Volume,
    is_chunked_input,
    is_zarr_path,
    open_volume,
    sample_pixels,
)

__all__ = [
    "HDF5_SUFFIXES",
    "NIFTI_SUFFIXES",
    "TIFF_SUFFIXES",
    "InputScaling",
    "PlaneScaling",
    "Volume",
    "is_chunked_input",
    "is_zarr_path",
    "ngff_axes",
    "open_volume",
    "sample_pixels",
]


@dataclass(frozen=True)
class InputScaling:
    """Raw pixels -> the model's input on the chunked path: the checkpoint's ``data.normalize`` with fixed statistics.

    Training normalises each image by ``data.normalize`` (:mod:`unet_train.data.normalize`). A chunked
    volume is read window by window, never whole, so a scheme with per-image statistics (``percentile``
    or ``zscore`` with ``per: image``) takes them once per plane (``z``, see :class:`PlaneScaling`) from
    :func:`sample_pixels`: exact for a plane that fits ``max_pixels``, estimated on a regular subsample of
    larger ones. Grey and RGB inputs convert into each other as in training.
    """

    spec: dict[str, Any]
    in_channels: int

    @classmethod
    def for_volume(
        cls, volume: Volume, stored_data: Any = None, max_pixels: int = 4_000_000, z: int | None = None
    ) -> InputScaling:
        """The scaling for ``volume`` (or its plane ``z``: per-image statistics of that plane alone);
        ``stored_data`` is the checkpoint's data config (None: uint8 / 255)."""
        normalize = None if stored_data is None else stored_data.get("normalize")
        spec = resolve_spec(normalize)
        in_channels = volume.shape[3] if stored_data is None else int(stored_data.in_channels)
        if spec["scheme"] in ("percentile", "zscore") and spec["per"] == "image":
            pixels = sample_pixels(volume, max_pixels, None if z is None else [z])  # (N, C), the volume's channels
            pixels = match_channels(pixels[:, None, :], in_channels, volume.name).reshape(-1, in_channels)
            pixels = pixels.astype(np.float64)
            if spec["scheme"] == "percentile":
                low, high = np.percentile(pixels, [spec["low"], spec["high"]], axis=0)
                spec = {**spec, "per": "dataset", "min_value": low.tolist(), "max_value": high.tolist()}
            else:
                spec = {**spec, "per": "dataset", "mean": pixels.mean(0).tolist(), "std": pixels.std(0).tolist()}
        return cls(spec, in_channels)

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        """``(h, w, C)`` raw pixels -> float32 ``(in_channels, h, w)``."""
        image = match_channels(raw[..., 0] if raw.shape[2] == 1 else raw, self.in_channels, "input")
        out = normalize_image(image, self.spec)
        out = out[..., None] if out.ndim == 2 else out
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class PlaneScaling:
    """The :class:`InputScaling` of each z plane: a stack's planes are normalised each on its own, as training
    (and the in-memory path) normalises each image by its own ``per: image`` statistics. Caches the last plane."""

    def __init__(self, volume: Volume, stored_data: Any = None, max_pixels: int = 4_000_000) -> None:
        self.volume, self.stored_data, self.max_pixels = volume, stored_data, max_pixels
        self._last: tuple[int, InputScaling] | None = None

    def __call__(self, z: int) -> InputScaling:
        if self._last is None or self._last[0] != z:
            self._last = (z, InputScaling.for_volume(self.volume, self.stored_data, self.max_pixels, z=z))
        return self._last[1]


def ngff_axes(volume_has_z: bool, channels: bool, units: dict[str, str]) -> list[dict[str, str]]:
    """OME-NGFF ``axes`` entries for an output of ``[c,] [z,] y, x``."""
    names = (["c"] if channels else []) + (["z"] if volume_has_z else []) + ["y", "x"]
    out = []
    for name in names:
        entry = {"name": name, "type": "channel" if name == "c" else "space"}
        if name in units:
            entry["unit"] = units[name]
        out.append(entry)
    return out
