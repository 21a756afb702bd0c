"""``unet-predict`` with a 3D model: each input (TIFF stack, NIfTI, HDF5, Zarr) predicted as one volume.

The volume is read whole and scaled as training scaled each volume (the checkpoint's ``data.normalize``, with
``per: image`` statistics of this volume), tiled in 3D with Gaussian blending
(:class:`~unet_train.inference.tiling.TiledPredictor`), and written as ``<name>_prob`` (float32: the positive
class ``(Z, Y, X)`` of a binary model, else ``(K, Z, Y, X)``) and ``<name>_mask`` (uint8: 0/255, or class
indices). A NIfTI input gives ``.nii.gz`` outputs with its affine; any other gives ImageJ TIFF stacks
with the input's voxel spacing and unit.

With ``output=NAME.zarr``, and for a Zarr/HDF5 input larger than can be read whole (``max_pixels``), the
volume is predicted chunk ``(z, y, x)`` by chunk into an OME-Zarr store instead
(:func:`~unet_train.inference.large.predict_volume_to_zarr`): bounded memory, resumable, shared between
torchrun's processes, equal to the whole-volume prediction. A 2.5D model (``data.context_slices=k``) is applied
section by section (:func:`predict_sections`), whole or, in the same cases, plane by plane into OME-Zarr over slabs
of planes (:func:`~unet_train.inference.large.predict_sections_to_zarr`).
"""

from __future__ import annotations

import gzip
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from omegaconf import DictConfig

from unet_train.data.limits import check_pixels, max_pixels
from unet_train.data.normalize import resolve_spec
from unet_train.data.sections import SectionSlab
from unet_train.data.volume_data import VolumeCase, sections_scaled_per_volume, volume_spec
from unet_train.data.volumes import volume_stem
from unet_train.errors import ConfigError, DataError, UserError
from unet_train.inference.instances import instance_labels
from unet_train.inference.large import predict_sections_to_zarr, predict_volume_to_zarr, store_settings
from unet_train.inference.tiling import TiledPredictor
from unet_train.inference.volumes import NIFTI_SUFFIXES, Volume, is_chunked_input, require
from unet_train.objects.heads import affinity_offsets
from unet_train.objects.params import smallest_dtype
from unet_train.predict import resolved_paths
from unet_train.predict_files import mask_of, probability_array, removed_on_failure, written_whole
from unet_train.safe_io import make_folder

log = logging.getLogger(__name__)

# OME-NGFF unit names -> what ImageJ writes in a TIFF's ``unit``
IMAGEJ_UNITS = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}


def tile_setting(value: Any) -> int | tuple[int, ...] | None:
    """``tile_size``: one side for every axis, a list (``[z, y, x]`` for a volume), or null (from tile_memory)."""
    if value is None or isinstance(value, int):
        return value
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"tile_size={value!r} must be an int or a list of ints ([z, y, x] for a volume).") from None


def check_channels(volume: Volume, inputs: list[Any]) -> None:
    in_channels = int(inputs[0].in_channels)
    each = " per section" if inputs[0].get("context_slices") else ""  # a 2.5D model: 2k + 1 sections of them
    if volume.shape[3] != in_channels:
        raise DataError(
            f"{volume.name} has {volume.shape[3]} channel(s) (axes {volume.axes}) but the model takes {in_channels}"
            f"{each}; set input_axes (e.g. czyx or zyxc)."
        )


def check_sections(volumes: list[tuple[Path, Volume]], inputs: list[Any]) -> None:
    """A 2.5D model's inputs must be volumes of sections: a 2D image (no z axis) is refused, before any prediction,
    rather than predicted from copies of its one plane."""
    context = int(inputs[0].get("context_slices") or 0)
    for path, volume in volumes:
        if context and not volume.has_z:
            raise DataError(
                f"{path} is a 2D image (axes {volume.axes}) but the model is 2.5D (data.context_slices={context}): "
                f"it segments each section of a volume with {context} section(s) on each side; give it a volume "
                "(a TIFF stack, NIfTI, HDF5 or Zarr with a z axis; input_axes=zyx where the file does not say)."
            )


def volume_reader(volume: Volume, inputs: list[Any]) -> Callable[..., torch.Tensor]:
    """``read(z0, z1, y0, y1, x0, x1)``: the model's input ``(C, d, h, w)`` of a window, one part per normalisation
    (see ``input_specs``), each scaled by statistics of the whole volume (as training scaled each volume)."""
    check_channels(volume, inputs)
    cases = [
        VolumeCase(volume, None, volume.name, (1.0, 1.0, 1.0), spec=volume_spec(volume, data.get("normalize")))
        for data in inputs
    ]

    def read(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        parts = []
        for case in cases:
            scaled = case.read_image((z0, y0, x0), (z1 - z0, y1 - y0, x1 - x0))  # (d, h, w, C)
            parts.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(scaled, -1, 0))))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return read


def model_input(volume: Volume, inputs: list[Any]) -> torch.Tensor:
    """The whole volume as the model's input ``(C, Z, Y, X)`` (see :func:`volume_reader`)."""
    check_channels(volume, inputs)
    hint = "a 3D model predicts each volume whole unless output=NAME.zarr: "
    check_pixels(volume.name, volume.shape, hint)  # before reading a pixel
    depth, height, width, _ = volume.shape
    return volume_reader(volume, inputs)(0, depth, 0, height, 0, width)


def predict_sections(
    predictor: TiledPredictor, volume: Volume, inputs: list[Any], on_tiles: Any = None
) -> torch.Tensor:
    """A 2.5D model (``data.context_slices=k``) over a volume, section by section, each with its ``2k + 1`` sections
    as channels (:mod:`unet_train.data.sections`: section-major, mirrored at the ends, scaled per volume as in
    training): ``(K, Z, Y, X)``. The volume is read once and its sections indexed for each centre section."""
    context = int(inputs[0].get("context_slices") or 0)
    # Sections of a model trained on volumes (any k: data=volumes, or data=isbi with a context) are scaled by their
    # volume's statistics, as training scaled them; an image model's planes each on its own (predict_in_memory).
    per_volume = sections_scaled_per_volume(inputs[0])
    spec_of = volume_spec if per_volume else lambda _, spec: resolve_spec(spec)
    check_channels(volume, inputs)
    check_pixels(volume.name, volume.shape, "a 2D model predicts a volume input whole unless output=NAME.zarr: ")
    depth, height, width, _ = volume.shape
    cases = [VolumeCase(volume, None, volume.name, (1.0, 1.0, 1.0), spec=spec_of(volume, d.get("normalize")))
             for d in inputs]  # fmt: skip
    plane = predictor.for_shape(height, width)
    # Scaled per volume, the volume is one slab; an image model's planes are each scaled on their own: one each.
    slabs = [(0, depth)] if per_volume else [(z, z + 1) for z in range(depth)]
    out = []
    for z0, z1 in slabs:
        slab = SectionSlab(cases, context, z0, z1, (0, 0, height, width))
        for z in range(z0, z1):
            out.append(plane.predict(channels_first(slab.image(z)), on_tiles=on_tiles))
    return torch.stack(out, dim=1)


def channels_first(image: np.ndarray) -> torch.Tensor:
    """``(h, w, C)`` -> a contiguous ``(C, h, w)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def split_inputs(volumes: list[tuple[Path, Volume]], as_volumes: bool, to_zarr: bool) -> tuple[list[Any], list[Any]]:
    """The inputs predicted plane by plane into images, stacks or Zarr, and those predicted as volumes (every input
    of a 3D or 2.5D model; a 2D model's NIfTI inputs, whose outputs then keep the NIfTI header)."""
    whole = [as_volumes or (not to_zarr and path.name.lower().endswith(NIFTI_SUFFIXES)) for path, _ in volumes]
    return [v for v, w in zip(volumes, whole) if not w], [v for v, w in zip(volumes, whole) if w]


def is_chunked(path: Path, volume: Volume, to_zarr: bool) -> bool:
    """Whether a 3D model predicts ``volume`` chunk by chunk into OME-Zarr: when ``output=NAME.zarr`` asks for it,
    or for a Zarr/HDF5 input larger than can be read whole (``max_pixels``); otherwise it is predicted whole."""
    return to_zarr or (is_chunked_input(path) and math.prod(volume.shape) > max_pixels()[0])


def predict_volumes(
    cfg: DictConfig,
    predictor: TiledPredictor,
    volumes: list[tuple[Path, Volume]],
    out: Path,
    to_zarr: bool,
    chunk: Any,
    classes: int,
    inputs: list[Any],
    dist: Any,
    spatial_dims: int = 3,
    method: str | None = None,
    params: dict[str, Any] | None = None,
) -> list[Path]:
    """Every input volume predicted whole (each by one rank) or, by a 3D or 2.5D model, chunk by chunk (by every
    rank); the files written. A 2D or 2.5D model predicts a volume section by section. ``method`` (and an instance
    model's ``params``): a 3D model's volume predicted whole gets its instance labels too."""
    check_sections(volumes, inputs)
    written: list[Path] = []
    by_chunks = spatial_dims == 3 or bool(inputs[0].get("context_slices"))  # not a 2D model's NIfTI volumes
    chunked = [by_chunks and is_chunked(path, volume, to_zarr) for path, volume in volumes]
    unlabelled = [path.name for (path, _), c in zip(volumes, chunked) if c] if spatial_dims == 3 else []
    if spatial_dims == 2:
        unlabelled = [path.name for path, _ in volumes]
    if method and unlabelled and dist.is_main:
        why = "a 2D or 2.5D model's" if spatial_dims == 2 else "a 3D model's chunk-by-chunk OME-Zarr"
        log.warning(
            "instances: %s predictions of volumes get no instance labels yet (%s: probabilities and mask only); a 3D "
            "model's volume predicted whole (output=FOLDER, within max_pixels) does", why, ", ".join(unlabelled[:4]),
        )  # fmt: skip
    mine = [i for i, c in enumerate(chunked) if not c][dist.rank :: dist.world_size]
    for i, (path, volume) in enumerate(volumes):
        if chunked[i]:
            store = out if to_zarr else out / f"{volume_stem(path) or path.name.split('.')[0]}.zarr"
            if not to_zarr:
                log.info("%s is larger than can be read whole: predicted chunk by chunk into %s", path.name, store)
            store_of = predict_volume_store if spatial_dims == 3 else predict_sections_store
            written.append(store_of(cfg, predictor, volume, store, chunk, classes, inputs, dist))
        elif i in mine:
            labelled = method if spatial_dims == 3 else None
            written += predict_volume(cfg, predictor, path, volume, out, inputs, spatial_dims, None, labelled, params)
    return written


def predict_volume_store(
    cfg: DictConfig,
    predictor: TiledPredictor,
    volume: Volume,
    store: Path,
    chunk: tuple[int, ...],
    classes: int,
    inputs: list[Any],
    dist: Any,
) -> Path:
    """One volume into an OME-Zarr store, chunk ``(z, y, x)`` by chunk (resumes a store of the same settings)."""
    predictor = predictor.for_shape(*volume.shape[:3], whole=False)  # tile_size=null: tiles fit tile_memory
    chunk = tuple(min(c, n) for c, n in zip(chunk, volume.shape[:3]))  # no chunk larger than the volume
    threshold = float(cfg.threshold)
    settings = store_settings(predictor, volume, 3, ckpt=resolved_paths(cfg.ckpt), threshold=threshold)
    read = volume_reader(volume, inputs)
    created = [] if dist.enabled else [store.parent, store]  # a store that existed is kept to resume
    with removed_on_failure(created, (UserError,)):
        store.parent.mkdir(parents=True, exist_ok=True)
        prob_dtype = str(cfg.prob_dtype)
        predict_volume_to_zarr(predictor, volume, read, store, classes, chunk, prob_dtype, threshold, settings, dist)
    log.info("%s: predicted chunk by chunk %s into %s, spacing %s", volume.name, chunk, store, volume.scale or "-")
    return store


def predict_sections_store(
    cfg: DictConfig,
    predictor: TiledPredictor,
    volume: Volume,
    store: Path,
    chunk: int,
    classes: int,
    inputs: list[Any],
    dist: Any,
) -> Path:
    """A 2.5D model's prediction of one volume into an OME-Zarr store, plane by plane in chunks of ``chunk`` pixels
    a side, the sections read once per slab of planes (resumes a store of the same settings)."""
    check_channels(volume, inputs)
    context = int(inputs[0].context_slices)
    predictor = predictor.for_shape(*volume.shape[1:3], whole=False)  # tile_size=null: tiles fit tile_memory
    threshold = float(cfg.threshold)
    ckpt = resolved_paths(cfg.ckpt)
    settings = store_settings(predictor, volume, 2, ckpt=ckpt, threshold=threshold, context_slices=context)
    cases = [VolumeCase(volume, None, volume.name, (1.0, 1.0, 1.0), spec=volume_spec(volume, data.get("normalize")))
             for data in inputs]  # fmt: skip

    def read_slab(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> Callable[[int], torch.Tensor]:
        slab = SectionSlab(cases, context, z0, z1, (y0, x0, y1 - y0, x1 - x0))
        return lambda z: channels_first(slab.image(z))

    created = [] if dist.enabled else [store.parent, store]  # a store that existed is kept to resume
    with removed_on_failure(created, (UserError,)):
        store.parent.mkdir(parents=True, exist_ok=True)
        prob_dtype = str(cfg.prob_dtype)
        predict_sections_to_zarr(
            predictor, volume, read_slab, store, classes, chunk, prob_dtype, threshold, settings, dist, context
        )
    log.info("%s: predicted section by section into %s, spacing %s", volume.name, store, volume.scale or "-")
    return store


def predict_volume(
    cfg: DictConfig, predictor: TiledPredictor, path: Path, volume: Volume, out: Path, inputs: list[Any],
    spatial_dims: int = 3, on_tiles: Any = None, method: str | None = None, params: dict[str, Any] | None = None,
) -> list[Path]:  # fmt: skip
    """One input volume -> ``<name>_prob`` and ``<name>_mask`` in ``out`` (NIfTI for a NIfTI input, else TIFF), and
    with ``method`` ``<name>_labels``: the instance labels of the whole volume (an instance model's post-processing
    with ``params``; uint16, or uint32 past 65535 objects)."""
    if spatial_dims == 2:  # a 2D or 2.5D model: section by section
        prob = predict_sections(predictor, volume, inputs, on_tiles)
    else:
        prob = predictor.predict(model_input(volume, inputs), on_tiles=on_tiles)  # (K, Z, Y, X)
    threshold = float(cfg.threshold)
    mask = mask_of(prob[: predictor.classes], threshold)  # the class channels, not a target's maps
    arrays = [probability_array(prob), mask]
    if method:
        offsets = affinity_offsets(inputs[0], dims=3)
        labels = instance_labels(prob.numpy(), method, threshold, int(cfg.min_distance), params, offsets)
        arrays.append(smallest_dtype(labels))
    name = volume_stem(path) or path.stem
    nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
    suffix = ".nii.gz" if nifti else ".tif"
    files = [out / f"{name}_{kind}{suffix}" for kind in ("prob", "mask", "labels")[: len(arrays)]]
    with removed_on_failure([out], (DataError,)):
        make_folder(out, out)
        with written_whole(files) as temps:
            for temp, array in zip(temps, arrays):
                temp.write_bytes(nifti_bytes(array, path) if nifti else tiff_bytes(array, volume))
    log.info("%s: predicted as one volume %s, spacing %s", path.name, volume.shape[:3], volume.scale or "not stated")
    return files


def tiff_bytes(array: np.ndarray, volume: Volume) -> bytes:
    """An ImageJ hyperstack (``ZYX``, or ``ZCYX`` for class probabilities) with the input's spacing and unit."""
    buffer = io.BytesIO()
    axes = "ZYX" if array.ndim == 3 else "ZCYX"
    data = array if array.ndim == 3 else np.moveaxis(array, 0, 1)
    metadata: dict[str, Any] = {"axes": axes}
    resolution = None
    if "x" in volume.scale and "y" in volume.scale:
        resolution = (1 / volume.scale["x"], 1 / volume.scale["y"])
    if "z" in volume.scale:
        metadata["spacing"] = volume.scale["z"]
    unit = volume.units.get("x") or volume.units.get("z")
    if unit:
        metadata["unit"] = IMAGEJ_UNITS.get(unit, unit)
    tifffile.imwrite(buffer, data, imagej=True, resolution=resolution, metadata=metadata)
    return buffer.getvalue()


def nifti_bytes(array: np.ndarray, source: Path) -> bytes:
    """A NIfTI of ``array`` (``(Z, Y, X)`` or ``(K, Z, Y, X)``) with the affine and spatial units of ``source``."""
    nibabel = require("nibabel")
    reference = nibabel.load(str(source))
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)  # NIfTI is (x, y, z[, k])
    image = nibabel.Nifti1Image(data, reference.affine)
    image.header.set_xyzt_units(reference.header.get_xyzt_units()[0])
    return gzip.compress(image.to_bytes(), mtime=0)  # always .nii.gz
