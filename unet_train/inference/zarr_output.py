"""A prediction written chunk by chunk into an OME-Zarr (NGFF 0.5, Zarr v3) store, resumable after a kill.

Layout of ``output=NAME.zarr``:

``0``
    probabilities: ``([z,] y, x)`` of the positive class for a binary model, ``(c, [z,] y, x)``
    otherwise; float16, or uint8 (``round(255 p)``, ``prob_dtype=uint8``); the image of the
    group's ``ome.multiscales`` (one level, the input's pixel size as its scale).
``labels/mask/0``
    the mask ``([z,] y, x)`` uint8: class indices (0/1 for a binary model) of the probabilities as
    stored in ``0`` (the instance labels are made of the same values), an NGFF label image.
``labels/instances/0``
    with ``instances=true``: uint32 instance labels (0 = background), an NGFF label image.
``done``
    one uint8 per (z, chunk row, chunk column), set to 1 after that chunk's probabilities and mask
    are written; for a 3D model's chunks ``(z, y, x)`` (``chunk_size=[z, y, x]``), one per chunk layer,
    row and column. A restarted prediction skips the chunks marked done; a chunk being written when
    the process was killed is not marked and is written again. The settings that produced the
    store are kept in its ``unet_predict`` attribute; a restart with other settings is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_train.errors import ConfigError
from unet_train.inference.sources import ngff_axes
from unet_train.inference.volumes import Volume, require
from unet_train.safe_io import confined

log = logging.getLogger(__name__)

NGFF_VERSION = "0.5"
PROB_DTYPES = ("float16", "uint8", "float32")
# Settings the prediction may choose itself (tile_size/batch_size null, the margin from the model): when a resume is
# refused, the message names the checkpoints if they differ, else a setting the user gives, before these.
CHOSEN_SETTINGS = ("tile_size", "margin", "batch_size")


def _multiscales(name: str, axes: list[dict[str, str]], scale: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]


class ZarrPrediction:
    """Probabilities, mask and done-markers of one prediction in an OME-Zarr store (see the module docstring).

    Use :meth:`create` on one process (rank 0), then :meth:`open` everywhere.
    """

    def __init__(self, path: Path, threshold: float) -> None:
        zarr = require("zarr")
        self.path = path
        self.group = zarr.open_group(str(path), mode="r+")
        settings = self.group.attrs["unet_predict"]
        chunk = settings["chunk_size"]  # a plane's side, or a 3D model's [z, y, x]
        self.sides = (1, chunk, chunk) if isinstance(chunk, int) else tuple(int(c) for c in chunk)
        self.chunk = self.sides[-1]
        self.binary = bool(settings["binary"])
        # the leading class channels the mask is drawn from (None: all); a distance model's map comes after them
        self.class_channels = settings.get("class_channels")
        self.has_z = bool(settings["has_z"])
        self.prob = self.group["0"]
        self.mask = self.group["labels/mask/0"]
        self.done_array = self.group["done"]
        self.threshold = threshold
        self.prob_dtype = np.dtype(self.prob.dtype)

    @staticmethod
    def create(
        path: Path,
        volume: Volume,
        classes: int,
        chunk: int | tuple[int, ...],
        prob_dtype: str,
        settings: dict[str, Any],
    ) -> None:
        """Create the store, or check that an existing one was made with the same ``settings`` (to resume it).

        ``chunk``: the side of a plane's chunks (each z plane is chunked on its own), or ``(z, y, x)`` sides of a
        3D model's chunks."""
        zarr = require("zarr")
        if prob_dtype not in PROB_DTYPES:
            raise ConfigError(f"prob_dtype={prob_dtype!r} must be one of {', '.join(PROB_DTYPES)}.")
        depth, height, width, _ = volume.shape
        binary = classes == 1
        sides = (1, chunk, chunk) if isinstance(chunk, int) else tuple(chunk)
        has_z = volume.has_z or not isinstance(chunk, int)  # a 3D model's output always has z
        stored_chunk = chunk if isinstance(chunk, int) else list(sides)
        settings = {**settings, "chunk_size": stored_chunk, "binary": binary, "has_z": has_z, "prob_dtype": prob_dtype}
        if path.exists():
            check_links(path)
            try:
                group = zarr.open_group(str(path), mode="r")
                stored = group.attrs["unet_predict"]
            except Exception as exc:
                raise ConfigError(
                    f"output={path} exists and is not a unet-predict store; choose another output or delete it."
                ) from exc
            changed = [k for k in settings if stored.get(k) != settings[k]]
            if changed:
                k = min(changed, key=lambda key: (key != "ckpt", key in CHOSEN_SETTINGS))  # stable: else in order
                raise ConfigError(
                    f"output={path} holds a prediction made with {k}={stored.get(k)!r}, not {settings[k]!r} "
                    f"(settings that differ: {', '.join(changed)}); rerun with the same settings to resume, or "
                    "choose another output."
                )
            return
        spatial = ((depth,) if has_z else ()) + (height, width)
        spatial_chunks = sides if has_z else sides[1:]
        names = (*(("z",) if has_z else ()), "y", "x")
        scale = [volume.scale.get(a, 1.0) for a in names]
        group = zarr.open_group(str(path), mode="w")
        prob_shape = spatial if binary else (classes, *spatial)
        group.create_array(
            "0",
            shape=prob_shape,
            chunks=spatial_chunks if binary else (classes, *spatial_chunks),
            dtype=prob_dtype,
            fill_value=0,
            dimension_names=names if binary else ("c", *names),
        )
        labels = group.require_group("labels")
        kinds = ["mask", *(["instances"] if settings.get("instances") else [])]
        for kind in kinds:
            label = labels.require_group(kind)
            label.create_array(
                "0",
                shape=spatial,
                chunks=spatial_chunks,
                dtype="uint8" if kind == "mask" else "uint32",
                fill_value=0,
                dimension_names=names,
            )
            label.attrs["ome"] = {
                "version": NGFF_VERSION,
                "image-label": {"source": {"image": "../../"}},
                "multiscales": _multiscales(kind, ngff_axes(has_z, False, volume.units), scale),
            }
        labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": kinds}
        done = tuple(-(-n // c) for n, c in zip((depth, height, width), sides))
        group.create_array("done", shape=done, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
        prob_scale = scale if binary else [1.0, *scale]
        group.attrs.update(
            {
                "ome": {
                    "version": NGFF_VERSION,
                    "multiscales": _multiscales(
                        "probabilities", ngff_axes(has_z, not binary, volume.units), prob_scale
                    ),
                },
                "unet_predict": settings,
            }
        )

    def done(self) -> np.ndarray:
        """``(Z, chunk rows, chunk columns)`` bool (chunk layers for a 3D model's): the chunks already written."""
        return np.asarray(self.done_array[...]).astype(bool)

    def _where(self, z: int, y0: int, y1: int, x0: int, x1: int) -> tuple[Any, ...]:
        return (*((z,) if self.has_z else ()), slice(y0, y1), slice(x0, x1))

    def write_chunk(self, z: int, chunk: tuple[int, int], bounds: tuple[int, ...], prob: torch.Tensor) -> None:
        """Write one chunk's probabilities ``(K, h, w)`` and mask, then mark it done."""
        self._write(self._where(z, *bounds), (z, *chunk), prob)

    def write_block(self, chunk: tuple[int, ...], bounds: tuple[int, ...], prob: torch.Tensor) -> None:
        """A 3D model's chunk ``(cz, cy, cx)``: probabilities ``(K, d, h, w)`` and mask at ``bounds``
        ``(z0, z1, y0, y1, x0, x1)``, then marked done."""
        self._write(tuple(slice(bounds[i], bounds[i + 1]) for i in range(0, 6, 2)), chunk, prob)

    def _write(self, where: tuple[Any, ...], done: tuple[int, ...], prob: torch.Tensor) -> None:
        values = prob.numpy()
        if self.prob_dtype == np.uint8:
            stored = np.round(values * 255.0).astype(np.uint8)
        else:
            stored = values.astype(self.prob_dtype)
        self.prob[where if self.binary else (slice(None), *where)] = stored[0] if self.binary else stored
        # The mask comes from the stored (possibly quantised) values, as the instance labels do: a pixel
        # at p = 0.5002 stored as float16 0.5 is background in both at threshold 0.5.
        values = stored_probabilities(stored)
        head = values if self.class_channels is None else values[: self.class_channels]
        mask = (head[0] > self.threshold) if len(head) == 1 else head.argmax(0)
        self.mask[where] = mask.astype(np.uint8)
        self.done_array[done] = 1

    def finish(self) -> None:
        self.group.attrs["unet_predict"] = {**self.group.attrs["unet_predict"], "complete": True}


def check_links(store: Path) -> None:
    """Refuse to resume ``store`` when a link in it leads out of it: zarr writes each chunk by its path."""
    for folder, names, files in os.walk(store):  # does not descend into linked folders
        for name in (*names, *files):
            if os.path.islink(os.path.join(folder, name)):
                confined(Path(folder) / name, store)


def stored_probabilities(values: np.ndarray) -> np.ndarray:
    """Probabilities as float32 from their stored form (``uint8`` is ``round(255 p)``); mask and labels use these."""
    return values.astype(np.float32) / 255.0 if values.dtype == np.uint8 else values.astype(np.float32)


def read_scale_of(path: Path) -> list[float]:
    """The scale of level 0 of an OME-Zarr image (for the tests and tools)."""
    zarr = require("zarr")
    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs["ome"]
    return list(ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"])
