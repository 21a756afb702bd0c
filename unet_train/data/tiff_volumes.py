"""TIFF specifics of the volume readers: voxel spacing and units from OME/ImageJ metadata and the resolution tags,
and page-by-page access to a stack when zarr is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unet_train.data.limits import check_pixels
from unet_train.errors import DataError

# ImageJ's and OME's unit names as OME-NGFF spells them
UNITS = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer",
          "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
          "micrometer": "micrometer", "cm": "centimeter", "m": "meter", "meter": "meter",
          "centimeter": "centimeter", "inch": "inch", "in": "inch", "pm": "picometer", "Å": "angstrom",
          "\u212b": "angstrom", "km": "kilometer", "μm": "micrometer"}  # fmt: skip
# The TIFF ResolutionUnit tag (2 inch, 3 centimeter; 4 and 5 as tifffile extends it), the unit of X/YResolution
RESOLUTION_UNITS = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}


def tiff_spacing(tif: tifffile.TiffFile) -> tuple[dict[str, float], dict[str, str]]:
    """Pixel size per axis (``zyx``) and units from OME-TIFF ``PhysicalSize*`` or ImageJ's ``spacing`` and the
    resolution tags (pixels per unit); empty where the file states none."""
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if tif.is_ome and tif.ome_metadata:
        pixels = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
        for axis in "zyx":
            size = pixels.get(f"PhysicalSize{axis.upper()}")
            if size:
                scale[axis] = _number(size, f"PhysicalSize{axis.upper()}", tif)
                unit = UNITS.get(str(pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")))  # OME's default: µm
                if unit:  # a unit this tool cannot name is left out rather than called micrometer
                    units[axis] = unit
        return scale, units
    page = tif.pages.first
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        value = page.tags.get(tag)
        if value is not None:
            numerator, denominator = value.value
            if numerator and denominator and numerator != denominator:  # 1/1 is "no resolution stated"
                scale[axis] = denominator / numerator
    imagej = tif.imagej_metadata or {}
    if imagej.get("spacing"):
        scale["z"] = _number(imagej["spacing"], "ImageJ spacing", tif)
    unit = UNITS.get(str(imagej.get("unit", "")).strip())
    if unit:
        units = dict.fromkeys(scale, unit)
    elif not imagej and (unit_tag := page.tags.get("ResolutionUnit")) is not None:
        # a plain TIFF's resolution is pixels per inch (the TIFF default) or per centimeter
        resolution_unit = RESOLUTION_UNITS.get(int(unit_tag.value))
        if resolution_unit:
            units = dict.fromkeys(scale, resolution_unit)
    return scale, units


def _number(value: Any, what: str, tif: tifffile.TiffFile) -> float:
    """A metadata value as a float; a value that is no number is refused in one line."""
    try:
        return float(value)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise DataError(f"TIFF {tif.filehandle.path}: its {what} {shown} is not a number; fix its metadata.") from None


class TiffPages:
    """Page-by-page access to a TIFF series without zarr: one page (z plane) decoded at a time."""

    def __init__(self, tif: tifffile.TiffFile, series: Any, path: Path) -> None:
        self.pages, self.shape, self.dtype, self.path = series.pages, tuple(series.shape), series.dtype, path
        self.page_shape = tuple(series.pages[0].shape)
        self._cached: tuple[int, np.ndarray] | None = None

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        lead = len(self.shape) - len(self.page_shape)
        flat = 0
        for dim, i in zip(self.shape[:lead], index[:lead]):
            if not isinstance(i, int):
                raise DataError("Without zarr, a TIFF is read one plane at a time; install unet-train[bigdata].")
            flat = flat * dim + i
        if self._cached is None or self._cached[0] != flat:
            check_pixels(self.path, self.page_shape, 'install "unet-train[bigdata]" to read it tile by tile, or ')
            self._cached = (flat, self.pages[flat].asarray())
        return self._cached[1][index[lead:]]
