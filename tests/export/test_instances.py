"""An instance model's bioimage.io package records its post-processing: config.unet_train, the output's channels,
the README's table and how-to; a model of classes is packaged as before."""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ruyaml import YAML

from unet_train.engine.checkpoint import load_checkpoint
from unet_train.objects import params as pp

from .conftest import make_checkpoint

pytest.importorskip("bioimageio.spec", reason='needs pip install "unet-train[export]"')

# A tiny instance model of each target (untrained, seeded) on a folder of images that need not exist: the package's
# test image is given, so the data is never read.
TARGETS = {
    "boundary": ["data.num_classes=3", "model.out_channels=3"],
    "distance": ["data.num_classes=2", "model.out_channels=2"],
    "affinities": ["data.num_classes=2", "model.out_channels=4", "data.affinity_offsets=[[-1,0],[0,-1],[-2,0]]"],
}
# What tuning after training stores (unet_train.engine.objects.tune_after_training), off the grid's first values.
TUNED = {
    "boundary": {"threshold": 0.4, "seed_threshold": 0.7, "min_size": 16},
    "distance": {"threshold": 0.6, "seed_threshold": 0.3, "min_size": 4},
    "affinities": {"threshold": 0.8, "min_size": 32},
}


def instance_checkpoint(path: Path, target: str, tuned: bool = True, **entry: object) -> Path:
    """A tiny ``target`` model's checkpoint; ``tuned``: with the ``postprocess`` entry tuning writes (``entry``
    replaces its fields)."""
    overrides = [
        *("data=folder", f"data.root={path.parent / 'data'}", "data.labels=instances", f"data.target={target}"),
        *("data.in_channels=1", "model.base_channels=4", "model.depth=2", *TARGETS[target]),
    ]
    make_checkpoint(path, overrides, base=())
    if tuned:
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["postprocess"] = {"target": target, "params": TUNED[target], "metric": "ap_50", "score": 0.8125,
                                     "default_score": 0.5, "tried": 45, "total": 150, **entry}  # fmt: skip
        torch.save(checkpoint, path)
    return path


def package(ckpt: Path, folder: Path, class_names: list[str] | None = None) -> tuple[dict, str, np.ndarray]:
    """(rdf.yaml as the zip holds it, README.md, the test output) of the package of ``ckpt``, validated by
    bioimageio.spec (no weights but the state dict: no ONNX or TorchScript export)."""
    from unet_train.export.bioimageio import PackageInfo, build_package, raw_to_nchw
    from unet_train.export.model import load_export_model
    from unet_train.export.package import save_package

    exported = load_export_model(ckpt)
    raw = np.random.default_rng(0).integers(0, 256, (40, 48)).astype(np.uint8)
    info = PackageInfo(name="tiny model", description="a test", authors=[{"name": "t"}], class_names=class_names)
    (folder / "pkg").mkdir(parents=True)
    rdf = build_package(exported, raw_to_nchw(raw), folder / "pkg", info, {}, None)
    zip_path = save_package(rdf, folder / "pkg", folder / "tiny.bioimageio.zip")
    with zipfile.ZipFile(zip_path) as archive:
        saved = YAML(typ="safe").load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
    return saved, readme, np.load(folder / "pkg" / "test_output.npy")


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_rdf_records_the_post_processing_the_checkpoint_holds(tmp_path, target):
    ckpt = instance_checkpoint(tmp_path / "best.pt", target)
    rdf, readme, prob = package(ckpt, tmp_path)
    stored = load_checkpoint(ckpt)["postprocess"]
    record = rdf["config"]["unet_train"]["instances"]
    assert record["params"] == stored["params"] == TUNED[target]
    assert record["tuned"] == {"metric": "ap_50", "score": 0.8125, "untuned_score": 0.5, "grid_points_tried": 45,
                               "grid_points": 150}  # fmt: skip
    assert record["representation"] == target
    assert record["method"] == ("connected_components" if target == "affinities" else "seeded_watershed")
    names = {
        "boundary": ["background", "interior", "boundary"],
        "distance": ["foreground", "distance"],
        "affinities": ["foreground", "affinity_-1_0", "affinity_0_-1", "affinity_-2_0"],
    }[target]
    output = rdf["outputs"][0]
    assert output["axes"][1]["channel_names"] == record["output_channels"] == names
    operation = "softmax over" if target == "boundary" else "sigmoid per channel"
    assert output["description"] == f"{operation}: {', '.join(names)}; instance step: config.unet_train"
    probabilities = "softmax" if target == "boundary" else "sigmoid"
    assert [p["id"] for p in output["postprocessing"]] == [probabilities, "ensure_dtype"]
    maps = {
        "boundary": {"interior": 1, "boundary": 2},
        "distance": {"foreground": 0, "distance": 1},
        "affinities": {"foreground": 0, "affinities": [1, 2]},  # the face offsets join; [-2, 0] is context
    }[target]
    assert record["maps"] == maps
    if target == "affinities":
        assert record["affinity_offsets"] == [[-1, 0], [0, -1], [-2, 0]]
        assert record["joined_offsets"] == [[-1, 0], [0, -1]]
    else:
        assert "affinity_offsets" not in record

    # the README: one sentence on why, the table of the same values, and a how-to that gives unet-predict's labels
    assert "bioimage.io's postprocessing operations act pixel by pixel and cannot express" in readme
    section = readme.split("# Instances", 1)[1].split("# Validation", 1)[0]
    table = dict(re.findall(r"^\| `(\w+)` \| ([\d.]+) \|", section, flags=re.M))
    assert table == {name: str(value) for name, value in TUNED[target].items()}
    tuned = "tuned after training for ap_50 on the validation images: 0.8125 (the untuned defaults scored 0.5000; 45 of"
    assert f"{tuned} 150 grid points tried)." in section
    assert f"unet-predict ckpt={ckpt.name} input=image.tif" in section
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code is not None
    namespace: dict = {"prob": prob[0]}
    exec(code.group(1), namespace)  # the README's own snippet, on the package's test output
    offsets = [tuple(o) for o in record.get("affinity_offsets", [])] or None
    expected = pp.instances(target, prob[0], TUNED[target], offsets)
    np.testing.assert_array_equal(namespace["labels"], expected)


def test_a_checkpoint_without_tuning_records_the_defaults_as_untuned(tmp_path):
    rdf, readme, _ = package(instance_checkpoint(tmp_path / "best.pt", "distance", tuned=False), tmp_path)
    record = rdf["config"]["unet_train"]["instances"]
    assert record["params"] == pp.defaults("distance") == {"threshold": 0.5, "seed_threshold": 0.5, "min_size": 1}
    assert record["tuned"] is None
    assert "They are unet-train's defaults: the checkpoint holds no tuned parameters." in readme


def test_a_checkpoints_crafted_tuning_fields_are_not_copied_into_the_package(tmp_path):
    """The parameters are checked as on loading; the fields beside them (what they were tuned for) are copied only
    as what tuning writes."""
    ckpt = instance_checkpoint(tmp_path / "best.pt", "boundary", metric="$(rm -rf ~)", score=math.nan,
                               default_score=7, tried=True, total="150")  # fmt: skip
    rdf, readme, _ = package(ckpt, tmp_path)
    record = rdf["config"]["unet_train"]["instances"]
    assert record["params"] == TUNED["boundary"] and record["tuned"] == {}
    assert "rm -rf" not in readme and "They were tuned after training on the validation images." in readme


def test_given_class_names_name_the_channels_of_the_record_too(tmp_path):
    ckpt = instance_checkpoint(tmp_path / "best.pt", "boundary")
    rdf, _, _ = package(ckpt, tmp_path, class_names=["bg", "nucleus", "edge"])
    assert rdf["config"]["unet_train"]["instances"]["output_channels"] == ["bg", "nucleus", "edge"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["bg", "nucleus", "edge"]


@pytest.mark.parametrize("bad", ["nucleus\n# Hacked", "a | b", "`code`", " "])
def test_class_names_that_would_change_the_readmes_markdown_are_refused_in_one_line(tmp_path, bad):
    from unet_train.errors import ConfigError

    ckpt = instance_checkpoint(tmp_path / "best.pt", "boundary")
    with pytest.raises(ConfigError) as refused:
        package(ckpt, tmp_path, class_names=["bg", bad, "edge"])
    assert str(refused.value) == (
        f"bioimageio.class_names: {bad!r} is not a name of one line of text (no line breaks, '|' or '`'); give "
        "plain names, e.g. [background, nucleus]."
    )
    assert not (tmp_path / "pkg" / "README.md").exists()


@pytest.mark.parametrize("classes", [2, 3])
def test_a_model_of_classes_is_packaged_as_before(tmp_path, classes):
    """No config, the same output description and channel names, no Instances section."""
    overrides = ["model.base_channels=4", "model.depth=2", f"data.num_classes={classes}"]
    ckpt = make_checkpoint(tmp_path / "best.pt", overrides)
    rdf, readme, _ = package(ckpt, tmp_path)
    output = rdf["outputs"][0]
    assert "config" not in rdf
    assert output["description"] == ("sigmoid of each logit" if classes == 2 else "softmax over the classes")
    assert output["axes"][1]["channel_names"] == (["foreground"] if classes == 2 else ["class0", "class1", "class2"])
    assert "# Instances" not in readme and "config.unet_train" not in readme


@pytest.mark.slow
def test_an_instance_package_passes_the_bioimageio_model_test_and_keeps_its_config(tmp_path):
    pytest.importorskip("bioimageio.core", reason='needs pip install "unet-train[export]"')
    from bioimageio.spec import InvalidDescr, load_description
    from skimage import io as skio

    from unet_train.export.cli import run_export

    from ..conftest import compose_config

    ckpt = instance_checkpoint(tmp_path / "best.pt", "affinities")
    image = tmp_path / "test.png"
    skio.imsave(image, np.random.default_rng(0).integers(0, 256, (42, 50)).astype(np.uint8), check_contrast=False)
    cfg = compose_config([f"ckpt={ckpt}", f"output={tmp_path / 'out'}", "format=bioimageio",
                          f"bioimageio.test_image={image}"], config_name="export")  # fmt: skip
    result = run_export(cfg)
    assert result["bioimageio_test"] == {"pytorch_state_dict": "passed", "torchscript": "passed", "onnx": "passed"}
    descr = load_description(result["package"])
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    record = descr.config.model_extra["unet_train"]["instances"]
    assert record["params"] == TUNED["affinities"] and record["joined_offsets"] == [[-1, 0], [0, -1]]
    assert "instance-segmentation" in descr.tags and "instance segmentation (affinities maps" in descr.description


def test_the_output_description_counts_the_affinities_where_their_names_pass_bioimageios_128_characters():
    from unet_train.export.instances import output_description

    offsets = [[-1, 0], [0, -1], [-3, 0], [0, -3], [-9, 0], [0, -9], [-27, 0], [0, -27]]
    names = ["foreground", *("affinity_" + "_".join(map(str, o)) for o in offsets)]
    assert output_description({"output_channels": names[:5]}, True) == (
        "sigmoid per channel: foreground, affinity_-1_0, affinity_0_-1, affinity_-3_0, affinity_0_-3; "
        "instance step: config.unet_train"
    )  # the default offsets: 123 characters
    assert output_description({"output_channels": names, "affinity_offsets": offsets}, True) == (
        "sigmoid per channel: foreground, then 8 affinities; instance step: config.unet_train"
    )
    long = ["the background of the whole image", "the interior of each nucleus", "the boundary between nuclei x" * 2]
    assert output_description({"output_channels": long}, False) == (
        "softmax over: the background of the whole image, then 2 more channels; instance step: config.unet_train"
    )
    assert output_description({"output_channels": ["b" * 100, "i", "e"]}, False) == (
        "softmax over: 3 channels; instance step: config.unet_train"
    )
