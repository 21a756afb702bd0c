"""What a 3D model's export adds: the test volume, its voxel spacing and unit, and the space axes of the package.

A 3D checkpoint's package takes raw volumes ``(batch, channel, z, y, x)``. Its test volume is
``bioimageio.test_image`` (any volume ``unet-predict`` reads: TIFF stack, NIfTI, HDF5, Zarr) or the first volume
of the checkpoint's validation split, read whole in its own dtype; the spacing is ``data.spacing`` where the
checkpoint's data config sets it, else what that volume's file states (1 where it states none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from unet_train.data.volume_data import VolumeCase, stated_unit
from unet_train.errors import ConfigError, DataError
from unet_train.inference.volumes import Volume, open_volume


@dataclass
class TestVolume:
    """A raw test volume ``(1, C, Z, Y, X)`` in its own dtype, its voxel size ``(z, y, x)`` and unit (or None)."""

    raw: np.ndarray
    spacing: tuple[float, ...]
    unit: str | None


def _whole(volume: Volume) -> np.ndarray:
    """A volume read whole as ``(1, C, Z, Y, X)``."""
    block = volume.read_block((0, 0, 0), volume.shape[:3])  # (Z, Y, X, C)
    return np.ascontiguousarray(np.moveaxis(block, -1, 0)[None])


def package_spacing(values: Any, source: str, sides: Sequence[int]) -> tuple[float, ...]:
    """``values`` as the package's voxel size ``(z, y, x)``: three positive numbers whose extent over the
    test volume's ``sides`` is finite (bioimage.io multiplies them), else one line naming ``source``."""
    try:
        spacing = tuple(float(v) for v in values)
        usable = len(spacing) == 3 and all(
            s > 0 and math.isfinite(s * max(n, 1)) for s, n in zip(spacing, sides, strict=True)
        )
    except (TypeError, ValueError):
        usable = False
    if not usable:
        shown = OmegaConf.to_container(values) if isinstance(values, ListConfig) else values
        raise DataError(
            f"{source} gives the voxel spacing {shown!r} (z, y, x); a package needs three positive, finite sides: "
            "fix it, or set data.spacing=[z,y,x] and export a checkpoint trained with it."
        )
    return spacing


def read_test_volume(data_cfg: DictConfig, test_image: str | None, data_root: str | None) -> TestVolume:
    """The test volume of a 3D package (see the module docstring); ``data_cfg`` is the checkpoint's data config."""
    override = data_cfg.get("spacing")
    if test_image:
        path = Path(test_image).expanduser()
        if not path.exists():
            raise DataError(f"bioimageio.test_image={path} does not exist; pass a volume (TIFF stack, NIfTI, ...).")
        volume = open_volume(path, None, None, int(data_cfg.in_channels))
        try:
            sides = volume.shape[:3]
            if override is not None:
                spacing = package_spacing(override, "The checkpoint's data.spacing", sides)
            else:
                stated = [volume.scale.get(axis, 1.0) for axis in "zyx"]
                spacing = package_spacing(stated, f"bioimageio.test_image={path}", sides)
            return TestVolume(_whole(volume), spacing, None if override is not None else stated_unit(volume))
        finally:
            volume.close()
    from unet_train.build import build_data

    resolved = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    if data_root:
        with open_dict(resolved):
            resolved.root = str(data_root)
    try:
        case = cast(VolumeCase, build_data(resolved).split("val").images[0])  # a 3D data module's split
    except (DataError, ConfigError, OSError) as exc:
        raise DataError(
            f"No test volume: the checkpoint's val split could not be read ({exc}); "
            "pass bioimageio.test_image=FILE or bioimageio.data_root=DIR."
        ) from exc
    spacing = package_spacing(case.spacing, f"The test volume {case.name}", case.image.shape[:3])
    return TestVolume(_whole(case.image), spacing, case.unit)


def volume_model_input(raw: np.ndarray, stored_data: DictConfig) -> torch.Tensor:
    """What ``unet-predict`` feeds a 3D model for the raw ``(1, C, Z, Y, X)`` volume: ``(1, C, Z, Y, X)`` float32
    scaled by the checkpoint's ``data.normalize`` with this volume's own ``per: image`` statistics."""
    from unet_train.volume_predict import model_input

    volume = Volume(np.moveaxis(raw[0], 0, -1), "zyxc", "the test volume")
    return model_input(volume, [stored_data])[None]


def bioimageio_unit(unit: str | None) -> str | None:
    """``unit`` where bioimage.io's space axes accept it (its SpaceUnit names, which are OME-NGFF's), else None."""
    from bioimageio.spec.model.v0_5 import SpaceUnit

    return unit if unit in get_args(SpaceUnit) else None


def space_axes(
    names: str, multiples: Sequence[int], spacing: Sequence[float] | None, unit: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input and output space axes of a package: each input side ``min = step =`` its pooling multiple,
    the output the size of the input; ``scale`` (the voxel size) and ``unit`` on both where known."""
    inputs, outputs = [], []
    for index, (name, multiple) in enumerate(zip(names, multiples, strict=True)):
        physical: dict[str, Any] = {}
        if spacing is not None:
            physical["scale"] = float(spacing[index])
            if bioimageio_unit(unit):
                physical["unit"] = unit
        inputs.append({"type": "space", "id": name, "size": {"min": multiple, "step": multiple}, **physical})
        outputs.append({"type": "space", "id": name, "size": {"tensor_id": "raw", "axis_id": name}, **physical})
    return inputs, outputs
