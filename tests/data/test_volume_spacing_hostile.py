"""A volume's stated voxel spacing is header data: a side that is no positive number (negative, zero, NaN,
text) is refused in one line instead of deciding the model's pooling; ``data.spacing`` overrides it. A file
of several arrays names the data.image_key / data.mask_key options, not unet-predict's input_key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_train.data.volumes import VolumeFolder
from unet_train.errors import ConfigError, DataError


def stacks(root: Path, metadata: dict, ome: bool = False) -> Path:
    """Three 8 x 32 x 32 image/mask TIFF pairs whose images carry ``metadata`` (ImageJ, or OME with ``ome``)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((8, 32, 32), np.uint8)
    mask[:, 8:24, 8:24] = 1
    for i in range(3):
        name = f"v{i}.ome.tif" if ome else f"v{i}.tif"
        kind = {"ome": True} if ome else {"imagej": True}
        tifffile.imwrite(
            root / "images" / name, (mask * 100).astype(np.float32), **kind, metadata={"axes": "ZYX", **metadata}
        )
        tifffile.imwrite(root / "masks" / f"v{i}.tif", mask, imagej=True, metadata={"axes": "ZYX"})
    return root


def folder(root: Path, **kwargs) -> VolumeFolder:
    return VolumeFolder(root=str(root), patch_size=[4, 16, 16], num_workers=0, in_channels=1, num_classes=2, **kwargs)


@pytest.mark.parametrize("spacing", [-50.0, float("nan")])
def test_a_stated_spacing_that_is_no_positive_number_is_refused(tmp_path, spacing):
    data = folder(stacks(tmp_path, {"spacing": spacing}))
    with pytest.raises(DataError, match=r"states the voxel spacing \[.*\] \(z, y, x\).*data\.spacing=") as caught:
        data.split("train")
    assert "\n" not in str(caught.value)


def test_data_spacing_replaces_a_broken_stated_spacing(tmp_path):
    data = folder(stacks(tmp_path, {"spacing": -50.0}), spacing=[50, 4, 4])
    assert data.split("train").images[0].spacing == (50.0, 4.0, 4.0)


def test_an_ome_physical_size_that_is_no_number_is_refused_in_one_line(tmp_path):
    data = folder(stacks(tmp_path, {"PhysicalSizeZ": "abc"}, ome=True))
    with pytest.raises(DataError, match=r"its PhysicalSizeZ 'abc' is not a number; fix its metadata"):
        data.split("train")


KEYS = [
    ({}, "choose one with data.image_key=NAME"),
    ({"image_key": "raw"}, "choose one with data.mask_key=NAME"),
    ({"image_key": "nope"}, "data.image_key=nope is not a dataset"),
]


@pytest.mark.parametrize(("keys", "said"), KEYS)
def test_an_hdf5_volume_of_several_datasets_names_the_data_key_options(tmp_path, keys, said):
    h5py = pytest.importorskip("h5py")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(3):
            with h5py.File(tmp_path / sub / f"v{i}.h5", "w") as f:
                f["raw"] = f["other"] = np.zeros((8, 32, 32), np.uint8)
    with pytest.raises(DataError, match=said):
        folder(tmp_path, **keys).split("train")


@pytest.mark.parametrize("side", [float("nan"), float("inf"), 0.0])
def test_a_data_spacing_that_is_no_positive_finite_number_is_a_config_error(tmp_path, side):
    with pytest.raises(ConfigError, match=r"data.spacing=\[.*\] must be three positive, finite voxel sides"):
        folder(stacks(tmp_path, {}), spacing=[side, 4, 4])


@pytest.mark.parametrize("spacing", ["abc", "123", [[1], [2], [3]], [True, 1, 1], [1, 1], ["1", "x", 1]])
def test_a_data_spacing_that_is_no_list_of_three_numbers_is_refused_in_one_line(tmp_path, spacing):
    """A string ("123" read as 1, 2, 3 before), nested lists or bools: one line, not an error in the target's call."""
    with pytest.raises(ConfigError, match=r"^data.spacing=.* must be three positive, finite voxel sides \[z, y, x\]"):
        folder(stacks(tmp_path, {}), spacing=spacing)
