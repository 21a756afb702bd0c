"""Plans of sparse objects, which the rule gives the affinities target: what the plan writes must train as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from tests.conftest import compose_config
from tests.data.volume_folder import write_tiff
from unet_train.build import build_data
from unet_train.plan.planner import apply_plan, load_plan, make_plan

SPACING = (2.0, 1.0, 1.0)


def write_thin_discs(root: Path, count: int, planes: int = 3, size: int = 48) -> Path:
    """``count`` stacks of ``planes`` planes, each with three discs of radius 9 through every plane (ids 1-3, 33 %
    of the voxels, none touching): a ball of their volume is 11.3 voxels wide, so the rule says sparse objects."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        labels = np.zeros((planes, size, size), dtype=np.uint16)
        for k, (cy, cx) in enumerate(((12, 12), (12, 35), (35, 24))):
            labels[:, np.hypot(yy - cy, xx - cx) <= 9] = k + 1
        image = np.clip(30 + 150 * (labels > 0) + rng.normal(0, 5, labels.shape), 0, 255).astype(np.uint8)
        write_tiff(root / "images" / f"v{i}.tif", image, SPACING)
        write_tiff(root / "masks" / f"v{i}.tif", labels, SPACING)
    return root


def test_a_plan_of_sparse_objects_in_stacks_of_three_planes_gets_offsets_that_fit_its_crop(tmp_path):
    """The default offsets reach 3 voxels along z; a crop of 3 planes holds no such pair, so the planned run was
    refused at its first step ("data.affinity_offsets holds [-3, 0, 0] ... keep offsets under 3 px")."""
    root = write_thin_discs(tmp_path / "thin", 3)
    cfg = compose_config(["data=volumes", f"data.root={root}", "data.labels=instances", "data.num_workers=0"])
    out = tmp_path / "plan.yaml"
    fp = make_plan(cfg.data, 60.0, "cpu", out, measure=False)
    assert fp["target"] == "affinities" and "sparse objects" in fp["target_reason"]
    text = out.read_text()
    planned = yaml.safe_load(text)
    assert planned["data"]["target"] == "affinities" and planned["data"]["patch_size"] == [3, 48, 48]
    assert planned["data"]["affinity_offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0], [0, 0, -3]]
    assert "the default offsets but [-3, 0, 0], which reach as far as the crop 3x48x48 (z y x) or beyond" in text
    merged = apply_plan(cfg, load_plan(out), [])
    item = build_data(merged.data).dataset("train")[0]  # refused here before
    assert tuple(item["affinities"].shape) == (5, 3, 48, 48)


def test_a_2d_plan_keeps_the_default_offsets_unless_its_crop_is_as_short_as_one():
    from unet_train.plan.derive import derive_plan

    from .test_derive import CPU, fingerprint

    def planned(side):
        fp = {**fingerprint(side=side), "labels": "instances", "target": "affinities", "target_reason": "sparse"}
        return {c.key: c.value for c in derive_plan(fp, CPU, 60.0)}

    assert "data.affinity_offsets" not in planned(64)  # the data config's defaults fit a crop of 64
    tiny = planned(3)  # a folder holding an image three pixels high: a crop of 2, depth 1
    assert (tiny["data.patch_size"], tiny["data.affinity_offsets"]) == (2, [[-1, 0], [0, -1]])
    assert "data.affinity_offsets" not in {c.key for c in derive_plan(fingerprint(side=3), CPU, 60.0)}  # classes


def write_sparse_discs(root: Path, count: int = 4, size: int = 48) -> Path:
    """``count`` images of three discs of radius 7 apart (ids 1-3 in uint16 TIFFs, 19 % of the pixels)."""
    import tifffile
    from skimage import io as skio

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        ids = np.zeros((size, size), np.uint16)
        for k, (cy, cx) in enumerate(((12, 12), (12, 35), (35, 24))):
            ids[np.hypot(yy - cy - i % 2, xx - cx) <= 7] = k + 1
        skio.imsave(root / "images" / f"s{i}.png", ((ids > 0) * 200).astype(np.uint8), check_contrast=False)
        tifffile.imwrite(root / "masks" / f"s{i}.tif", ids)
    return root


def test_a_target_typed_after_a_plan_of_affinities_trains_with_its_own_classes(tmp_path):
    """The plan writes data.num_classes=2 (the affinities target's classes); data.target=boundary typed on the
    command line was refused for it ("data.num_classes=2 does not fit ... data.target=boundary")."""
    root = write_sparse_discs(tmp_path / "d")
    base = ["data=folder", f"data.root={root}", "data.labels=instances", "data.num_workers=0"]
    out = tmp_path / "plan.yaml"
    assert make_plan(compose_config(base).data, 60.0, "cpu", out, measure=False)["target"] == "affinities"
    for typed, target, classes in (
        (["data.target=boundary"], "boundary", 3),
        (["data.target=distance"], "distance", 2),
        ([], "affinities", 2),
    ):
        merged = apply_plan(compose_config([*base, *typed]), load_plan(out), typed)
        data = build_data(merged.data)
        assert (data.instance_target, data.num_classes) == (target, classes)
    typed = ["data.target=boundary", "data.num_classes=2"]  # both typed: the command line's, refused as before
    merged = apply_plan(compose_config([*base, *typed]), load_plan(out), typed)
    assert merged.data.num_classes == 2


def test_a_target_typed_for_the_plan_is_the_planned_one_with_the_rules_choice_in_its_reason(tmp_path):
    """unet-plan data.target=boundary (or plan=auto with it) wrote data.target=affinities, the rule's choice."""
    root = write_sparse_discs(tmp_path / "d")
    typed = ["data.target=boundary"]
    cfg = compose_config(["data=folder", f"data.root={root}", "data.labels=instances", "data.num_workers=0", *typed])
    out = tmp_path / "plan.yaml"
    fp = make_plan(cfg.data, 60.0, "cpu", out, measure=False, typed=typed)
    assert (fp["target"], fp["num_classes"]) == ("boundary", 3)
    assert fp["target_reason"].startswith(
        "data.target=boundary as typed on the command line (the rule chose affinities: "
    )
    planned = yaml.safe_load(out.read_text())["data"]
    assert (planned["target"], planned["num_classes"]) == ("boundary", 3)
    assert make_plan(cfg.data, 60.0, "cpu", out, measure=False)["target"] == "affinities"  # not typed: the rule's
