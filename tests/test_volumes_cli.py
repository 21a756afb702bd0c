"""3D end to end through the console scripts: unet-train on a folder of volumes, its exact resume, sweeps, unet-eval."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import measure

from unet_train.engine.checkpoint import load_checkpoint

from .data.volume_folder import SHAPE, make_volume_folder
from .test_cli import BIN, run


def train_args(root: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        str(BIN / "unet-train"),
        "data=volumes",
        f"data.root={root}",
        "data.patch_size=[8,16,16]",
        "data.batch_size=2",
        "data.samples_per_epoch=8",
        "data.num_workers=0",
        "model.base_channels=4",
        "model.depth=2",
        "trainer=smoke",
        "trainer.channels_last=false",
        "trainer.deterministic=true",
        "sched=none",  # a constant rate: the run stopped at 2 epochs and resumed to 4 is the 4-epoch run
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    return make_volume_folder(tmp_path_factory.mktemp("volumes"), count=4)


@pytest.fixture(scope="module")
def reference(volumes, tmp_path_factory) -> Path:
    """Four epochs without a break."""
    work = tmp_path_factory.mktemp("reference")
    run(train_args(volumes, work / "run", 4), cwd=work)
    return work / "run"


def test_a_3d_run_learns_and_writes_its_checkpoints_and_metrics(reference):
    log = (reference / "train.log").read_text()
    assert "model.spatial_dims=3: the data are volumes" in log
    # z (2 um) is 4x the in-plane side (0.5 um): not pooled at first, then pooled once y, x are 1 um
    assert "model.pool_factors=[[1, 2, 2], [2, 2, 2]] from the voxel spacing [2.0, 0.5, 0.5]" in log
    losses = [float(v) for v in re.findall(r"epoch \d+  train/loss ([\d.]+)", log)]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0]
    assert {p.name for p in (reference / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    metrics = json.loads((reference / "metrics.json").read_text())
    assert 0 <= metrics["val/dice"] <= 1 and 0 <= metrics["val/iou"] <= metrics["val/dice"]
    stored = load_checkpoint(reference / "checkpoints" / "best.pt")["config"]
    assert stored["model"]["spatial_dims"] == 3 and stored["data"]["patch_size"] == [8, 16, 16]


def test_a_3d_run_resumes_exactly(volumes, reference, tmp_path):
    """The crops, their augmentation and the weights after the resume are those of the run never stopped."""
    half = tmp_path / "run"
    run(train_args(volumes, half, 2), cwd=tmp_path)
    run([str(BIN / "unet-train"), f"ckpt={half / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=4"], cwd=tmp_path)
    resumed = load_checkpoint(half / "checkpoints" / "last.pt")
    straight = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert resumed["state"]["step"] == straight["state"]["step"] == 16
    for key, value in straight["model"].items():
        assert (resumed["model"][key].double() - value.double()).abs().max().item() <= 1e-6, key


@pytest.mark.slow
def test_a_folder_of_one_volume_trains_and_validates_on_a_slab_of_it(tmp_path):
    """unet-train data=volumes on one annotated volume stopped at the split ("leaves no training item out of 1")."""
    root = make_volume_folder(tmp_path / "one", count=1, shape=(8, 32, 48))
    args = [a for a in train_args(root, tmp_path / "run", 1) if not a.startswith("data.samples_per_epoch")]
    run([*args, "data.samples_per_epoch=4"], cwd=tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "holds one labelled volume, vol0 (8, 32, 48) (z, y, x): its last 16 of 48 x planes (x 32-47) validate" in log
    assert "train split: 1 volume(s) vol0-x0-31 (8, 32, 32)" in log and "val split: 1 volume(s) vol0-x32-47" in log
    assert 0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["val/dice"] <= 1


def test_unet_eval_scores_the_validation_volume(reference, tmp_path):
    result = run([str(BIN / "unet-eval"), f"ckpt={reference / 'checkpoints' / 'best.pt'}"], cwd=tmp_path)
    assert "val/dice" in result.stdout and "val/iou" in result.stdout
    (out,) = (tmp_path / "outputs" / "eval").glob("*/*")
    metrics = json.loads((out / "metrics.json").read_text())
    (row,) = metrics["details"]["per_image"]  # one validation volume, scored whole
    assert row["name"].startswith("vol") and 0 <= row["dice"] <= 1
    # V-Rand/V-Info per section (the challenge's) and in 3D; HD95 in the volumes' micrometres (ImageJ spacing)
    assert {"val/vrand", "val/vinfo", "val/vrand_3d", "val/vinfo_3d", "val/hd95"} <= set(metrics)
    assert metrics["details"]["units"] == {"hd95": "micrometer"} and row["hd95_unit"] == "micrometer"
    assert "hd95 is in micrometer" in result.stdout
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"vrand", "vrand_3d", "hd95", "hd95_unit"} <= set(header)
    (prediction,) = (out / "predictions").iterdir()
    with tifffile.TiffFile(prediction) as tiff:  # an ImageJ stack with the volume's voxel size: 2 x 0.5 x 0.5 um
        labels = tiff.asarray()
        assert tiff.imagej_metadata["spacing"] == 2.0 and tiff.imagej_metadata["unit"] == "micron"
        assert tiff.pages[0].tags["XResolution"].value == (2, 1) and tiff.pages[0].tags["YResolution"].value == (2, 1)
    assert labels.shape == SHAPE and set(np.unique(labels).tolist()) <= {0, 255}


def test_unet_predict_writes_volumes_with_the_inputs_spacing_and_affine(volumes, reference, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    image = tifffile.imread(volumes / "test" / "images" / "test0.tif")
    affine = np.array([[0.0, 0.5, 0, 10], [0.5, 0, 0, -4], [0, 0, 2.0, 7], [0, 0, 0, 1]])  # x, y swapped: oblique
    nibabel.save(nibabel.Nifti1Image(image.transpose(2, 1, 0), affine), tmp_path / "scan.nii.gz")
    ckpt = f"ckpt={reference / 'checkpoints' / 'best.pt'}"
    for source in (volumes / "test" / "images" / "test0.tif", tmp_path / "scan.nii.gz"):
        args = [ckpt, f"input={source}", "output=out", "tile_size=[8,16,16]", "instances=true"]
        run([str(BIN / "unet-predict"), *args], cwd=tmp_path)
    tiff = tifffile.TiffFile(tmp_path / "out" / "test0_mask.tif")
    assert tiff.series[0].shape == SHAPE and tiff.imagej_metadata["spacing"] == 2.0
    assert tiff.pages[0].tags["XResolution"].value == (2, 1)  # 2 pixels per micron: 0.5 um
    mask = tiff.asarray()
    prob = tifffile.imread(tmp_path / "out" / "test0_prob.tif")
    assert prob.shape == SHAPE and np.array_equal(mask, (prob > 0.5).astype(np.uint8) * 255)
    written = nibabel.load(tmp_path / "out" / "scan_mask.nii.gz")
    assert np.array_equal(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), mask)  # the same voxels, the same answer
    # instances=true: the mask's 6-connected components in 3D (instance_method=auto: objects), with the spacing
    labels = tifffile.TiffFile(tmp_path / "out" / "test0_labels.tif")
    assert labels.imagej_metadata["spacing"] == 2.0
    assert np.array_equal(labels.asarray(), measure.label(mask > 0, connectivity=1))
    assert nibabel.load(tmp_path / "out" / "scan_labels.nii.gz").shape == SHAPE[::-1]


def test_unet_predict_on_a_folder_predicts_its_nifti_hdf5_and_zarr_volumes_too(volumes, reference, tmp_path):
    nibabel, h5py, zarr = (pytest.importorskip(m) for m in ("nibabel", "h5py", "zarr"))
    image = tifffile.imread(volumes / "test" / "images" / "test0.tif")
    folder = tmp_path / "scans"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    nibabel.save(nibabel.Nifti1Image(image.transpose(2, 1, 0), np.eye(4)), folder / "b.nii.gz")
    with h5py.File(folder / "c.h5", "w") as f:
        f["raw"] = image
    zarr.create_array(str(folder / "d.zarr"), data=image, chunks=(4, 16, 16))
    ckpt = f"ckpt={reference / 'checkpoints' / 'best.pt'}"
    run([str(BIN / "unet-predict"), ckpt, f"input={folder}", "output=out", "tile_size=[8,16,16]"], cwd=tmp_path)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [n for n in written if "_mask" in n] == ["a_mask.tif", "b_mask.nii.gz", "c_mask.tif", "d_mask.tif"]


@pytest.mark.slow
def test_a_sweep_over_a_3d_config_runs_every_job_and_summarises_them(volumes, tmp_path):
    args = [a for a in train_args(volumes, tmp_path, 2) if not a.startswith(("hydra.run.dir", "model.base_channels"))]
    run([args[0], "-m", *args[1:], "model.base_channels=4,6"], cwd=tmp_path)
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1"]
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["job"], row["model.base_channels"]) for row in rows] == [("0", "4"), ("1", "6")]
    for job, row, width in zip(jobs, rows, (4, 6)):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and metrics["steps"] == 8  # 8 crops / batch 2, two epochs
        assert float(row["best/val/dice"]) == pytest.approx(metrics["best/val/dice"], rel=1e-12)
        model = load_checkpoint(job / "checkpoints" / "best.pt")["config"]["model"]
        assert (model["spatial_dims"], model["base_channels"]) == (3, width)
