"""Training on instance labels end to end: touching discs, a deliberately bad default, tuning, eval and predict."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import CheckpointError, ConfigError
from unet_train.metrics.objects import object_scores

from ..conftest import compose_config
from ..test_cli import BIN, only_run_dir, run
from .discs import write_discs

BAD_SEED = 0.1  # seeds this low join two touching discs through their seam: the default tuning must beat
# the run's post-processing (objects.*) as overrides: the untuned default
UNTUNED = ["objects.threshold=0.5", f"objects.seed_threshold={BAD_SEED}", "objects.min_size=1"]


def disc_overrides(root: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "data.labels=instances",
        "data.num_workers=0",
        "data.patch_size=64",
        "data.batch_size=4",
        "data.samples_per_epoch=16",
        "data.val_fraction=0.3",
        "trainer=smoke",
        "trainer.max_epochs=20",
        "trainer.channels_last=true",
        "model.base_channels=8",  # width 4 at lr 0.02 collapsed to background on 2 threads (chaotic sums)
        "model.depth=2",
        "optim.lr=0.01",
        "monitor=val/f1_50",
        f"objects.seed_threshold={BAD_SEED}",
        "objects.tune_time=30",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data root, run folder, metrics) of an 80-step run on 10 images of touching discs (7 train, 3 val)."""
    root = write_discs(tmp_path_factory.mktemp("discs"), 10)
    run_dir = tmp_path_factory.mktemp("run")
    metrics = fit(compose_config(disc_overrides(root)), run_dir)
    return root, run_dir, metrics


def test_validation_reports_object_metrics_and_tuning_beats_the_bad_default(trained):
    _, run_dir, metrics = trained
    for key in ("val/f1_50", "val/ap_50", "val/map", "val/aji", "val/pq", "val/dice_2"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["tuned/f1_50"] > metrics["untuned/f1_50"]
    stored = load_checkpoint(run_dir / "checkpoints" / "best.pt")["postprocess"]
    assert stored["target"] == "boundary" and stored["metric"] == "f1_50"
    assert stored["params"]["seed_threshold"] > BAD_SEED  # the seeds no longer reach across the seam
    assert stored["score"] == pytest.approx(metrics["tuned/f1_50"])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["postprocess"] == stored


def test_a_resume_with_no_time_left_to_search_keeps_the_earlier_tuning(trained, tmp_path):
    """A resumed segment out of trainer.max_time tries the default alone; best.pt's weights unchanged, the whole
    search's parameters tuned on them before (which score higher on the same images) stay, not the default."""
    _, run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = load_checkpoint(copy / "checkpoints" / "best.pt")
    args = [f"ckpt={copy / 'checkpoints' / 'last.pt'}", "trainer.max_epochs=21", "trainer.max_time=1"]
    result = run([str(BIN / "unet-train"), *args], cwd=tmp_path)
    log = result.stdout + result.stderr + (copy / "train.log").read_text()
    assert "1 of 175 grid points" in log and "more than this search's best" in log
    after = load_checkpoint(copy / "checkpoints" / "best.pt")
    assert after["state"]["epoch"] == before["state"]["epoch"]  # the same weights: their tuning still holds
    assert before["postprocess"]["params"]["seed_threshold"] > BAD_SEED  # not the default: the search's winner
    assert after["postprocess"]["params"] == before["postprocess"]["params"]
    assert after["postprocess"]["score"] == pytest.approx(before["postprocess"]["score"])
    assert load_checkpoint(copy / "checkpoints" / "last.pt")["postprocess"] == after["postprocess"]


def evaluate(checkpoint: Path, cwd: Path, *overrides: str) -> tuple[dict, Path]:
    cwd.mkdir(exist_ok=True)
    run([str(BIN / "unet-eval"), f"ckpt={checkpoint}", "trainer.channels_last=true", *overrides], cwd=cwd)
    out = only_run_dir(cwd / "outputs" / "eval")
    return json.loads((out / "metrics.json").read_text()), out


@pytest.mark.slow
def test_eval_scores_objects_with_the_tuned_parameters_which_find_each_touching_disc(trained, tmp_path):
    """unet-eval of best.pt on the validation split gives the tuning's figure; the bad default finds fewer."""
    _, run_dir, metrics = trained
    tuned, out = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "a")
    assert tuned["val/f1_50"] == pytest.approx(metrics["tuned/f1_50"], abs=1e-6)
    # every disc of every touching pair found as an object of its own (IoU > 0.5), none merged
    assert tuned["val/tp"] == tuned["val/true_objects"] == 6 and tuned["val/merges"] == 0
    bad, _ = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "b", *UNTUNED)
    assert bad["val/f1_50"] == pytest.approx(metrics["untuned/f1_50"], abs=1e-6)
    assert bad["val/tp"] < tuned["val/tp"]
    labels = sorted((out / "predictions").glob("*_labels.tif"))
    assert len(labels) == 3 and tifffile.imread(labels[0]).dtype == np.uint16
    rows = tuned["details"]["per_image"]
    assert {"f1_50", "map", "aji", "tp", "fp", "fn", "splits", "merges"} <= set(rows[0])


@pytest.mark.slow
def test_validation_and_eval_agree_with_the_same_parameters(trained, tmp_path):
    """last.pt holds the weights of the last validation: unet-eval with the run's objects.* reports its figures."""
    _, run_dir, metrics = trained
    scores, _ = evaluate(run_dir / "checkpoints" / "last.pt", tmp_path, *UNTUNED, "save_predictions=false")
    for key in ("f1_50", "ap_50", "map", "aji", "pq"):
        assert scores[f"val/{key}"] == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key


@pytest.mark.slow
def test_predict_writes_the_instances_of_the_tuned_post_processing(trained, tmp_path):
    """Over the whole folder (one training image alone may split as well either way) the tuned parameters find
    more discs than the bad default."""
    root, run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "best.pt"
    for name, extra in (("tuned", []), ("bad", UNTUNED)):
        run([str(BIN / "unet-predict"), f"ckpt={ckpt}", f"input={root / 'images'}", f"output={tmp_path / name}",
             "trainer.channels_last=true", *extra], cwd=tmp_path)  # fmt: skip
    found = {"tuned": 0, "bad": 0}
    for image in sorted((root / "images").iterdir()):
        truth = tifffile.imread(root / "masks" / f"{image.stem}.tif")
        for name in found:
            labels = tifffile.imread(tmp_path / name / f"{image.stem}_labels.tif")
            assert labels.dtype == np.uint16 and labels.shape == truth.shape
            found[name] += object_scores(truth, labels)["tp"]
    assert found["tuned"] > found["bad"]


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"threshold": math.nan, "seed_threshold": 0.5, "min_size": 1}, "postprocess.params.threshold=nan"),
        ({"threshold": 0.5, "seed_threshold": 0.5, "min_size": True}, "postprocess.params.min_size=True"),
        ({"threshold": 0.5, "seed_threshold": 0.5, "min_size": 1e300}, "postprocess.params.min_size=1e+300"),
        ({"threshold": 0.5, "seed_threshold": 0.5, "min_size": 1, "watershed_line": 1}, "must name exactly"),
        ({"threshold": 2.0, "seed_threshold": 0.5, "min_size": 1}, "postprocess.params.threshold=2.0"),
        ("0.5", "must name exactly"),
    ],
)
def test_a_checkpoint_with_crafted_post_processing_is_refused_in_one_line(trained, tmp_path, params, said):
    _, run_dir, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    checkpoint["postprocess"]["params"] = params
    path = tmp_path / "crafted.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="is not a usable unet-train checkpoint") as caught:
        load_checkpoint(path)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_an_out_of_range_override_is_refused(trained, tmp_path):
    _, run_dir, _ = trained
    result = run([str(BIN / "unet-eval"), f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "objects.min_size=0"],
                 cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].endswith("objects.min_size=0 must be a whole number in [1, 2147483647].")
    )


def test_monitor_must_be_an_object_metric_validation_reports(tmp_path):
    with pytest.raises(ConfigError, match="monitor='val/f1_75' is not a validation metric; choose one of .*val/f1_50"):
        fit(compose_config([*disc_overrides(write_discs(tmp_path / "d", 4)), "monitor=val/f1_75"]), tmp_path / "r")


def test_a_few_steps_on_real_nuclei_run_end_to_end(dsb_subset, tmp_path):
    """Three DSB 2018 images (uint16 id masks, RGBA PNGs): detected as instances, trained, scored, tuned, stored."""
    overrides = [
        "data=folder", f"data.root={dsb_subset}", "data.num_workers=0", "data.patch_size=64", "data.batch_size=2",
        "data.val_fraction=0.34", "trainer=smoke", "trainer.max_epochs=2", "trainer.channels_last=true",
        "model.base_channels=4", "model.depth=2", "monitor=val/map", "objects.tune_time=5",
    ]  # fmt: skip
    metrics = fit(compose_config(overrides), tmp_path)
    assert {"val/map", "val/ap_50", "val/aji", "val/f1_50", "tuned/map", "untuned/map"} <= set(metrics)
    assert metrics["tuned/map"] >= metrics["untuned/map"]
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    data = checkpoint["config"]["data"]
    assert (data["labels"], data["target"], data["num_classes"], data["in_channels"]) == ("instances", "boundary", 3, 3)
    assert checkpoint["postprocess"]["metric"] == "map"


@pytest.mark.slow
def test_a_zarr_prediction_labels_chunks_with_the_tuned_post_processing(trained, tmp_path):
    """Chunks of 32 px with a 16 px halo: the instances equal the whole-image ones object for object."""
    zarr = pytest.importorskip("zarr")
    from unet_train.predict import run_predict

    root, run_dir, _ = trained
    image = sorted((root / "images").iterdir())[-1]
    whole, store = tmp_path / "whole", tmp_path / "out.zarr"
    for output, extra in ((whole, []), (store, ["chunk_size=32", "instance_halo=16"])):
        settings = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={image}", f"output={output}"]
        # One forward for both (a 256 px tile holds the image): what differs is only how the chunks are labelled.
        settings.append("tile_size=256")
        run_predict(compose_config([*settings, "trainer.channels_last=true", *extra], config_name="predict"))
    expected = tifffile.imread(whole / f"{image.stem}_labels.tif")
    chunked = zarr.open_group(str(store), mode="r")["labels/instances/0"][...]
    assert expected.max() >= 4 and object_scores(expected, chunked)["f1_75"] == 1.0


@pytest.mark.slow
def test_eval_on_another_folder_reads_its_masks_as_object_ids(trained, tmp_path):
    """data=folder composed afresh has labels=auto and the model's 3 classes: its masks are still read as ids."""
    _, run_dir, _ = trained
    other = write_discs(tmp_path / "other", 3, seed=5)
    scores, _ = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "e", "data=folder", f"data.root={other}",
                         "split=all", "save_predictions=false")  # fmt: skip
    assert scores["details"]["images"] == 3 and scores["all/true_objects"] == 6


def test_a_plan_of_instance_labels_plans_their_target(tmp_path):
    """unet-plan fingerprints the classes the model learns from the ids, and the plan keeps labels=instances; every
    disc touches its pair and is about 11 px across, so the plan picks the distance target (plan/objects.py)."""
    import yaml

    from unet_train.plan.planner import make_plan

    root = write_discs(tmp_path / "d", 4)
    out = tmp_path / "plan.yaml"
    fingerprint = make_plan(compose_config(["data=folder", f"data.root={root}", "data.labels=instances"]).data, 60.0,
                            "cpu", out, measure=False)  # fmt: skip
    assert set(fingerprint["classes"]) == {"0", "1"} and fingerprint["target"] == "distance"
    assert fingerprint["objects"]["touching_share"] == 1.0 and fingerprint["objects"]["median_diameter"] >= 10
    plan = yaml.safe_load(out.read_text())
    planned = plan["data"]
    assert (planned["labels"], planned["target"], planned["num_classes"]) == ("instances", "distance", 2)
    assert plan["monitor"] == "val/map"  # best.pt and the tuning go by the objects' mean AP, not by pixels


@pytest.mark.slow
def test_eval_of_an_unlabelled_split_writes_instances_only(trained, tmp_path):
    _, run_dir, _ = trained
    other = write_discs(tmp_path / "other", 3, seed=7)
    write_discs(other / "test", 2, seed=8)
    shutil.rmtree(other / "test" / "masks")
    result, out = evaluate(run_dir / "checkpoints" / "best.pt", tmp_path / "e", f"data.root={other}", "split=test")
    assert not any(key.startswith("test/") for key in result)  # nothing scored
    labels = sorted((out / "predictions").glob("*_labels.tif"))
    assert [p.name for p in labels] == ["d00_labels.tif", "d01_labels.tif"]
    assert tifffile.imread(labels[0]).dtype == np.uint16
