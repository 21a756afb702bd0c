"""data.target=affinities end to end on touching discs: training, tuning past a bad default, unet-predict; the loss
by hand, the target drawn after augmentation with unlabelled pixels left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.data.instances import InstanceTarget
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.labels import IGNORE_INDEX
from unet_train.losses.affinities import ForegroundAffinityLoss
from unet_train.losses.segmentation import BCELoss
from unet_train.metrics.objects import object_scores

from ..conftest import compose_config
from .discs import write_discs
from .test_training import disc_overrides, evaluate

# a threshold of 0.02 joins every pair of touching discs into one object (F1 0) until the tuning
BAD_THRESHOLD = 0.02
# 160 steps: at 80 the seams' affinities are not yet low enough for components to keep the discs of a pair apart
AFFINITIES = ["data.target=affinities", "trainer.max_epochs=40", f"objects.threshold={BAD_THRESHOLD}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data root, run folder, metrics) of a 160-step affinities run on 10 images of touching discs (7 train, 3 val)."""
    root = write_discs(tmp_path_factory.mktemp("discs"), 10)
    run_dir = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    # The sums this run was set up with (2 threads, as one process on 2 cores): under pytest-xdist's one thread per
    # worker the same 160 steps ended with a tuned F1 no better than the bad default's (chaotic sums).
    torch.set_num_threads(2)
    try:
        metrics = fit(compose_config([*disc_overrides(root), *AFFINITIES]), run_dir)
    finally:
        torch.set_num_threads(threads)
    return root, run_dir, metrics


def test_the_model_outputs_foreground_and_one_map_per_offset_and_tuning_beats_the_bad_default(trained):
    _, run_dir, metrics = trained
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data, model = checkpoint["config"]["data"], checkpoint["config"]["model"]
    assert (data["target"], data["num_classes"], model["out_channels"]) == ("affinities", 2, 5)
    assert metrics["tuned/f1_50"] > metrics["untuned/f1_50"] and metrics["tuned/f1_50"] >= 0.75
    stored = checkpoint["postprocess"]
    assert stored["target"] == "affinities" and set(stored["params"]) == {"threshold", "min_size"}
    assert stored["params"]["threshold"] > BAD_THRESHOLD


def test_predict_uses_the_tuned_threshold_and_refuses_tta(trained, tmp_path, caplog):
    from unet_train.predict import run_predict

    root, run_dir, _ = trained
    image = sorted((root / "images").iterdir())[0]
    settings = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={image}"]
    for name, extra in (("tuned", []), ("bad", [f"objects.threshold={BAD_THRESHOLD}"])):
        run_predict(compose_config([*settings, f"output={tmp_path / name}", *extra], config_name="predict"))
    truth = tifffile.imread(root / "masks" / f"{image.stem}.tif")
    tuned = tifffile.imread(tmp_path / "tuned" / f"{image.stem}_labels.tif")
    bad = tifffile.imread(tmp_path / "bad" / f"{image.stem}_labels.tif")
    assert object_scores(truth, tuned)["tp"] > object_scores(truth, bad)["tp"]
    assert tifffile.imread(tmp_path / "tuned" / f"{image.stem}_prob.tif").shape == (5, *truth.shape)
    with pytest.raises(SystemExit) as caught:  # the CLI's one line, exit code 2
        run_predict(compose_config([*settings, f"output={tmp_path / 'tta'}", "tta=true"], config_name="predict"))
    assert caught.value.code == 2
    assert caplog.records[-1].getMessage() == (
        "tta=true does not fit a model of data.target=affinities (flips and rotations change the offsets' "
        "directions); run with tta=false."
    )
    assert not (tmp_path / "tta").exists()


@pytest.mark.slow
def test_eval_scores_the_objects_with_the_tuned_threshold(trained, tmp_path):
    """unet-eval reads the offsets and the tuned threshold from the checkpoint: validation's tuned F1 again."""
    _, run_dir, metrics = trained
    scores, _ = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "a", "save_predictions=false")
    assert scores["val/f1_50"] == pytest.approx(metrics["tuned/f1_50"], abs=1e-6)


def test_the_loss_by_hand_on_a_3x3_case():
    """Foreground BCE at logit 0 is log 2 per pixel; the affinity channel counts its labelled pairs only."""
    logits = torch.zeros(1, 2, 3, 3)
    logits[0, 1] = torch.tensor([[0.0, 0.0, 0.0], [2.0, -2.0, 9.0], [0.0, 0.0, 0.0]])
    target = torch.ones(1, 3, 3, dtype=torch.long)
    affinities = torch.full((1, 1, 3, 3), float(IGNORE_INDEX))
    affinities[0, 0, 1, :2] = torch.tensor([1.0, 0.0])  # pair 1: logit 2 vs 1; pair 2: logit -2 vs 0
    loss = ForegroundAffinityLoss(BCELoss())(logits, target, affinities=affinities)
    # softplus(-2) for each of the two counted pairs (their mean), the logit 9 unlabelled pair not counted
    expected = np.log(2) + np.log1p(np.exp(-2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with_dice = ForegroundAffinityLoss(BCELoss(), dice_weight=1.0)(logits, target, affinities=affinities)
    p = 1 / (1 + np.exp(-2.0))  # sigmoid(2); the other pair's sigmoid(-2) = 1 - p
    dice = (2 * p + 1) / (p + (1 - p) + 1 + 1)
    assert with_dice.item() == pytest.approx(expected + 1 - dice, rel=1e-6)


def test_the_target_leaves_out_pairs_at_the_border_and_next_to_unlabelled_pixels():
    ids = np.array([[1, 1, 2], [1, IGNORE_INDEX, 2], [0, 0, 2]], dtype=np.float32)
    classes, kept, extras = InstanceTarget("affinities", [(-1, 0), (0, -1)])(ids)
    np.testing.assert_array_equal(classes, [[1, 1, 1], [1, IGNORE_INDEX, 1], [0, 0, 1]])
    i = IGNORE_INDEX
    np.testing.assert_array_equal(extras["affinities"][0], [[i, i, i], [1, i, 1], [0, i, 1]])
    np.testing.assert_array_equal(extras["affinities"][1], [[i, 1, 0], [i, i, i], [i, 0, 0]])
    assert kept[1, 1] == 0


def test_the_bioimageio_package_names_the_foreground_and_each_offset(trained, tmp_path):
    pytest.importorskip("bioimageio.spec", reason='needs pip install "unet-train[export]"')
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model

    root, run_dir, _ = trained
    exported = load_export_model(run_dir / "checkpoints" / "best.pt")
    raw = tifffile.imread(sorted((root / "masks").iterdir())[0]).astype(np.uint8)  # any 64 px image will do
    info = PackageInfo(name="affinities model", description="a test", authors=[{"name": "t"}])
    (tmp_path / "pkg").mkdir()
    output = build_package(exported, raw_to_nchw(raw), tmp_path / "pkg", info, {}, None)["outputs"][0]
    assert output["postprocessing"] == [{"id": "sigmoid"}]
    names = ["foreground", "affinity_-1_0", "affinity_0_-1", "affinity_-3_0", "affinity_0_-3"]
    assert output["axes"][1]["channel_names"] == names
    assert (
        "4 affinity maps, one per neighbour offset [[-1, 0], [0, -1], [-3, 0], [0, -3]]"
        in (tmp_path / "pkg" / "README.md").read_text()
    )


def test_an_ensemble_of_affinities_models_of_other_offsets_is_refused_in_one_line():
    from unet_train.errors import CheckpointError
    from unet_train.predict_files import check_ensemble

    a = {"in_channels": 1, "num_classes": 2, "labels": "instances", "target": "affinities"}  # the default offsets
    b = {**a, "affinity_offsets": [[-1, 0], [0, -1], [-2, 0], [0, -2]]}
    check_ensemble(["a.pt", "b.pt"], [a, {**a, "affinity_offsets": [[-1, 0], [0, -1], [-3, 0], [0, -3]]}])
    with pytest.raises(CheckpointError) as caught:
        check_ensemble(["a.pt", "b.pt"], [a, b])
    assert str(caught.value) == (
        "ckpt ensemble: b.pt has data.affinity_offsets=[[-1, 0], [0, -1], [-2, 0], [0, -2]] but a.pt has "
        "[[-1, 0], [0, -1], [-3, 0], [0, -3]]; an ensemble needs models of the same inputs and classes."
    )
