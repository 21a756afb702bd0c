"""The plan's instance target: object statistics measured by hand, the rule on hand-made statistics."""

from __future__ import annotations

import numpy as np
import pytest

from unet_train.plan.derive import derive_plan
from unet_train.plan.objects import choose_target, object_fingerprint

from .test_derive import CPU, fingerprint


@pytest.mark.parametrize("big_id", [7, 70000])  # ids with gaps counted as they are, or renumbered first
def test_object_statistics_by_hand(big_id):
    """Image 1: two touching 4x4 squares (16 px each) and a lone pixel; image 2: one 6x6 square (36 px), with an
    unlabelled strip (255) that is neither object nor counted pixel."""
    a = np.zeros((10, 10), dtype=np.float32)
    a[0:4, 0:4], a[0:4, 4:8], a[9, 9] = 1, 2, 3
    b = np.zeros((10, 10), dtype=np.float32)
    b[2:8, 2:8] = big_id
    b[:, 9] = 255
    stats = object_fingerprint([a, b])
    assert stats["objects"] == 4 and stats["objects_per_image"] == 2
    assert stats["median_area"] == 16  # of 1, 16, 16, 36
    assert stats["median_diameter"] == pytest.approx(2 * np.sqrt(16 / np.pi))
    assert stats["touching_share"] == pytest.approx(2 / 4)
    assert stats["object_share"] == pytest.approx((33 + 36) / (100 + 90))


def stats(diameter=20.0, touching=0.1, share=0.3):
    return {"objects": 100, "objects_per_image": 10, "median_area": np.pi * diameter**2 / 4,
            "median_diameter": diameter, "touching_share": touching, "object_share": share}  # fmt: skip


@pytest.mark.parametrize(
    ("case", "target", "said"),
    [
        (stats(), "affinities", "sparse objects (< 50 % of the pixels), mostly apart"),  # typical nuclei
        (stats(share=0.12), "affinities", "foreground (learnt as a semantic mask)"),  # DSB 2018's nuclei
        (stats(share=0.5), "boundary", "objects mostly apart across thin background"),  # the threshold itself
        (stats(touching=0.0, share=0.78), "boundary", "widens the gaps"),  # ISBI 2012's cells
        (stats(touching=0.6), "distance", "touching often"),  # crowded, large cells
        (stats(diameter=6.0, touching=0.6), "boundary", "objects under 10 px"),  # touching but tiny
        (stats(touching=0.0, share=0.95), "affinities", "dense, space-filling labels (>= 85 %)"),  # EM
        (stats(touching=0.0, share=0.85), "affinities", "foreground + affinities"),  # the threshold itself
    ],
)
def test_the_rule_on_hand_made_statistics(case, target, said):
    chosen, why = choose_target(case)
    assert chosen == target and said in why
    assert f"median diameter {case['median_diameter']:.1f} px" in why  # the measured figures are stated


def test_labels_without_any_object_get_the_default_target_and_a_warning(caplog):
    empty = object_fingerprint([np.zeros((16, 16), np.int64), np.full((8, 8), 255)])
    assert empty["objects"] == 0
    with caplog.at_level("WARNING", logger="unet_train.plan.objects"):
        target, why = choose_target(empty)
    assert target == "boundary"
    assert why == (
        "no object in the training labels (every id is 0 or unlabelled): nothing to choose a target from; "
        "background / interior / boundary, the default. Check data.masks_dir and data.labels"
    )
    assert caplog.messages == [f"The plan's target: {why}."]


def test_the_plan_writes_the_chosen_target_and_its_reason():
    fp = fingerprint(classes={"0": 0.6, "1": 0.4})
    target, why = choose_target(stats(touching=0.6))
    fp.update(labels="instances", target=target, target_reason=why)
    choice = next(c for c in derive_plan(fp, CPU, 600.0) if c.key == "data.target")
    assert (choice.value, choice.reason) == ("distance", why)


@pytest.mark.parametrize(
    ("rows", "target", "said"),
    [((4, 30), "distance", "touching often"), ((0, 12, 24, 36), "affinities", "dense, space-filling labels")],
)
def test_a_plan_of_large_touching_objects_trains_the_distance_or_affinities_target(tmp_path, rows, target, said):
    """Rows of touching 12x12 squares: the plan picks distance (two rows) or affinities (the image tiled with
    squares, as EM neurons fill it) and fingerprints its two classes."""
    import tifffile
    import yaml
    from skimage import io as skio

    from unet_train.plan.planner import make_plan

    from ..conftest import compose_config

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    for i in range(3):
        ids = np.zeros((48, 48), dtype=np.uint16)
        for r, top in enumerate(rows):  # four squares side by side in each row
            for k in range(4):
                ids[top : top + 12, k * 12 : (k + 1) * 12] = 4 * r + k + 1
        skio.imsave(tmp_path / "d" / "images" / f"s{i}.png", (ids > 0).astype(np.uint8) * 200, check_contrast=False)
        tifffile.imwrite(tmp_path / "d" / "masks" / f"s{i}.tif", ids)
    out = tmp_path / "plan.yaml"
    cfg = compose_config(["data=folder", f"data.root={tmp_path / 'd'}", "data.labels=instances"])
    fingerprint = make_plan(cfg.data, 60.0, "cpu", out, measure=False)
    assert fingerprint["target"] == target and set(fingerprint["classes"]) == ({"1"} if len(rows) == 4 else {"0", "1"})
    assert fingerprint["objects"]["touching_share"] == 1.0 and fingerprint["objects"]["median_area"] == 144
    text = out.read_text()
    planned = yaml.safe_load(text)["data"]
    assert (planned["labels"], planned["target"], planned["num_classes"]) == ("instances", target, 2)
    assert said in text  # the reason, with the measured figures, is the plan's comment
