"""Volume readers: TIFF (ImageJ, OME), NIfTI, HDF5 and OME-Zarr stacks with their voxel spacing read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from unet_train.errors import DataError
from unet_train.inference.volumes import open_volume

# a (z, y, x) stack whose every voxel says where it is: value = 100 z + 10 y + x
STACK = (np.arange(4)[:, None, None] * 100 + np.arange(5)[None, :, None] * 10 + np.arange(6)[None, None, :]).astype(
    np.uint16
)


def test_imagej_tiff_spacing_and_unit(tmp_path):
    path = tmp_path / "stack.tif"
    # 4.6 nm in-plane (resolution = pixels per unit), 50 nm between sections, as serial-section EM
    tifffile.imwrite(
        path,
        STACK,
        imagej=True,
        resolution=(1 / 0.0046, 1 / 0.0046),
        metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"},
    )
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.axes == "zyx" and volume.shape == (4, 5, 6, 1)
    assert volume.scale == pytest.approx({"z": 0.05, "y": 0.0046, "x": 0.0046}, rel=1e-4)
    assert volume.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert volume.read(2, 1, 3, 0, 2)[..., 0].tolist() == [[210, 211], [220, 221]]
    volume.close()


def test_ome_tiff_physical_size(tmp_path):
    path = tmp_path / "stack.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, STACK, ome=True, metadata=metadata)
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.scale == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert volume.units["z"] == "micrometer"
    volume.close()


def test_tiff_without_resolution_states_no_spacing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack")
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.scale == {} and volume.units == {}
    volume.close()


def test_nifti_orientation_spacing_and_lazy_reading(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "ct.nii.gz"
    data = STACK.transpose(2, 1, 0)  # NIfTI stores (x, y, z)
    image = nibabel.Nifti1Image(data, affine=np.diag([0.8, 0.8, 3.0, 1.0]))
    image.header.set_xyzt_units("mm")
    image.header.set_zooms((0.8, 0.8, 3.0))
    nibabel.save(image, path)
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.axes == "xyz" and volume.shape == (4, 5, 6, 1)  # presented (z, y, x, c)
    assert volume.scale == pytest.approx({"x": 0.8, "y": 0.8, "z": 3.0})
    assert volume.units == {"x": "millimeter", "y": "millimeter", "z": "millimeter"}
    assert volume.dtype == np.uint16
    assert volume.read(3, 4, 5, 2, 4)[..., 0].tolist() == [[342, 343]]  # z=3, y=4, x=2..3


def test_nifti_scaled_values_are_float(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "scaled.nii"
    image = nibabel.Nifti1Image(STACK.transpose(2, 1, 0).astype(np.int16), affine=np.eye(4))
    image.header.set_slope_inter(0.5, -10)
    nibabel.save(image, path)
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.dtype == np.float32
    assert volume.read(1, 0, 1, 0, 2)[..., 0].tolist() == [[100 * 0.5 - 10, 101 * 0.5 - 10]]


def test_nifti_of_the_wrong_rank_is_refused(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "flat.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4), dtype=np.uint8), affine=np.eye(4)), path)
    with pytest.raises(DataError, match=r"a NIfTI of shape \(4, 4\); a volume is \(x, y, z\)"):
        open_volume(path, None, None, in_channels=1)


def test_hdf5_element_size_um(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = STACK
        f["raw"].attrs["element_size_um"] = [0.05, 0.0046, 0.0046]
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.scale == pytest.approx({"z": 0.05, "y": 0.0046, "x": 0.0046})
    volume.close()


def test_ome_zarr_scale(tmp_path):
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "stack.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=STACK)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
    root.attrs["ome"] = json.loads(
        json.dumps(
            {
                "version": "0.5",
                "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}],
            }
        )
    )
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.axes == "zyx" and volume.scale == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert volume.read(1, 0, 1, 0, 1)[0, 0, 0] == 100


@pytest.mark.parametrize(("unit_tag", "unit"), [("INCH", "inch"), ("CENTIMETER", "centimeter"), ("NONE", None)])
def test_plain_tiff_resolution_unit_tag_names_the_unit(tmp_path, unit_tag, unit):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, STACK[0], resolution=(300.0, 300.0), resolutionunit=unit_tag)  # 300 pixels per unit
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.scale == pytest.approx({"y": 1 / 300, "x": 1 / 300})
    assert volume.units == ({} if unit is None else {"y": unit, "x": unit})  # was unitless for inch and cm alike
    volume.close()


def test_ome_tiff_unit_this_tool_cannot_name_is_left_out_not_called_micrometer(tmp_path):
    path = tmp_path / "stack.ome.tif"
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "Å", "PhysicalSizeY": 0.5,
                "PhysicalSizeYUnit": "ly", "PhysicalSizeZ": 2.0}  # fmt: skip
    tifffile.imwrite(path, STACK, ome=True, metadata=metadata)
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.scale == pytest.approx({"z": 2.0, "y": 0.5, "x": 0.5})
    assert volume.units == {"z": "micrometer", "x": "angstrom"}  # z: OME's default; y: light years, not named
    volume.close()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_nifti_is_one_data_error_naming_the_file(tmp_path, suffix):
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / f"cut{suffix}"
    data = np.random.default_rng(0).random((40, 30, 20)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, affine=np.eye(4)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header survives, half the voxels do not
    volume = open_volume(path, None, None, in_channels=1)
    assert volume.read(0, 0, 30, 0, 40)[..., 0].shape == (30, 40)  # the planes that are there still read
    with pytest.raises(DataError, match=rf"Could not read NIfTI .*cut{suffix}"):
        volume.read(19, 0, 30, 0, 40)  # was nibabel's own ValueError or EOFError


def test_a_one_plane_stack_read_as_2d_is_a_volume_of_one_plane_with_input_axes_zyx(tmp_path):
    # tifffile reads a one-image stack as (y, x); input_axes=zyx (what the 2.5D refusal suggests) makes it one plane.
    image = np.arange(40 * 70, dtype=np.uint16).reshape(40, 70)
    tifffile.imwrite(tmp_path / "one.tif", image, imagej=True)
    assert open_volume(tmp_path / "one.tif", None, None, 1).axes == "yx"
    volume = open_volume(tmp_path / "one.tif", None, "zyx", 1)
    assert volume.shape == (1, 40, 70, 1) and volume.has_z
    np.testing.assert_array_equal(volume.read(0, 5, 9, 10, 20)[..., 0], image[5:9, 10:20])
    np.testing.assert_array_equal(volume.read_block((0, 0, 3), (1, 40, 4))[0, ..., 0], image[:, 3:7])
    with pytest.raises(IndexError, match="plane 1 of a stack of one plane"):
        volume.array[1, 0, 0]
