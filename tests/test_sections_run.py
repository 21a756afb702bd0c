"""2.5D end to end, in process: a data=volumes run with data.context_slices=1, its checkpoint, unet-predict of a
volume (equal to a hand loop over the sections), unet-eval and the bioimage.io export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.build import build_data
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.predict import load_model, run_predict

from .conftest import compose_config
from .data.volume_folder import make_volume_folder

RUN = [
    "data=volumes",
    "data.patch_size=16",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.num_workers=0",
    "model.base_channels=4",
    "model.depth=2",
    "trainer=smoke",
    "trainer.channels_last=false",
    "trainer.max_epochs=2",
]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    return make_volume_folder(tmp_path_factory.mktemp("volumes"), count=3)


def train(volumes: Path, out: Path, *overrides: str) -> Path:
    fit(compose_config([*RUN, f"data.root={volumes}", *overrides]), out)
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def ckpt(volumes, tmp_path_factory) -> Path:
    return train(volumes, tmp_path_factory.mktemp("run"), "data.context_slices=1")


def predict(ckpt: Path, source: Path, out: Path) -> list[Path]:
    return run_predict(compose_config([f"ckpt={ckpt}", f"input={source}", f"output={out}"], config_name="predict"))


def hand_loop(ckpt: Path, volume: np.ndarray, k: int) -> np.ndarray:
    """The model over each section with its k neighbours on each side, mirrored at the ends, by hand."""
    model, _ = load_model(ckpt)
    scaled = volume.astype(np.float32) / 255  # data.normalize: scale_linear, gain null (uint8)
    padded = np.concatenate([scaled[1 : k + 1][::-1], scaled, scaled[-k - 1 : -1][::-1]]) if k else scaled
    with torch.no_grad():
        planes = [model.eval()(torch.from_numpy(padded[None, z : z + 2 * k + 1])) for z in range(len(volume))]
    return torch.sigmoid(torch.cat(planes))[:, 0].numpy()


def test_the_setting_travels_in_the_checkpoint_and_sets_the_model_channels(ckpt):
    state, stored = load_checkpoint(ckpt)["state"], load_checkpoint(ckpt)["config"]
    assert state["epoch"] == 2 and state["step"] == 4  # 4 crops of 2 per epoch
    assert stored["data"]["context_slices"] == 1 and stored["data"]["in_channels"] == 1
    assert stored["model"]["in_channels"] == 3 and stored["model"]["spatial_dims"] == 2
    model, cfg = load_model(ckpt)
    assert cfg.data.context_slices == 1 and model(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_prediction_of_a_volume_equals_the_model_over_each_section_with_its_neighbours(ckpt, volumes, tmp_path):
    source = volumes / "test" / "images" / "test0.tif"
    files = predict(ckpt, source, tmp_path / "out")
    assert [f.name for f in files] == ["test0_prob.tif", "test0_mask.tif"]
    prob = tifffile.imread(files[0])
    expected = hand_loop(ckpt, tifffile.imread(source), 1)
    assert prob.shape == expected.shape == (8, 32, 32)
    assert np.abs(prob - expected).max() < 1e-5
    with tifffile.TiffFile(files[1]) as written:  # the volume writers: the input's spacing travels
        assert written.imagej_metadata["spacing"] == 2.0


def test_unet_eval_scores_each_validation_section_with_its_neighbours(ckpt, tmp_path):
    """The checkpoint's data config brings the context along: each section of the validation volume is scored."""
    from .models.test_variants import eval_in_process

    metrics = eval_in_process(ckpt, tmp_path / "eval")
    details = json.loads((tmp_path / "eval" / "metrics.json").read_text())["details"]
    names = [row["name"] for row in details["per_image"]]
    assert len(names) == 8 and names[0].endswith("-z000") and names[-1].endswith("-z007")  # one val volume of 8
    assert details["units"] == {"hd95": "pixel"} and details["per_image"][0]["hd95_unit"] == "pixel"  # sections
    assert 0 <= metrics["val/dice"] <= 1


def test_a_2d_model_predicts_a_nifti_volume_plane_by_plane_into_nifti(volumes, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    ckpt = train(volumes, tmp_path / "run2d", "data.spatial_dims=2", "trainer.max_epochs=1")
    assert load_model(ckpt)[1].data.context_slices == 0
    image = tifffile.imread(volumes / "test" / "images" / "test0.tif")
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(image.transpose(2, 1, 0), affine), tmp_path / "ct.nii.gz")
    files = predict(ckpt, tmp_path / "ct.nii.gz", tmp_path / "out")
    assert [f.name for f in files] == ["ct_prob.nii.gz", "ct_mask.nii.gz"]  # not ct.nii_prob.tif, as before
    written = nibabel.load(files[0])
    assert np.array_equal(written.affine, affine)
    prob = np.asarray(written.dataobj).transpose(2, 1, 0)
    assert np.abs(prob - hand_loop(ckpt, image, 0)).max() < 1e-5


def test_the_export_takes_2k_plus_1_sections_as_channels(ckpt, volumes, tmp_path):
    """The bioimage.io package's description, test tensors and README (its ONNX and TorchScript weights are those
    of any 2D model: tests/export)."""
    from unet_train.export.bioimageio import PackageInfo, build_package
    from unet_train.export.cli import test_image
    from unet_train.export.model import load_export_model

    exported = load_export_model(ckpt)
    settings = compose_config([f"ckpt={ckpt}"], config_name="export").bioimageio
    raw = test_image(exported, settings)
    rdf = build_package(exported, raw, tmp_path, PackageInfo("p", "d", [{"name": "a"}]), {}, None)
    # The test input is the middle section (4) of the validation volume with sections 3 and 5, as stored.
    name = build_data(load_model(ckpt)[1].data).split("val").images[0].name
    assert raw.dtype == np.uint8 and np.array_equal(raw[0], tifffile.imread(volumes / "images" / f"{name}.tif")[3:6])
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["z-1", "z+0", "z+1"]
    assert "sections z-1..z+1 as channels, section-major" in rdf["inputs"][0]["description"]
    readme = (tmp_path / "README.md").read_text()
    assert "the input is 3 neighbouring sections of a volume as channels, z-1 .. z+1 in order" in readme
    model, _ = load_model(ckpt)
    with torch.no_grad():
        prob = torch.sigmoid(model.eval()(torch.from_numpy(raw / 255).float())).numpy()
    assert np.abs(prob - np.load(tmp_path / "test_output.npy")).max() < 1e-5
