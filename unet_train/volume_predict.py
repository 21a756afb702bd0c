"""``unet-predict`` with a 3D or 2.5D model: each input (TIFF stack, NIfTI, HDF5, Zarr) predicted as one volume.

The volume is read whole and scaled as training scaled each volume (the checkpoint's ``data.normalize``, with
``per: image`` statistics of this volume), tiled in 3D with Gaussian blending
(:class:`~unet_train.inference.tiling.TiledPredictor`), and written as ``<name>_prob`` (float32: the positive
class ``(Z, Y, X)`` of a binary model, else ``(K, Z, Y, X)``) and ``<name>_mask`` (uint8: 0/255, or class
indices). A 2.5D model (``data.context_slices`` > 0) is applied section by section with its neighbouring
sections as channels, and so is a 2D model's NIfTI input (:func:`predict_sections`). A NIfTI input gives
``.nii.gz`` outputs with its affine; any other gives ImageJ TIFF stacks with the input's voxel spacing and unit.
"""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from omegaconf import DictConfig

from unet_train.data.limits import check_pixels
from unet_train.data.normalize import resolve_spec
from unet_train.data.sections import read_sections, stack_sections
from unet_train.data.volume_data import VolumeCase, volume_spec
from unet_train.data.volumes import volume_stem
from unet_train.errors import ConfigError, DataError
from unet_train.inference.tiling import TiledPredictor
from unet_train.inference.volumes import NIFTI_SUFFIXES, Volume, require
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


def check_volume_output(out: Path, to_zarr: bool) -> None:
    if to_zarr:
        raise ConfigError(
            f"output={out}: a 3D or 2.5D model writes TIFF or NIfTI volumes, not yet a Zarr store; pass output=FOLDER."
        )


def model_input(volume: Volume, inputs: list[Any]) -> torch.Tensor:
    """The whole volume as the model's input ``(C, Z, Y, X)``: one part per normalisation (see ``input_specs``)."""
    in_channels = int(inputs[0].in_channels)
    if volume.shape[3] != in_channels:
        raise DataError(
            f"{volume.name} has {volume.shape[3]} channel(s) (axes {volume.axes}) but the model takes {in_channels}; "
            "set input_axes (e.g. czyx or zyxc)."
        )
    check_pixels(volume.name, volume.shape, "a 3D model predicts each volume whole: ")  # before reading a pixel
    parts = []
    for data in inputs:
        case = VolumeCase(volume, None, volume.name, (1.0, 1.0, 1.0), spec=volume_spec(volume, data.get("normalize")))
        scaled = case.read_image((0, 0, 0), volume.shape[:3])  # (Z, Y, X, C)
        parts.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(scaled, -1, 0))))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def predict_sections(
    predictor: TiledPredictor, volume: Volume, inputs: list[Any], on_tiles: Any = None
) -> torch.Tensor:
    """A 2.5D model (``data.context_slices=k``) over a volume, section by section, each with its ``2k + 1`` sections
    as channels (:mod:`unet_train.data.sections`: section-major, mirrored at the ends, scaled per volume as in
    training): ``(K, Z, Y, X)``."""
    context = int(inputs[0].get("context_slices") or 0)
    channels = int(inputs[0].in_channels)
    # k = 0, a plain 2D model: each plane scaled on its own, as a 2D model's TIFF stack is (predict_in_memory).
    spec_of = volume_spec if context else lambda _, spec: resolve_spec(spec)
    if volume.shape[3] != channels:
        raise DataError(f"{volume.name} has {volume.shape[3]} channel(s) (axes {volume.axes}) but the model's "
                        f"sections have {channels}; set input_axes (e.g. czyx or zyxc).")  # fmt: skip
    check_pixels(volume.name, volume.shape, "a 2D model predicts a volume input whole: ")
    depth, height, width, _ = volume.shape
    cases = [VolumeCase(volume, None, volume.name, (1.0, 1.0, 1.0), spec=spec_of(volume, d.get("normalize")))
             for d in inputs]  # fmt: skip
    plane = predictor.for_shape(height, width)
    out = []
    for z in range(depth):
        parts = [stack_sections(read_sections(case, z, context, (0, 0, height, width))) for case in cases]
        image = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=2).transpose(2, 0, 1)))
        out.append(plane.predict(image, on_tiles=on_tiles))
    return torch.stack(out, dim=1)


def split_inputs(volumes: list[tuple[Path, Volume]], as_volumes: bool, to_zarr: bool) -> tuple[list[Any], list[Any]]:
    """The inputs predicted plane by plane into images, stacks or Zarr, and those predicted as volumes (every input
    of a 3D or 2.5D model; a 2D model's NIfTI inputs, whose outputs then keep the NIfTI header)."""
    whole = [as_volumes or (not to_zarr and path.name.lower().endswith(NIFTI_SUFFIXES)) for path, _ in volumes]
    return [v for v, w in zip(volumes, whole) if not w], [v for v, w in zip(volumes, whole) if w]


def predict_volume(
    cfg: DictConfig, predictor: TiledPredictor, path: Path, volume: Volume, out: Path, inputs: list[Any],
    spatial_dims: int = 3, on_tiles: Any = None,
) -> list[Path]:  # fmt: skip
    """One input volume -> ``<name>_prob`` and ``<name>_mask`` in ``out`` (NIfTI for a NIfTI input, else TIFF)."""
    if spatial_dims == 2:  # a 2D or 2.5D model: section by section
        prob = predict_sections(predictor, volume, inputs, on_tiles)
    else:
        prob = predictor.predict(model_input(volume, inputs), on_tiles=on_tiles)  # (K, Z, Y, X)
    mask = mask_of(prob, float(cfg.threshold))
    probability = probability_array(prob)
    name = volume_stem(path) or path.stem
    nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
    suffix = ".nii.gz" if nifti else ".tif"
    files = [out / f"{name}_prob{suffix}", out / f"{name}_mask{suffix}"]
    with removed_on_failure([out], (DataError,)):
        make_folder(out, out)
        with written_whole(files) as temps:
            for temp, array in zip(temps, (probability, mask)):
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
