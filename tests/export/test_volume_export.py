"""3D export: ONNX and TorchScript with dynamic z, y, x; a bioimage.io package with z, y, x axes and the spacing."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet_train.errors import ConfigError
from unet_train.export.model import load_export_model, max_abs_difference, verification_inputs, volume_sizes

from ..conftest import compose_config
from ..data.volume_folder import SHAPE, make_volume_folder, write_tiff
from .conftest import make_volume_checkpoint


@pytest.fixture(scope="module")
def volume_ckpt(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("volume_export")
    return make_volume_checkpoint(work / "best.pt", make_volume_folder(work / "volumes", count=3))


def export(ckpt: Path, out: Path, *overrides: str) -> dict:
    from unet_train.export.cli import run_export

    return run_export(compose_config([f"ckpt={ckpt}", f"output={out}", *overrides], config_name="export"))


def test_volume_sizes_lie_on_the_pooling_grid_and_one_off_it():
    # pools z once (2), y and x twice (4): two sizes on that grid, different on every axis, and one the graph pads
    assert volume_sizes((2, 4, 4)) == [[4, 8, 8], [6, 12, 12], [5, 9, 9]]


@pytest.mark.slow
def test_a_3d_checkpoint_exports_equal_to_pytorch_and_as_a_package_that_bioimageio_tests_pass(volume_ckpt, tmp_path):
    pytest.importorskip("bioimageio.core", reason='needs pip install "unet-train[export]"')
    import onnx
    from bioimageio.spec import InvalidDescr, load_description

    from unet_train.export.onnx import onnx_runner
    from unet_train.export.torchscript import torchscript_runner

    out = tmp_path / "out"
    result = export(volume_ckpt, out, "format=bioimageio", "verify.atol=1e-5")  # verified at volume_sizes, 1e-5
    assert result["bioimageio_test"] == {"pytorch_state_dict": "passed", "onnx": "passed", "torchscript": "passed"}
    assert max(result["max_abs_diff"].values()) <= 1e-5
    graph = onnx.load(str(out / "model.onnx")).graph
    for tensor in (graph.input[0], graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "z", "y", "x"], dims
    # Checked here too, at two sizes on the (2, 4, 4) grid that differ on every axis and the trace's example never saw
    exported = load_export_model(volume_ckpt)
    inputs = verification_inputs(1, [[4, 16, 12], [6, 8, 20]], [1, 2], seed=3)
    assert max_abs_difference(exported.folded, onnx_runner(out / "model.onnx"), inputs) <= 1e-5
    assert max_abs_difference(exported.folded, torchscript_runner(out / "model.pt"), inputs) <= 1e-5
    assert max_abs_difference(exported.model, onnx_runner(out / "model.onnx"), inputs) <= 1e-5  # unfolded too

    descr = load_description(result["package"])
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    for tensor in (descr.inputs[0], descr.outputs[0]):
        assert [str(a.id) for a in tensor.axes] == ["batch", "channel", "z", "y", "x"]
        space = tensor.axes[2:]
        assert [a.scale for a in space] == [2.0, 0.5, 0.5]  # the volumes' ImageJ spacing (tests/data/volume_folder)
        assert [a.unit for a in space] == ["micrometer"] * 3
    assert [(a.size.min, a.size.step) for a in descr.inputs[0].axes[2:]] == [(2, 2), (4, 4), (4, 4)]
    assert "3d" in descr.tags and "2d" not in descr.tags
    with zipfile.ZipFile(result["package"]) as archive:
        archive.extractall(tmp_path / "pkg", ["test_input.npy", "test_output.npy", "README.md"])
    test_input, test_output = (np.load(tmp_path / "pkg" / f"test_{k}.npy") for k in ("input", "output"))
    assert test_input.shape == (1, 1, *SHAPE) and test_input.dtype == np.uint8  # raw, (8, 32, 32) on the grid
    assert test_output.shape == (1, 1, *SHAPE) and 0 <= test_output.min() <= test_output.max() <= 1
    assert "multiples of 2, 4 and 4" in (tmp_path / "pkg" / "README.md").read_text()


def test_a_3d_export_refuses_malformed_verify_sizes_before_writing(volume_ckpt, tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        export(volume_ckpt, tmp_path / "out", "verify.sizes_3d=[[16,16]]")
    assert stop.value.code == 2
    assert caplog.messages[-1] == (
        "verify.sizes_3d=[[16, 16]] must list [z, y, x] sizes of positive ints for this 3D model, "
        "e.g. [[8,32,32],[12,48,40]], or null for sizes from its pooling."
    )
    assert not (tmp_path / "out").exists()


def test_the_test_volume_file_gives_the_spacing_and_unit_and_data_spacing_replaces_them(tmp_path):
    from unet_train.export.volume import read_test_volume

    image = np.arange(4 * 8 * 12, dtype=np.uint16).reshape(4, 8, 12)
    write_tiff(tmp_path / "v.tif", image, spacing=(3.0, 0.25, 0.25))
    data = OmegaConf.create({"in_channels": 1, "spacing": None})
    volume = read_test_volume(data, str(tmp_path / "v.tif"), None)
    assert volume.raw.shape == (1, 1, 4, 8, 12) and volume.raw.dtype == np.uint16
    np.testing.assert_array_equal(volume.raw[0, 0], image)
    assert volume.spacing == (3.0, 0.25, 0.25) and volume.unit == "micrometer"
    data.spacing = [5.0, 1.0, 1.0]  # the checkpoint's data.spacing: its numbers, whose unit the file cannot tell
    overridden = read_test_volume(data, str(tmp_path / "v.tif"), None)
    assert overridden.spacing == (5.0, 1.0, 1.0) and overridden.unit is None


def test_a_test_volume_smaller_than_the_pooling_is_refused_in_one_line(volume_ckpt, tmp_path):
    from unet_train.export.bioimageio import PackageInfo, build_package

    exported = load_export_model(volume_ckpt)
    info = PackageInfo(name="tiny model", description="a test", authors=[{"name": "t"}])
    with pytest.raises(ConfigError) as raised:
        build_package(exported, np.zeros((1, 1, 1, 32, 32), np.uint8), tmp_path, info, {}, None)
    assert str(raised.value) == (
        "The test volume is 1x32x32 (z, y, x) but the package's smallest input is 2x4x4 (the model's pooling "
        "per axis); pass a larger bioimageio.test_image."
    )
    assert not list(tmp_path.iterdir())


def test_space_axes_carry_scale_and_unit_only_where_known():
    from unet_train.export.volume import space_axes

    inputs, outputs = space_axes("zyx", (1, 4, 4), (40.0, 4.0, 4.0), "nanometer")
    assert inputs[0] == {"type": "space", "id": "z", "size": {"min": 1, "step": 1}, "scale": 40.0, "unit": "nanometer"}
    assert outputs[2] == {
        "type": "space", "id": "x", "size": {"tensor_id": "raw", "axis_id": "x"}, "scale": 4.0, "unit": "nanometer"
    }  # fmt: skip
    assert "unit" not in space_axes("zyx", (1, 4, 4), (2.0, 1.0, 1.0), "spacing unit")[0][0]  # no bioimage.io unit
    assert space_axes("yx", (16, 16), None, None)[0] == [  # the 2D package's axes, as before
        {"type": "space", "id": "y", "size": {"min": 16, "step": 16}},
        {"type": "space", "id": "x", "size": {"min": 16, "step": 16}},
    ]


@pytest.mark.parametrize(
    "spacing", ["abc", [[1, 2], [3]], [0, 1, 1], [-1.0, 1.0, 1.0], ["nan", 1, 1], [1e308, 1e308, 1e308], [1, 1]]
)
def test_a_spacing_a_package_cannot_state_is_refused_in_one_line(tmp_path, spacing):
    """A crafted checkpoint's data.spacing: a string, nested lists, zero, negative, NaN, an extent past a float."""
    from unet_train.errors import DataError
    from unet_train.export.volume import read_test_volume

    write_tiff(tmp_path / "v.tif", np.zeros((4, 8, 12), np.uint8))
    data = OmegaConf.create({"in_channels": 1, "spacing": spacing})
    with pytest.raises(DataError, match=r"^The checkpoint's data.spacing gives the voxel spacing .* \(z, y, x\); a "):
        read_test_volume(data, str(tmp_path / "v.tif"), None)


def test_a_test_volume_whose_header_states_a_nan_spacing_is_refused(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from unet_train.errors import DataError
    from unet_train.export.volume import read_test_volume

    image = nibabel.Nifti1Image(np.zeros((12, 8, 4), np.uint8), np.eye(4))
    image.header["pixdim"][1:4] = (0.5, 0.5, float("nan"))
    nibabel.save(image, tmp_path / "v.nii.gz")
    with pytest.raises(DataError, match=r"v.nii.gz gives the voxel spacing \[nan, 0.5, 0.5\] \(z, y, x\)"):
        read_test_volume(OmegaConf.create({"in_channels": 1, "spacing": None}), str(tmp_path / "v.nii.gz"), None)


def test_a_test_volume_that_cannot_be_packaged_is_refused_before_anything_is_exported(volume_ckpt, tmp_path, caplog):
    write_tiff(tmp_path / "plane.tif", np.zeros((1, 32, 32), np.uint8))  # one plane: under the z pooling
    image = f"bioimageio.test_image={tmp_path / 'plane.tif'}"
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        export(volume_ckpt, tmp_path / "out", "format=bioimageio", image)
    assert stop.value.code == 2 and caplog.messages[-1].startswith("The test volume is 1x32x32 (z, y, x)")
    assert not (tmp_path / "out").exists()


def test_a_test_volume_of_other_channels_is_refused_before_anything_is_exported(volume_ckpt, tmp_path, caplog):
    import tifffile

    two = np.zeros((8, 2, 32, 32), np.uint8)  # z, c, y, x: two channels for a one-channel model
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "ZCYX"})
    image = f"bioimageio.test_image={tmp_path / 'two.tif'}"
    with caplog.at_level(logging.ERROR, logger="unet_train"), pytest.raises(SystemExit) as stop:
        export(volume_ckpt, tmp_path / "out", "format=bioimageio", image)
    assert stop.value.code == 2 and caplog.messages[-1].startswith("The test volume has 2 channel(s) but the model")
    assert not (tmp_path / "out").exists()
