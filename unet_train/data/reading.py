"""Reading image and mask files as they are stored: every data config and ``unet-predict`` use this module.

Images keep their own dtype (8/16-bit integers, float32) and channels; nothing is rescaled here
(:mod:`unet_train.data.normalize` does that, by a named scheme). Masks are read as the class
indices they store: palette ("P" mode) PNGs as their indices, not their colours.

- PNG, JPEG, BMP are read with Pillow, except 16-bit colour PNGs, which Pillow truncates to 8
  bits: those are read with OpenCV. Alpha is dropped (grey + alpha is grey, RGBA is RGB).
- TIFFs are read with tifffile, their layout from the file's own axes (``series[0].axes``):
  singleton axes are dropped, a sample or channel axis (``S``, ``C``) becomes the last axis, so
  ``(1, H, W)`` is grey and planar ``(3, H, W)`` RGB is ``(H, W, 3)``. Several pages of an unnamed
  axis (``Q``, ``I``, ``Z``, ``T``...) could be slices or channels: refused with a message.
  A TIFF's ImageJ straight-line calibration is applied (:func:`imagej_calibration`): Fiji's signed
  16-bit (a CT in HU) is read as int16, not as the uint16 ``value + 32768`` it stores.
  An alpha sample is dropped (RGB + extra sample, or grey + an alpha-marked extra sample:
  :func:`tiff_alpha`, the rule ``unet-predict`` reads large TIFFs by as well).

Every reader checks the size a file declares before decoding it (:mod:`unet_train.data.limits`), and
images are refused with NaN or infinite pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from unet_train.data.limits import check_finite, check_pixels, reason
from unet_train.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_AXES = "SC"  # tifffile: S = samples of a pixel (RGB), C = channels
# ITU-R BT.601 luma weights, as Pillow's convert("L"): how an RGB image becomes grey.
LUMA = (0.299, 0.587, 0.114)

# Pillow's fixed decompression-bomb limit (89 megapixels) would refuse large microscopy and histology images;
# check_pixels replaces it, on the same header, with a limit from the free memory (raised by max_pixels).
Image.MAX_IMAGE_PIXELS = None


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def tiff_yxc(array: np.ndarray, axes: str, where: str) -> np.ndarray:
    """A TIFF series ``array`` with tifffile ``axes`` as ``(H, W)`` or ``(H, W, C)``.

    Singleton axes are dropped; ``S`` or ``C`` becomes the channel axis (last). Anything else of
    length > 1 (a stack) cannot be one image: :class:`DataError` naming ``where``.
    """
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
        raise DataError(f"{where} has shape {array.shape} with axes {axes!r}; expected a 2D image (axes YX).")
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    channels = [axis for axis in axes if axis in CHANNEL_AXES]
    others = [axis for axis in axes if axis not in "YX" + CHANNEL_AXES]
    if others or len(channels) > 1:
        raise DataError(
            f"{where} holds {array.shape} pixels with axes {axes!r}: several 2D planes whose meaning is ambiguous "
            "(slices or channels?). Save one image per file, or mark channels in the file "
            "(tifffile.imwrite(path, data, photometric='minisblack', metadata={'axes': 'CYX'}))."
        )
    order = [axes.index("Y"), axes.index("X")] + [axes.index(c) for c in channels]
    return np.transpose(array, order)


def tiff_alpha(page: Any) -> bool:
    """Whether the last sample of a TIFF page's pixels is alpha: RGB + any extra sample, or grey + an
    alpha-marked extra sample (1 associated, 2 unassociated). Training, evaluation and ``unet-predict``
    decide a TIFF's channels by this one rule."""
    if page is None:
        return False
    photometric = getattr(page, "photometric", None)
    extras = tuple(getattr(page, "extrasamples", None) or ())
    grey = photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
    return bool((photometric == tifffile.PHOTOMETRIC.RGB and extras) or (grey and extras and extras[-1] in (1, 2)))


def drop_alpha(array: np.ndarray, has_alpha: bool = True, dims: int = 2) -> np.ndarray:
    """Grey + alpha ``(..., 2)`` -> grey ``(...)``; RGBA ``(..., 4)`` -> RGB ``(..., 3)``, for an array of ``dims``
    axes plus a channel axis whose last sample ``has_alpha``; anything else is returned as it is."""
    if not has_alpha or array.ndim != dims + 1 or array.shape[-1] not in (2, 4):
        return array
    return array[..., 0] if array.shape[-1] == 2 else array[..., :3]


def imagej_calibration(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """ImageJ's straight-line calibration ``value = c0 + c1 * stored`` of an 8/16-bit TIFF, or None.

    ImageJ keeps a signed 16-bit image (a CT in HU) as uint16 ``value + 32768`` with ``c0 = -32768, c1 = 1``
    (function 0, a straight line, in the description's ``cf``, ``c0``, ``c1``); a DICOM's rescale joins c0, c1.
    """
    meta = tif.imagej_metadata or {}
    if meta.get("cf") != 0 or not tif.series or tif.series[0].dtype not in (np.uint8, np.uint16):
        return None
    try:
        c0, c1 = float(meta["c0"]), float(meta["c1"])
    except (KeyError, TypeError, ValueError):
        return None
    return (c0, c1) if np.isfinite([c0, c1]).all() and (c0, c1) != (0.0, 1.0) and c1 != 0 else None


def calibrated_dtype(dtype: np.dtype, calibration: tuple[float, float] | None) -> np.dtype:
    """The type of :func:`calibrate`'s values: int16 for ImageJ's signed 16-bit, float32 for another line."""
    if calibration is None:
        return np.dtype(dtype)
    return np.dtype(np.int16) if np.dtype(dtype) == np.uint16 and calibration == (-32768.0, 1.0) else np.dtype("f4")


def calibrate(array: np.ndarray, calibration: tuple[float, float] | None) -> np.ndarray:
    """Stored TIFF pixels as the values ImageJ shows (:func:`imagej_calibration`); as they are without one."""
    if calibration is None:
        return array
    if calibrated_dtype(array.dtype, calibration) == np.int16:  # exact: the top bit flipped is x - 32768
        return (np.asarray(array) ^ np.uint16(0x8000)).view(np.int16)
    c0, c1 = calibration
    return (np.float32(c0) + np.float32(c1) * np.asarray(array, dtype=np.float32)).astype(np.float32)


def _read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF as ``(H, W[, C])``, an alpha sample dropped (:func:`tiff_alpha`), as the values
    ImageJ shows (:func:`calibrate`: labels drawn in Fiji on a signed 16-bit image are its calibrated values)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        check_pixels(path, series.shape)  # before decoding: a sparse or forged file may declare any size
        array, axes = series.asarray(), series.axes
        has_alpha = tiff_alpha(series.pages[0] if series.pages else None)
        calibration = imagej_calibration(tif)
    return calibrate(drop_alpha(tiff_yxc(np.asarray(array), axes, str(path)), has_alpha), calibration)


def _png_depth(path: Path) -> tuple[int, int]:
    """A PNG's (bit depth, colour type) from its IHDR header; (0, 0) when unreadable."""
    with path.open("rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return head[24], head[25]


def _read_pillow(path: Path, *, mask: bool) -> np.ndarray:
    with Image.open(path) as opened:  # the header alone: the size is checked before any pixel is decoded
        check_pixels(path, (opened.height, opened.width, len(opened.getbands())))
    depth, colour_type = _png_depth(path) if path.suffix.lower() == ".png" else (0, 0)
    if depth == 16 and colour_type in (2, 4, 6):  # 16-bit RGB(A), grey + alpha: Pillow would keep only 8 bits
        import cv2  # albumentations' dependency

        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError("OpenCV could not decode it")
        if colour_type == 4:  # OpenCV gives grey + alpha as BGRA with B = G = R
            return array[..., 0]
        return array[..., 2::-1] if array.shape[2] == 4 else array[..., ::-1]  # BGR(A) -> RGB
    with Image.open(path) as opened:
        mode = opened.mode
        image: Image.Image = opened
        if mode == "P" and not mask:  # a palette image: its colours
            image = opened.convert("RGBA" if "transparency" in opened.info else "RGB")
        elif mode == "PA":
            image = opened.convert("RGBA") if not mask else opened.getchannel(0)
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = opened.convert("RGB")
        array = np.asarray(image)
    if mode == "1":
        array = array.astype(np.uint8) * (1 if mask else 255)
    if mode in ("LA", "La") or (array.ndim == 3 and array.shape[2] == 4):
        array = drop_alpha(array)
    return array


def read_image(path: str | Path, *, finite: bool = True) -> np.ndarray:
    """One 2D image as stored: ``(H, W)`` or ``(H, W, C)`` in its own dtype; names the file on failure.

    ``finite``: refuse NaN/inf pixels (``unet-predict allow_nonfinite=true`` takes them and reads them as 0).
    """
    path = Path(path)
    try:
        array = _read_tiff(path) if is_tiff(path) else _read_pillow(path, mask=False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"Could not read image {path}: {reason(exc)}") from exc
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise DataError(f"{path} has shape {array.shape}; expected a 2D image, grey or with channels.")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise DataError(f"{path} has pixels of type {array.dtype}; expected integer or float pixels.")
    if finite:
        check_finite(array, path, "yxc")
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """A mask's stored values ``(H, W)``: palette indices of a "P" PNG, grey values, or TIFF values.

    Grey + alpha keeps the grey values; a colour mask whose channels are equal is read as grey;
    a real colour (RGB) mask is refused: its colours are not class indices.
    """
    path = Path(path)
    try:
        mask = _read_tiff(path) if is_tiff(path) else _read_pillow(path, mask=True)  # alpha is no class
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"Could not read mask {path}: {reason(exc)}") from exc
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if not (mask[..., :1] == mask[..., : min(mask.shape[2], 3)]).all():
            colours = len(np.unique(mask.reshape(-1, mask.shape[2])[:, :3], axis=0))
            raise DataError(
                f"Mask {path} is a colour image ({colours} colours); masks must store class indices: save it as "
                "a single-channel PNG/TIFF of indices 0..K-1 (or a palette PNG, as LabelMe writes)."
            )
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise DataError(f"Mask {path} has shape {mask.shape}; expected a 2D mask of class indices.")
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or (mask != np.round(mask)).any():
            raise DataError(f"Mask {path} has non-integer values; masks must store class indices.")
        mask = mask.astype(np.int64)
    return mask


def read_stack(path: str | Path) -> np.ndarray:
    """A TIFF stack of 2D slices as ``(N, H, W)`` (or ``(N, H, W, C)``), in its own dtype."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_pixels(path, series.shape)
            array, axes = np.asarray(series.asarray()), series.axes
            has_alpha = tiff_alpha(series.pages[0] if series.pages else None)
            calibration = imagej_calibration(tif)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"Could not read {path} as a TIFF stack: {reason(exc)}") from exc
    # The first non-YX, non-channel axis is the slice axis; every other axis must be a singleton.
    slice_axes = [i for i, a in enumerate(axes) if a not in "YX" + CHANNEL_AXES and array.shape[i] > 1]
    if len(slice_axes) != 1:
        raise DataError(f"{path} has shape {array.shape} with axes {axes!r}; expected a stack of 2D slices (N, H, W).")
    first = slice_axes[0]
    slices = np.moveaxis(array, first, 0)
    rest = axes[:first] + axes[first + 1 :]
    stack = drop_alpha(np.stack([tiff_yxc(s, rest, f"{path}") for s in slices]), has_alpha, dims=3)
    stack = calibrate(stack, calibration)
    check_finite(stack, path, "zyxc")
    return stack


def probe_channels(path: str | Path) -> int:
    """The channels :func:`read_image` will return for ``path``, from the header where possible."""
    path = Path(path)
    sixteen_bit_png = path.suffix.lower() == ".png" and _png_depth(path)[0] == 16  # Pillow's mode is not the layout
    if not is_tiff(path) and not sixteen_bit_png:
        try:
            with Image.open(path) as opened:
                mode = opened.mode
        except Exception as exc:
            raise DataError(f"Could not read image {path}: {reason(exc)}") from exc
        if mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return 1
        if mode in ("RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            return 3
    image = read_image(path)
    return 1 if image.ndim == 2 else image.shape[2]


def match_channels(image: np.ndarray, in_channels: int, where: str) -> np.ndarray:
    """``image`` with ``in_channels`` channels: grey is copied to 3 channels, RGB becomes grey by luminance.

    Luminance is ITU-R BT.601 (0.299 R + 0.587 G + 0.114 B, as Pillow's ``convert("L")``),
    rounded back to integers for integer images. Other mismatches raise :class:`DataError`.
    """
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        grey = image if image.ndim == 2 else image[..., 0]
        return np.repeat(grey[..., None], 3, axis=2)
    if channels == 3 and in_channels == 1:
        luma = image.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32)
        if image.dtype.kind in "ui":
            return np.round(luma).astype(image.dtype)
        return luma.astype(image.dtype if image.dtype.kind == "f" else np.float32)
    raise DataError(
        f"{where} has {channels} channel(s) but data.in_channels={in_channels}; only grey (1) and RGB (3) are "
        f"converted into each other: set data.in_channels={channels} (or auto), or convert the file."
    )


def channels_of(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])
