"""data.target=distance end to end on touching discs: training, tuning past a bad default, unet-eval, unet-predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.losses.distance import ForegroundDistanceLoss
from unet_train.losses.segmentation import BCELoss
from unet_train.metrics.objects import object_scores

from ..conftest import compose_config
from .discs import write_discs
from .test_training import BAD_SEED, UNTUNED, disc_overrides, evaluate

# val/loss picks best.pt: with the bad seed threshold every pair of discs is one object (F1 0) until the tuning
DISTANCE = ["data.target=distance", "monitor=val/loss"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data root, run folder, metrics) of an 80-step distance run on 10 images of touching discs (7 train, 3 val)."""
    root = write_discs(tmp_path_factory.mktemp("discs"), 10)
    run_dir = tmp_path_factory.mktemp("run")
    metrics = fit(compose_config([*disc_overrides(root), *DISTANCE]), run_dir)
    return root, run_dir, metrics


def test_the_model_outputs_foreground_and_distance_and_tuning_beats_the_bad_default(trained):
    _, run_dir, metrics = trained
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data, model = checkpoint["config"]["data"], checkpoint["config"]["model"]
    assert (data["target"], data["num_classes"], model["out_channels"]) == ("distance", 2, 2)
    assert metrics["tuned/f1_50"] > metrics["untuned/f1_50"] and metrics["tuned/f1_50"] >= 0.8
    stored = checkpoint["postprocess"]
    assert stored["target"] == "distance" and stored["params"]["seed_threshold"] > BAD_SEED
    assert set(stored["params"]) == {"threshold", "seed_threshold", "min_size"}
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["postprocess"] == stored


def test_predict_writes_the_tuned_instances_and_both_maps(trained, tmp_path):
    """unet-predict (in process) uses the stored parameters; its _prob.tif holds foreground and distance."""
    from unet_train.predict import run_predict

    root, run_dir, _ = trained
    image = sorted((root / "images").iterdir())[0]
    for name, extra in (("tuned", []), ("bad", UNTUNED)):
        settings = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={image}", f"output={tmp_path / name}"]
        run_predict(compose_config([*settings, "trainer.channels_last=true", *extra], config_name="predict"))
    truth = tifffile.imread(root / "masks" / f"{image.stem}.tif")
    tuned = tifffile.imread(tmp_path / "tuned" / f"{image.stem}_labels.tif")
    bad = tifffile.imread(tmp_path / "bad" / f"{image.stem}_labels.tif")
    assert object_scores(truth, tuned)["tp"] > object_scores(truth, bad)["tp"]
    prob = tifffile.imread(tmp_path / "tuned" / f"{image.stem}_prob.tif")
    assert prob.shape == (2, *truth.shape)
    # the distance map peaks inside the objects and is low on the background
    assert prob[1][truth > 0].max() > 0.5 > prob[1][truth == 0].mean()


@pytest.mark.slow
def test_eval_scores_the_objects_with_the_tuned_parameters(trained, tmp_path):
    _, run_dir, metrics = trained
    tuned, _ = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "a", "save_predictions=false")
    assert tuned["val/f1_50"] == pytest.approx(metrics["tuned/f1_50"], abs=1e-6)
    assert 0.0 <= tuned["val/dice"] <= 1.0  # the pixel metrics score the foreground channel alone


def test_the_loss_scores_the_foreground_by_the_class_loss_and_the_distance_inside_the_labelled_pixels():
    """By hand: one labelled pixel of each kind and one unlabelled pixel whose distance is wrong."""
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, 0.0, 5.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[1, 0, 255]]])
    distance = torch.tensor([[[1.0, 0.0, 0.0]]])
    loss = ForegroundDistanceLoss(BCELoss())(logits, target, distance=distance)
    # BCE of logit 0 is log 2 for either class; the distance's soft-target BCE at logit 0 is log 2 too
    assert loss.item() == pytest.approx(2 * np.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="needs the batch's distance maps"):
        ForegroundDistanceLoss(BCELoss())(logits, target)


def test_probabilities_read_class_logits_then_sigmoid_maps_and_invert():
    """classes=1: every channel a sigmoid (foreground, distance); classes=3 of 4: softmax over 3, then a sigmoid;
    logits_of gives logits whose probabilities are the same (what TTA and tiled evaluation rely on)."""
    from unet_train.engine.evaluate import logits_of, probabilities

    logits = torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    two = probabilities(logits[:, :2], classes=1)
    torch.testing.assert_close(two, torch.sigmoid(logits[:, :2]))
    mixed = probabilities(logits, classes=3)
    torch.testing.assert_close(mixed[:, :3], torch.softmax(logits[:, :3], dim=1))
    torch.testing.assert_close(mixed[:, 3], torch.sigmoid(logits[:, 3]))
    torch.testing.assert_close(probabilities(logits), torch.softmax(logits, dim=1))  # a model of classes
    for prob, classes in ((two, 1), (mixed, 3)):
        torch.testing.assert_close(probabilities(logits_of(prob, classes), classes), prob)


def test_the_bioimageio_package_describes_a_sigmoid_per_channel(trained, tmp_path):
    pytest.importorskip("bioimageio.spec", reason='needs pip install "unet-train[export]"')
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model

    root, run_dir, _ = trained
    exported = load_export_model(run_dir / "checkpoints" / "best.pt")
    raw = tifffile.imread(sorted((root / "masks").iterdir())[0]).astype(np.uint8)  # any 64 px image will do
    info = PackageInfo(name="distance model", description="a test", authors=[{"name": "t"}])
    (tmp_path / "pkg").mkdir()
    rdf = build_package(exported, raw_to_nchw(raw), tmp_path / "pkg", info, {}, None)
    output = rdf["outputs"][0]
    assert output["postprocessing"] == [{"id": "sigmoid"}]
    assert output["axes"][1]["channel_names"] == ["foreground", "distance"]
    assert "distance-to-the-boundary map" in (tmp_path / "pkg" / "README.md").read_text()


@pytest.mark.slow
def test_zarr_chunks_and_tta_keep_the_distance_map_apart_from_the_classes(trained, tmp_path):
    """Into a Zarr store of 32 px chunks with a 16 px halo the instances equal the whole image's; the store holds
    both maps and a foreground mask; with tta=true each map is averaged over the flips and rotations through its
    own sigmoid."""
    zarr = pytest.importorskip("zarr")
    from unet_train.predict import run_predict

    root, run_dir, _ = trained
    image = sorted((root / "images").iterdir())[-1]
    whole, store, tta = tmp_path / "whole", tmp_path / "out.zarr", tmp_path / "tta"
    for output, extra in ((whole, []), (store, ["chunk_size=32", "instance_halo=16"]), (tta, ["tta=true"])):
        settings = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={image}", f"output={output}"]
        run_predict(compose_config([*settings, "tile_size=256", "trainer.channels_last=true", *extra],
                                   config_name="predict"))  # fmt: skip
    expected = tifffile.imread(whole / f"{image.stem}_labels.tif")
    group = zarr.open_group(str(store), mode="r")
    assert expected.max() >= 4 and object_scores(expected, group["labels/instances/0"][...])["f1_75"] == 1.0
    assert group["0"].shape == (2, *expected.shape)
    stored = np.asarray(group["0"][0], dtype=np.float32)  # the stored foreground (float16 by default)
    np.testing.assert_array_equal(group["labels/mask/0"][...], (stored > 0.5).astype(np.uint8))
    prob = tifffile.imread(whole / f"{image.stem}_prob.tif")
    # trained with flips and quarter turns, the model's averaged maps stay near its plain ones (a softmax over the
    # two channels would turn the foreground into a contest with the distance)
    averaged = tifffile.imread(tta / f"{image.stem}_prob.tif")
    assert averaged.shape == prob.shape and np.abs(averaged - prob).mean(axis=(1, 2)).max() < 0.1


def test_an_ensemble_of_a_distance_model_and_a_binary_model_is_refused_in_one_line():
    """Both have 1 input channel and 2 classes; only the target says their second channel is a distance map."""
    from unet_train.errors import CheckpointError
    from unet_train.predict_files import check_ensemble

    distance = {"in_channels": 1, "num_classes": 2, "labels": "instances", "target": "distance"}
    binary = {"in_channels": 1, "num_classes": 2, "labels": "classes", "target": "boundary"}
    check_ensemble(["a.pt", "b.pt"], [distance, dict(distance)])
    with pytest.raises(CheckpointError) as caught:
        check_ensemble(["a.pt", "b.pt"], [distance, binary])
    assert str(caught.value) == (
        "ckpt ensemble: b.pt has data.target=None but a.pt has distance; an ensemble needs models of the same "
        "inputs and classes."
    )
