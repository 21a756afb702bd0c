"""Volume readers: Zarr / OME-Zarr, HDF5, (Big)TIFF and NIfTI presented as ``(Z, Y, X, C)`` and read window by window.

A :class:`Volume` reads one window of one z plane (:meth:`Volume.read`) or a 3D block (:meth:`Volume.read_block`)
at a time, in the file's own dtype. The physical pixel (voxel) size comes from the file where it says one:
OME-Zarr ``scale``, HDF5 ``element_size_um``, ImageJ TIFF ``spacing`` and resolution tags, OME-TIFF
``PhysicalSize*``, the NIfTI header's ``pixdim``. zarr, h5py and nibabel are optional
(``pip install "unet-train[bigdata]"``); :func:`require` names the extra when one is missing. Each format's
opener lives in :mod:`unet_train.data.volume_formats`; :func:`open_volume` picks one by the path.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from unet_train.data.limits import check_finite, first_nonfinite, reason
from unet_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ZARR_SUFFIXES = (".zarr", ".ome.zarr", ".n5")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
AXES = "zyxc"  # the order Volume presents
FIX_NONFINITE = "fix the file, or predict it with allow_nonfinite=true (they are then read as 0)"


def require(module: str) -> ModuleType:
    """Import an optional dependency of the large-image path, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f'{module} is needed for Zarr/OME-Zarr/HDF5/NIfTI files; install it with pip install "unet-train[bigdata]".'
        ) from exc


def is_zarr_path(path: Path) -> bool:
    return path.name.lower().endswith(ZARR_SUFFIXES) or (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


def is_chunked_input(path: Path) -> bool:
    """Inputs that are read window by window (Zarr and HDF5); images and TIFFs may also be read whole."""
    return is_zarr_path(path) or path.suffix.lower() in HDF5_SUFFIXES


class OnePlane:
    """``array`` seen with a z axis of length 1 at ``position``: a stack of one plane that its reader gives without a
    z (tifffile reads a one-image ImageJ stack as yx), where ``input_axes`` names one (``zyx``)."""

    def __init__(self, array: Any, position: int) -> None:
        self.array, self.position = array, position
        shape = [int(n) for n in array.shape]
        shape.insert(position, 1)
        self.shape, self.dtype = tuple(shape), array.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        index = tuple(index) if isinstance(index, tuple) else (index,)
        key, before = index[self.position], index[: self.position]
        window = np.asarray(self.array[(*before, *index[self.position + 1 :])])
        if not isinstance(key, slice):
            if int(key) not in (0, -1):
                raise IndexError(f"plane {key} of a stack of one plane")
            return window
        kept = sum(not isinstance(k, (int, np.integer)) for k in before)  # where the z axis falls in the window
        return np.expand_dims(window, kept)[(slice(None),) * kept + (key,)]


@dataclass
class Volume:
    """An image or stack as ``(Z, Y, X, C)``, read window by window in its own dtype.

    ``array`` is anything indexable like a NumPy array (a zarr array, an h5py dataset, a memmap);
    ``axes`` names its dimensions with letters of ``tczyx`` (``t`` must have length 1).
    ``scale`` holds the physical pixel size per axis of ``zyx`` where the file states one.
    ``channels`` keeps the first channels only (a TIFF's alpha sample is left out, as training reads it).
    Every window read is checked for NaN/inf pixels: refused, or read as 0 with ``allow_nonfinite``.
    """

    array: Any
    axes: str
    name: str
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    handle: Any = None  # an open file to close (h5py.File, tifffile.TiffFile)
    channels: int | None = None
    allow_nonfinite: bool = False  # NaN/inf pixels read as 0 (unet-predict allow_nonfinite=true), else refused

    def __post_init__(self) -> None:
        if len(self.axes) == len(self.array.shape) + 1 and "z" in self.axes:  # a one-plane stack read without its z
            self.array = OnePlane(self.array, self.axes.index("z"))
        if (
            sorted(self.axes) != sorted(set(self.axes))
            or set(self.axes) - set("tczyx")
            or len(self.axes) != len(self.array.shape)
        ):
            raise DataError(
                f"{self.name}: axes {self.axes!r} do not fit its shape {tuple(self.array.shape)}; "
                "set input_axes to letters of tczyx, one per dimension (e.g. zyx, cyx, yxc)."
            )
        if "y" not in self.axes or "x" not in self.axes:
            raise DataError(f"{self.name}: axes {self.axes!r} have no y and x; set input_axes (e.g. input_axes=zyx).")
        if "t" in self.axes and self.array.shape[self.axes.index("t")] != 1:
            raise DataError(
                f"{self.name}: a time series ({self.axes}, {tuple(self.array.shape)}); predict one time point."
            )
        size = dict(zip(self.axes, self.array.shape))
        channels = size.get("c", 1) if self.channels is None else min(self.channels, size.get("c", 1))
        self.shape = (size.get("z", 1), size["y"], size["x"], channels)
        self.dtype = np.dtype(self.array.dtype)
        self._warned = False

    @property
    def depth(self) -> int:
        return self.shape[0]

    @property
    def has_z(self) -> bool:
        return "z" in self.axes

    def read(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of plane ``z`` as ``(h, w, C)`` in the file's dtype."""
        index: list[Any] = []
        for axis in self.axes:
            index.append({"t": 0, "z": z, "y": slice(y0, y1), "x": slice(x0, x1), "c": slice(None)}[axis])
        try:
            window = np.asarray(self.array[tuple(index)])
        except DataError:
            raise
        except Exception as exc:  # a truncated or corrupt file shows only when its pixels are decoded
            raise DataError(f"Could not read {self.name} (z={z}, y={y0}:{y1}, x={x0}:{x1}): {reason(exc)}") from exc
        kept = [a for a in self.axes if a in "yxc"]
        window = window.transpose([kept.index(a) for a in "yx" + ("c" if "c" in kept else "")])
        window = window[..., : self.shape[3]] if window.ndim == 3 else window[..., None]
        return self._finite(window, z, y0, x0)

    def read_block(self, origin: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        """The 3D window at ``origin`` (z, y, x) of ``size`` as ``(d, h, w, C)`` in the file's dtype, in one read
        (a Zarr/HDF5 store decodes only the chunks it touches, a NIfTI proxy only the bytes of those planes)."""
        bounds = {a: slice(o, o + s) for a, o, s in zip("zyx", origin, size)}
        index = tuple({"t": 0, "c": slice(None)}.get(axis, bounds.get(axis)) for axis in self.axes)
        try:
            block = np.asarray(self.array[index])
        except DataError:
            raise
        except Exception as exc:  # a truncated or corrupt file shows only when its pixels are decoded
            raise DataError(f"Could not read {self.name} (z, y, x from {origin}, size {size}): {reason(exc)}") from exc
        kept = [a for a in self.axes if a in "zyxc"]
        block = block.transpose([kept.index(a) for a in "zyxc" if a in kept])
        block = block[..., None] if "c" not in kept else block[..., : self.shape[3]]
        block = block if "z" in kept else block[None]
        if not self.allow_nonfinite:
            grey = block.shape[3] == 1  # a grey block's position needs no c, as a window's
            check_finite(block[..., 0] if grey else block, self.name, "zyx" if grey else "zyxc", FIX_NONFINITE, origin)
            return block
        return self._zeroed(block)

    def _finite(self, window: np.ndarray, z: int, y0: int, x0: int) -> np.ndarray:
        """``window`` (at ``z, y0, x0``) refused for NaN/inf pixels, or with them set to 0 (``allow_nonfinite``)."""
        if not self.allow_nonfinite:
            axes, origin = ("zyxc", (z, y0, x0)) if self.has_z else ("yxc", (y0, x0))
            pixels = window if window.shape[2] > 1 else window[..., 0]  # a grey window's position needs no c
            check_finite(
                pixels[None] if self.has_z else pixels,
                self.name,
                axes,
                FIX_NONFINITE,
                origin,
            )
            return window
        return self._zeroed(window)

    def _zeroed(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` with NaN/inf set to 0 (``allow_nonfinite``), said once per volume."""
        if first_nonfinite(pixels) is None:
            return pixels
        if not self._warned:
            log.warning("%s has NaN or infinite pixels; they are read as 0 (allow_nonfinite=true)", self.name)
            self._warned = True
        return np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def sample_pixels(volume: Volume, max_pixels: int, planes: list[int] | None = None) -> np.ndarray:
    """Pixels ``(N, C)`` of a volume: all of each plane with at most ``max_pixels``, else a regular grid of
    64x64 windows (up to ``max_pixels`` per plane); on ``planes`` (None: up to 8 spread over the stack)."""
    _, height, width, _ = volume.shape
    if planes is None:
        planes = np.unique(np.linspace(0, volume.depth - 1, min(volume.depth, 8)).round().astype(int)).tolist()
    samples = []
    for z in planes:
        if height * width <= max_pixels:
            windows = [volume.read(int(z), 0, height, 0, width)]
        else:
            side, per_axis = 64, max(1, int(np.sqrt(max_pixels / 64**2)))
            ys = np.linspace(0, max(height - side, 0), per_axis).astype(int)
            xs = np.linspace(0, max(width - side, 0), per_axis).astype(int)
            windows = [volume.read(int(z), y, y + side, x, x + side) for y in ys for x in xs]
        samples += [window.reshape(-1, window.shape[-1]) for window in windows]  # finite: Volume.read checks
    return np.concatenate(samples)


def guess_axes(shape: tuple[int, ...], in_channels: int) -> str:
    """Axes of an array without metadata: ``yx``; ``cyx``/``yxc`` when a side equals the channels; else ``zyx``."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        if in_channels > 1 and shape[-1] == in_channels:
            return "yxc"
        if in_channels > 1 and shape[0] == in_channels:
            return "cyx"
        return "zyx"
    if len(shape) == 4:
        return "zyxc" if in_channels > 1 and shape[-1] == in_channels else "czyx"
    raise DataError(f"An array of shape {shape} is not a 2D image or stack; set input_axes (letters of tczyx).")


def open_volume(spec: str | Path, key: str | int | None, axes: str | None, in_channels: int) -> Volume:
    """Open ``input`` (+ ``input_key``, ``input_axes``) as a :class:`Volume` without reading its pixels."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"input={path} does not exist; pass an image, a TIFF stack, a Zarr store or an HDF5 file.")
    from unet_train.data import volume_formats as formats  # the openers build on Volume, so they import this module

    key = None if key is None else str(key)
    if is_zarr_path(path):
        return formats.open_zarr(path, key, axes, in_channels)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return formats.open_hdf5(path, key, axes, in_channels)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return formats.open_tiff(path, axes, in_channels)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return formats.open_nifti(path, axes)
    raise DataError(f"input={path}: not a Zarr store, HDF5 file, TIFF or NIfTI; those are what large inputs may be.")
