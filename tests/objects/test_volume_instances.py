"""Instance labels of volumes (``data=volumes data.labels=instances``): exact ids through the 3D augmentation, each
target drawn from them after it and post-processed back, and a 3D run trained, validated, tuned, scored and
predicted end to end."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_train.data.augment3d import Compose3D, RandomAxisSwap, RandomFlip3D, RandomRotate90InPlane
from unet_train.data.volumes import VolumeFolder
from unet_train.engine.checkpoint import load_checkpoint
from unet_train.engine.fit import fit
from unet_train.errors import ConfigError, DataError
from unet_train.labels import IGNORE_INDEX
from unet_train.metrics.objects import object_scores
from unet_train.objects import params as pp
from unet_train.objects.heads import DEFAULT_OFFSETS_3D
from unet_train.objects.targets import BOUNDARY, INTERIOR, boundary_target, distance_target

from ..conftest import compose_config
from ..data.volume_folder import write_tiff
from ..test_cli import BIN, only_run_dir, run
from .balls import write_balls
from .test_round_trip import same_partition

SPACING = (2.0, 1.0, 1.0)


def scene() -> np.ndarray:
    """uint16 ids (z, y, x): two boxes touching along a plane, a one-voxel object, a box at the border; sparse ids."""
    ids = np.zeros((6, 16, 16), dtype=np.uint16)
    ids[1:5, 2:8, 2:8] = 7
    ids[1:5, 2:8, 8:14] = 300  # touches 7 along a whole face
    ids[3, 12, 3] = 40000  # one voxel
    ids[0:2, 10:16, 10:16] = 12  # at the volume's border
    return ids


def write_scene(root: Path) -> Path:
    """Two volumes of :func:`scene` (one validates) with their images."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i, ids in enumerate((scene(), scene()[:, ::-1].copy())):
        write_tiff(root / "images" / f"v{i}.tif", ((ids > 0) * 200).astype(np.uint8), SPACING)
        write_tiff(root / "masks" / f"v{i}.tif", ids, SPACING)
    return root


def folder(root: Path, target: str, **kwargs) -> VolumeFolder:
    return VolumeFolder(str(root), labels="instances", target=target, patch_size=[6, 16, 16], val_fraction=0.5,
                        num_classes="auto", num_workers=0, **kwargs)  # fmt: skip


@pytest.mark.parametrize("target", ["boundary", "distance", "affinities"])
def test_a_volume_item_round_trips_labels_target_and_post_processing(tmp_path, target):
    """The validation item's target (classes, the distance drawn with the voxel spacing, 3D affinities) put back
    through the target's post-processing as clean probabilities gives the file's objects, touching and one-voxel
    ones too."""
    data = folder(write_scene(tmp_path / "d"), target)
    assert data.num_classes == {"boundary": 3, "distance": 2, "affinities": 2}[target]
    item = data.dataset("val")[0]
    truth = tifffile.imread(tmp_path / "d" / "masks" / f"{item['name']}.tif")
    ids, classes = item["instances"].numpy(), item["mask"].numpy()
    assert same_partition(truth, ids) and ids.max() == 4  # renumbered 1..N
    if target == "boundary":
        assert np.array_equal(classes, boundary_target(ids))
        prob = np.stack([classes == k for k in (0, INTERIOR, BOUNDARY)]).astype(np.float32)
    elif target == "distance":
        distance = item["distance"].numpy()
        assert np.array_equal(distance, distance_target(ids, SPACING))  # physical: z twice the in-plane side
        assert not np.array_equal(distance, distance_target(ids))
        prob = np.stack([classes, distance]).astype(np.float32)
    else:
        assert data.affinity_offsets == list(DEFAULT_OFFSETS_3D)
        affinities = item["affinities"].numpy()
        assert affinities.shape == (6, *truth.shape)
        prob = np.concatenate([classes[None], np.where(affinities == IGNORE_INDEX, 0, affinities)]).astype(np.float32)
    params = pp.defaults(target)
    assert same_partition(truth, pp.instances(target, prob, params, data.affinity_offsets))


def test_training_crops_keep_every_id_exact_through_the_3d_augmentation(tmp_path):
    """Crops of the whole volume, flipped, turned and axis-swapped: the same objects (voxel counts), and the
    classes drawn from the augmented ids (not moved with them)."""
    augment = Compose3D([RandomFlip3D(p=0.5), RandomRotate90InPlane(p=0.8), RandomAxisSwap(p=0.8)])
    data = folder(write_scene(tmp_path / "d"), "boundary", train_transform=augment)
    dataset = data.dataset("train")
    truth = tifffile.imread(tmp_path / "d" / "masks" / f"{dataset.cases[0].name}.tif")
    sizes = sorted(Counter(truth[truth > 0].tolist()).values())
    changed = 0
    for seed in range(6):
        item = dataset[(0, seed)]
        ids = item["instances"].numpy()
        assert sorted(Counter(ids[ids > 0].tolist()).values()) == sizes
        assert np.array_equal(item["mask"].numpy(), boundary_target(ids))
        changed += not same_partition(truth, ids) or not np.array_equal(ids > 0, truth > 0)
    assert changed  # some crops were augmented


def test_labels_auto_reads_16_bit_label_volumes_with_many_values_as_object_ids(tmp_path):
    root = tmp_path / "d"
    for folder_name in ("images", "masks"):
        (root / folder_name).mkdir(parents=True)
    ids = np.zeros((4, 24, 24), dtype=np.uint16)
    for k in range(20):  # 20 small cubes
        ids[1:3, (k // 5) * 6 : (k // 5) * 6 + 3, (k % 5) * 4 : (k % 5) * 4 + 3] = k + 1
    for i in range(2):
        write_tiff(root / "images" / f"v{i}.tif", (ids > 0).astype(np.uint8) * 99, SPACING)
        write_tiff(root / "masks" / f"v{i}.tif", ids, SPACING)
    data = VolumeFolder(str(root), patch_size=[4, 16, 16], num_classes="auto", num_workers=0, target="distance")
    assert (data.num_classes, data.labels, data.instance_target) == (2, "instances", "distance")
    assert "distance" in data.dataset("val")[0]
    classes = VolumeFolder(str(root), patch_size=[4, 16, 16], num_classes="auto", num_workers=0, labels="classes")
    assert (classes.num_classes, classes.labels, classes.instance_target) == (21, "classes", None)


@pytest.mark.parametrize(("dtype", "hint"), [(np.uint16, True), (np.uint8, False)])
def test_labels_auto_on_label_volumes_of_a_few_large_values_names_instances_when_they_may_be_ids(tmp_path, dtype, hint):
    """16-bit volumes of three objects (ids 40, 90, 200): too few values for labels=auto to call them ids, and too
    sparse to be classes; the refusal names data.labels=instances beside data.num_classes (8-bit: classes only)."""
    root = tmp_path / "d"
    for folder_name in ("images", "masks"):
        (root / folder_name).mkdir(parents=True)
    ids = np.zeros((4, 16, 16), dtype=dtype)
    ids[1:3, 2:6, 2:6], ids[1:3, 8:12, 2:6], ids[1:3, 2:6, 8:12] = 40, 90, 200
    for i in range(2):
        write_tiff(root / "images" / f"v{i}.tif", (ids > 0).astype(np.uint8) * 99, SPACING)
        write_tiff(root / "masks" / f"v{i}.tif", ids, SPACING)
    data = VolumeFolder(str(root), patch_size=[4, 16, 16], num_classes="auto", num_workers=0)
    with pytest.raises(DataError) as caught:
        _ = data.num_classes
    assert str(caught.value) == (
        f"Masks in {root.resolve()} hold the values [0, 40, 90, 200], which look like grey levels rather than class "
        "indices 0..K-1; map them to indices or set data.num_classes"
        + (", or data.labels=instances if each value is one object's id." if hint else ".")
    )


@pytest.mark.parametrize(
    ("settings", "what"),
    [({"context_slices": 1}, "data.context_slices=1"), ({"spatial_dims": 2}, "data.spatial_dims=2")],
)
def test_instance_labels_of_sections_are_refused_in_one_line(tmp_path, settings, what):
    with pytest.raises(ConfigError) as caught:
        folder(write_scene(tmp_path / "d"), "boundary", **settings)
    assert str(caught.value) == (
        f"data.labels=instances of volumes trains 3D models only, not {what} (sections): set data.spatial_dims=3 "
        "and data.context_slices=0."
    )


def test_an_affinity_offset_of_two_axes_is_refused_for_volumes(tmp_path):
    data = folder(write_scene(tmp_path / "d"), "affinities", affinity_offsets=[[-1, 0], [0, -1]])
    with pytest.raises(ConfigError) as caught:
        data.dataset("train")
    assert str(caught.value) == (
        "data.affinity_offsets holds [-1, 0], an offset of 2 axes, but the images are 3D: give 3 numbers per offset, "
        "e.g. [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3]]."
    )  # the 3D defaults as the example (it gave the 2D ones)


@pytest.mark.parametrize(
    ("dtype", "value", "said"), [(np.int32, -4, "negative ids (-4)"), (np.float32, 2.5, "2.5, not a whole")]
)
def test_a_label_volumes_bad_id_is_refused_when_scanned_before_any_crop_is_read(tmp_path, dtype, value, said):
    """Ids were checked only as each crop was read, in a loader worker and at whatever step first reached them."""
    root = write_scene(tmp_path / "d")
    ids = scene().astype(dtype)
    ids[5, 0, 0] = value  # one voxel in a corner
    tifffile.imwrite(root / "masks" / "v1.tif", ids)
    data = folder(root, "boundary")
    with pytest.raises(DataError, match=f"^Instance mask .*v1.tif holds {re.escape(said)}"):
        data.dataset("train")


def test_an_empty_affinity_offsets_of_volumes_is_refused_naming_the_3d_defaults(tmp_path):
    with pytest.raises(ConfigError) as caught:
        folder(write_scene(tmp_path / "d"), "affinities", affinity_offsets=[])
    assert str(caught.value) == (
        "data.affinity_offsets=[] lists no offset; give at least one, e.g. [[-1, 0, 0], [0, -1, 0], [0, 0, -1]], or "
        "leave it out for the default [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3]]."
    )


def ball_overrides(root: Path) -> list[str]:
    # data.val_pick=random: the split these ten tiny epochs were sized on (the typical pick trains on other balls)
    return [
        "data=volumes", f"data.root={root}", "data.labels=instances", "data.num_workers=0", "data.val_pick=random",
        "data.patch_size=[8,16,16]", "data.batch_size=2", "data.samples_per_epoch=8", "data.val_fraction=0.4",
        "trainer=smoke", "trainer.max_epochs=10", "trainer.channels_last=false", "model.base_channels=8",
        "model.depth=2", "optim.lr=0.01", "monitor=val/f1_50", "objects.tune_time=4",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data root, run folder, metrics) of a 3D boundary run on five volumes of touching balls (3 train, 2 val)."""
    root = write_balls(tmp_path_factory.mktemp("balls"), 5)
    run_dir = tmp_path_factory.mktemp("run")
    return root, run_dir, fit(compose_config(ball_overrides(root)), run_dir)


def test_a_3d_instance_run_validates_objects_and_tunes_its_post_processing(trained):
    _, run_dir, metrics = trained
    written = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/f1_50", "val/ap_50", "val/map", "val/aji", "val/pq"):
        assert 0.0 <= metrics[key] <= 1.0 and key in written, key
    assert metrics["tuned/f1_50"] > 0  # best.pt, tuned, finds some balls as objects of their own
    assert metrics["tuned/f1_50"] >= metrics["untuned/f1_50"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    data = checkpoint["config"]["data"]
    assert (data["labels"], data["target"], data["num_classes"]) == ("instances", "boundary", 3)
    assert checkpoint["config"]["model"]["spatial_dims"] == 3
    assert checkpoint["postprocess"]["target"] == "boundary"
    assert checkpoint["postprocess"]["score"] == pytest.approx(metrics["tuned/f1_50"])


@pytest.mark.slow
def test_unet_eval_of_a_3d_instance_model_scores_the_objects_as_validation_did(trained, tmp_path):
    """last.pt with the run's objects.* (its defaults) gives validation's figures; best.pt, the tuning's."""
    _, run_dir, metrics = trained
    for name, expected in (("last", "val/"), ("best", "tuned/")):
        cwd = tmp_path / name
        cwd.mkdir()
        extra = ["objects.threshold=0.5", "objects.seed_threshold=0.5", "objects.min_size=1"] if name == "last" else []
        ckpt = run_dir / "checkpoints" / f"{name}.pt"
        run([str(BIN / "unet-eval"), f"ckpt={ckpt}", "trainer.channels_last=false", *extra], cwd=cwd)
        out = only_run_dir(cwd / "outputs" / "eval")
        scores = json.loads((out / "metrics.json").read_text())
        assert scores["val/f1_50"] == pytest.approx(metrics[f"{expected}f1_50"], abs=1e-6)
        labels = [tifffile.imread(path) for path in sorted((out / "predictions").glob("*_labels.tif"))]
        assert [(a.shape, a.dtype) for a in labels] == [((8, 32, 32), np.uint16)] * 2  # each validation volume
        if name == "last":
            for key in ("ap_50", "map", "aji", "pq"):
                assert scores[f"val/{key}"] == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key
            assert scores["val/true_objects"] == 4  # two pairs of touching balls per volume, matched in 3D


def test_unet_predict_writes_an_instance_label_volume(trained, tmp_path):
    from unet_train.predict import run_predict

    root, run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "best.pt"
    run_predict(compose_config([f"ckpt={ckpt}", f"input={root / 'images'}", f"output={tmp_path}",
                                "trainer.channels_last=false"], "predict"))  # fmt: skip
    found = 0
    for image in sorted((root / "images").iterdir()):
        truth = tifffile.imread(root / "masks" / image.name)
        labels = tifffile.imread(tmp_path / f"{image.stem}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == truth.shape == (8, 32, 32)
        found += object_scores(truth, labels)["tp"]
    assert found > 0
    with tifffile.TiffFile(tmp_path / "b00_labels.tif") as tif:  # the input's voxel size
        assert tif.imagej_metadata["spacing"] == pytest.approx(SPACING[0])


@pytest.mark.parametrize(("target", "channels"), [("distance", 2), ("affinities", 7)])
def test_a_3d_run_of_the_distance_or_affinities_target_stores_its_maps_and_3d_offsets(tmp_path, target, channels):
    """One short epoch each: the model's channels (foreground + distance; foreground + the 6 default 3D offsets),
    the resolved offsets in the checkpoint's config (what unet-eval and unet-predict read), objects scored."""
    root = write_balls(tmp_path / "balls", 3)
    overrides = [*ball_overrides(root), f"data.target={target}", "trainer.max_epochs=1", "data.samples_per_epoch=2",
                 "model.base_channels=4", "objects.tune_time=1"]  # fmt: skip
    metrics = fit(compose_config(overrides), tmp_path / "run")
    assert {"val/f1_50", "val/map", "tuned/f1_50"} <= set(metrics)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    config = checkpoint["config"]
    assert config["model"]["out_channels"] == channels and config["data"]["num_classes"] == 2
    offsets = config["data"]["affinity_offsets"]
    assert offsets is None if target == "distance" else offsets == [list(o) for o in DEFAULT_OFFSETS_3D]
    assert checkpoint["postprocess"]["target"] == target


def test_a_checkpoint_of_other_affinity_offsets_is_refused_naming_them():
    """Resuming a 3D affinities run (1 + 6 channels) with data.affinity_offsets=[[-1, 0, 0]] (1 + 1): the refusal
    named model.*, data.in_channels and data.num_classes only, none of which differs."""
    import torch

    from unet_train.engine.checkpoint import check_model_fits
    from unet_train.errors import CheckpointError

    head = torch.nn.Conv3d(4, 7, 1)
    with pytest.raises(CheckpointError) as caught:
        check_model_fits(torch.nn.Conv3d(4, 2, 1), head.state_dict(), "last.pt")
    assert str(caught.value) == (
        "last.pt does not fit the model asked for: 2 tensor(s) differ in shape, e.g. weight is (7, 4, 1, 1, 1) in the "
        "checkpoint but (2, 4, 1, 1, 1) in the model asked for. Keep the checkpoint's model settings (model.*, "
        "data.in_channels, data.num_classes; of an instance model data.target and data.affinity_offsets, which set "
        "its output channels) or start a new run."
    )


@pytest.mark.parametrize(
    ("offsets", "said"),
    [
        ([[-1, 0, 0], [0, -1, 0], [0, 0, -1]], "data.affinity_offsets [[-1, 0, 0], [0, -1, 0], [0, 0, -1]] do not have "
         "2 axes each, as the images of its 2D model do"),
        ([[0, 0], [0, -1], [-2, 0]], "data.affinity_offsets holds [0, 0]"),
    ],
)  # fmt: skip
def test_a_checkpoints_affinity_offsets_that_do_not_fit_its_model_are_refused_on_loading(tmp_path, offsets, said):
    """A file's offsets of 3 axes for a 2D model (as many channels) ended in a ValueError traceback in
    unet-predict's post-processing; a malformed one too."""
    import torch

    from unet_train.engine.checkpoint import load_checkpoint as load
    from unet_train.errors import CheckpointError

    from ..export.conftest import make_checkpoint

    path = make_checkpoint(tmp_path / "best.pt", [
        "data=folder", f"data.root={tmp_path / 'data'}", "data.labels=instances", "data.target=affinities",
        "data.in_channels=1", "model.base_channels=4", "model.depth=2", "data.num_classes=2", "model.out_channels=4",
        "data.affinity_offsets=[[-1,0],[0,-1],[-2,0]]",
    ], base=())  # fmt: skip
    load(path)  # as made: usable
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["data"]["affinity_offsets"] = offsets
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path} is not a usable unet-train checkpoint: its {said}")
