"""The openers of each volume format :func:`~unet_train.data.volume_readers.open_volume` reads: Zarr / OME-Zarr
(with the OME-NGFF metadata checked), HDF5, (Big)TIFF and NIfTI, each giving a
:class:`~unet_train.data.volume_readers.Volume` with the file's physical pixel size where it states one."""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unet_train.data.limits import reason
from unet_train.data.reading import calibrate, calibrated_dtype, imagej_calibration, tiff_alpha
from unet_train.data.tiff_volumes import UNITS, TiffPages, tiff_spacing
from unet_train.data.volume_readers import Volume, guess_axes, require
from unet_train.errors import DataError


def open_zarr(path: Path, key: str | None, axes: str | None, in_channels: int) -> Volume:
    zarr = require("zarr")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DataError(f"Could not open Zarr store {path}: {reason(exc)}") from exc
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if isinstance(node, zarr.Group):
        image = ome_image(node.attrs.asdict(), path)
        if image is not None:  # OME-Zarr image: key picks a level (its path, or its index)
            levels = [d["path"] for d in image["datasets"]]
            chosen = levels[0] if key is None else key
            if chosen not in levels and chosen.isdigit() and int(chosen) < len(levels):
                chosen = levels[int(chosen)]
            if chosen not in levels:
                raise DataError(f"input_key={key} is not a level of OME-Zarr {path}; its levels are {levels}.")
            names = [a["name"] if isinstance(a, dict) else a for a in image.get("axes", [])]
            axes = axes or "".join(names) or None
            level = image["datasets"][levels.index(chosen)]
            units = {
                a["name"]: a["unit"]
                for a in image.get("axes", [])
                if isinstance(a, dict) and isinstance(a.get("unit"), str)
            }
            for transform in level.get("coordinateTransformations", []):
                if transform.get("type") == "scale" and names:
                    scale = {n: float(s) for n, s in zip(names, transform["scale"]) if n in "zyx"}
            key = chosen
        arrays = sorted(name for name, _ in node.arrays())
        if key is None:
            if len(arrays) != 1:
                raise DataError(f"Zarr group {path} holds arrays {arrays}; choose one with input_key=NAME.")
            key = arrays[0]
        try:
            array = node[key]
        except KeyError as exc:
            raise DataError(f"input_key={key} is not in Zarr group {path}; it holds {arrays}.") from exc
        except Exception as exc:  # a level that is no array (a group), or corrupt array metadata
            raise DataError(f"Could not open array {key} of Zarr store {path}: {reason(exc)}") from exc
        if not hasattr(array, "dtype"):
            raise DataError(f"input_key={key} of Zarr store {path} is a group, not an array; name an array.")
        if axes is None:
            dims = getattr(array.metadata, "dimension_names", None)
            axes = "".join(dims) if dims and all(d and d in "tczyx" for d in dims) else None
        name = f"{path}/{key}"
    else:
        array, name = node, str(path)
        if key is not None:
            raise DataError(f"input={path} is a Zarr array, not a group; drop input_key={key}.")
    axes = axes or guess_axes(tuple(array.shape), in_channels)
    return Volume(array, axes, name, scale, units)


def ome_image(attrs: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The first image of a group's OME-NGFF ``multiscales`` (0.4: in the attributes, 0.5: under ``ome``), checked
    to be what the reader uses; None for a plain group. Malformed metadata: one :class:`DataError` naming it."""
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        return None

    def refuse(what: str, found: Any) -> DataError:
        shown = repr(found) if len(repr(found)) <= 80 else repr(found)[:77] + "..."
        return DataError(
            f"OME-Zarr {path} has malformed metadata: {what}, found {shown}; fix the multiscales in its "
            "zarr.json (.zattrs in Zarr v2) as the OME-NGFF specification describes."
        )

    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise refuse("multiscales must be a list of images (objects)", multiscales)
    image = multiscales[0]
    datasets = image.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise refuse("multiscales[0].datasets must be a non-empty list of levels", datasets)
    for level in datasets:
        if not isinstance(level, dict) or not isinstance(level.get("path"), str):
            raise refuse('each level of multiscales[0].datasets must be {"path": ARRAY, ...}', level)
        transforms = level.get("coordinateTransformations", [])
        if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
            raise refuse("coordinateTransformations must be a list of objects", transforms)
        for transform in transforms:
            scale = transform.get("scale")
            if transform.get("type") == "scale" and not (
                isinstance(scale, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale)
            ):
                raise refuse("a scale transformation's scale must be a list of numbers", scale)
    axes = image.get("axes", [])
    if not isinstance(axes, list) or not all(
        isinstance(a, str) or (isinstance(a, dict) and isinstance(a.get("name"), str)) for a in axes
    ):
        raise refuse('multiscales[0].axes must be a list of names or {"name": ...} objects', axes)
    return image


def open_hdf5(path: Path, key: str | None, axes: str | None, in_channels: int) -> Volume:
    h5py = require("h5py")
    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
        raise DataError(f"Could not open HDF5 file {path}: {reason(exc)}") from exc
    datasets: list[str] = []
    handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    if key is None:
        if len(datasets) != 1:
            handle.close()
            raise DataError(f"HDF5 file {path} holds datasets {datasets}; choose one with input_key=NAME.")
        key = datasets[0]
    if key not in datasets:
        handle.close()
        raise DataError(f"input_key={key} is not a dataset of {path}; it holds {datasets}.")
    try:
        array = handle[key]
    except Exception as exc:  # corrupt dataset headers
        handle.close()
        raise DataError(f"Could not open dataset {key} of HDF5 file {path}: {reason(exc)}") from exc
    scale = {}
    if "element_size_um" in array.attrs:  # the convention of ilastik and Fiji's HDF5 plugins (z, y, x)
        sizes = [float(s) for s in array.attrs["element_size_um"]][-3:]
        scale = dict(zip("zyx"[3 - len(sizes) :], sizes))
    axes = axes or guess_axes(tuple(array.shape), in_channels)
    return Volume(array, axes, f"{path}:{key}", scale, dict.fromkeys(scale, "micrometer"), handle=handle)


def open_tiff(path: Path, axes: str | None, in_channels: int) -> Volume:
    """A TIFF read by tiles or strips through tifffile's Zarr view when zarr is there, else page by page."""
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0] if tif.series else None
    except Exception as exc:
        raise DataError(f"Could not read TIFF {path}: {reason(exc)}") from exc
    if series is None:
        tif.close()
        raise DataError(f"Could not read TIFF {path}: it holds no image (no readable page).")
    tiff_axes = series.axes.lower().replace("q", "z").replace("i", "z").replace("s", "c")
    if axes is None:
        axes = tiff_axes if set(tiff_axes) <= set("tczyx") and len(set(tiff_axes)) == len(tiff_axes) else None
        axes = axes or guess_axes(tuple(series.shape), in_channels)
    try:
        zarr = importlib.import_module("zarr")
        array: Any = zarr.open(series.aszarr(), mode="r")
    except ImportError:
        array = TiffPages(tif, series, path)
    calibration = imagej_calibration(tif)
    if calibration is not None:  # ImageJ's signed 16-bit (a CT in HU) and other straight lines: their values
        array = _Calibrated(array, calibration)
    scale, units = tiff_spacing(tif)
    samples = series.shape[axes.index("c")] if "c" in axes and len(axes) == len(series.shape) else 1
    alpha = samples in (2, 4) and tiff_alpha(series.pages[0] if series.pages else None)  # grey + alpha, RGBA
    return Volume(array, axes, str(path), scale, units, handle=tif, channels=samples - 1 if alpha else None)


class _Calibrated:
    """A TIFF's pixels as the values ImageJ shows (:func:`~unet_train.data.reading.calibrate`), window by window."""

    def __init__(self, array: Any, calibration: tuple[float, float]) -> None:
        self.array, self.calibration, self.shape = array, calibration, tuple(array.shape)
        self.dtype = calibrated_dtype(array.dtype, calibration)

    def __getitem__(self, index: Any) -> np.ndarray:
        return calibrate(np.asarray(self.array[index]), self.calibration)


def open_nifti(path: Path, axes: str | None) -> Volume:
    """A NIfTI volume through nibabel's lazy array proxy (slices are read from the file as they are asked for).

    NIfTI stores ``(x, y, z[, t][, c])``; a fourth dimension of more than one is read as channels (e.g. the
    modalities of a multi-parametric MR), so the axes are ``xyz`` or ``xyzc``.
    """
    nibabel = require("nibabel")
    try:
        image = nibabel.load(str(path))
    except Exception as exc:
        raise DataError(f"Could not read NIfTI {path}: {reason(exc)}") from exc
    proxy = image.dataobj
    shape = tuple(int(s) for s in proxy.shape)
    if len(shape) not in (3, 4) and axes is None:
        raise DataError(f"{path}: a NIfTI of shape {shape}; a volume is (x, y, z) or (x, y, z, channels).")
    axes = axes or ("xyz" if len(shape) == 3 else "xyzc")
    zooms = image.header.get_zooms()
    # The header holds float32: its shortest decimal (0.8, not 0.800000011920929) is the size that was written.
    scale = {a: float(str(np.float32(z))) for a, z in zip("xyz", zooms[:3])}
    unit = UNITS.get(image.header.get_xyzt_units()[0] or "", "millimeter")
    return Volume(_NiftiArray(proxy, path, image.affine), axes, str(path), scale, dict.fromkeys(scale, unit))


class _NiftiArray:
    """nibabel's array proxy with the ``dtype`` that :class:`Volume` reads (the stored type, scaling applied
    as nibabel does when the header has a slope), and the file's ``affine`` (voxel to world)."""

    def __init__(self, proxy: Any, path: Path, affine: Any = None) -> None:
        self.proxy, self.path = proxy, path
        self.affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        self.shape = tuple(int(s) for s in proxy.shape)
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        self.dtype = np.dtype(np.float32) if scaled else np.dtype(proxy.dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.proxy[index], dtype=self.dtype)
        except (ValueError, EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt (compressed) file
            raise DataError(f"Could not read NIfTI {self.path}: {exc}") from exc
