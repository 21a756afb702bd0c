"""Metrics of volumes against hand-computed cases: HD95 in physical units, V-Rand/V-Info per section and in 3D,
Dice/IoU/pixel error per volume and per class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_train.engine.evaluate import EvalResult
from unet_train.engine.report import EvalReport, volume_spacing, volume_units
from unet_train.metrics import RandInfoSweep, confusion_counts, hd95, overlap_scores

SPACING = (4.0, 0.5, 0.5)  # z, y, x: sections 8x thicker than their pixels


def test_hd95_of_volumes_is_in_the_units_of_the_voxel_spacing():
    a, b = np.zeros((3, 4, 4), dtype=bool), np.zeros((3, 4, 4), dtype=bool)
    a[0, 0, 0], b[1, 1, 0] = True, True  # one voxel apart in z and one in y
    assert hd95(a, b) == pytest.approx(math.sqrt(2))  # voxels
    assert hd95(a, b, spacing=SPACING) == pytest.approx(math.sqrt(4.0**2 + 0.5**2))  # 4.0311...
    # Two whole planes: every voxel of one is 1 section from the other, 4.0 physical; shifted in y instead, 0.5
    plane_z0, plane_z1 = np.zeros((4, 6, 6), dtype=bool), np.zeros((4, 6, 6), dtype=bool)
    plane_z0[1], plane_z1[2] = True, True
    assert hd95(plane_z0, plane_z1, spacing=SPACING) == pytest.approx(4.0)
    rows_y0, rows_y1 = np.zeros((4, 6, 6), dtype=bool), np.zeros((4, 6, 6), dtype=bool)
    rows_y0[:, 2], rows_y1[:, 3] = True, True
    assert hd95(rows_y0, rows_y1, spacing=SPACING) == pytest.approx(0.5)
    # One mask empty: the volume's physical diagonal, sqrt((4*4)^2 + (6*0.5)^2 + (6*0.5)^2)
    assert hd95(plane_z0, np.zeros_like(plane_z0), spacing=SPACING) == pytest.approx(math.sqrt(16**2 + 3**2 + 3**2))
    with pytest.raises(ValueError, match="needs 3 positive sizes"):
        hd95(a, b, spacing=(1.0, 1.0))


# A column of 3 sections, 1x2 each, all one cell in the ground truth; the prediction puts a border over the
# whole middle section (boundary probability 1 there, 0 elsewhere).
TRUTH_CELLS = np.ones((3, 1, 2), dtype=bool)
BORDER = np.zeros((3, 1, 2))
BORDER[1] = 1.0


def test_vrand_vinfo_per_section_and_in_3d_are_distinct_figures_computed_by_hand():
    """Per section (the challenge): sections 0 and 2 are perfect (1, 1); section 1 is two singletons against one
    cell, Rand F 0 and V-Info 0 (the truth's entropy is 0): means 2/3 and 2/3.

    In 3D the cell of 6 voxels is cut in two (sections 0 and 2, 2 voxels each) and the middle section's voxels
    stay on the watershed line as singletons: pairs within a (truth, prediction) cell sum(n_ij^2) - n =
    (4 + 1 + 1 + 4) - 6 = 4, within the truth's cell 36 - 6 = 30, within the predicted ones 10 - 6 = 4: Rand
    precision 4/30, recall 4/4, F = 2 (4/30) / (34/30) = 4/17. V-Info: the truth's entropy is 0, so 0.
    """
    sections, volume = RandInfoSweep(thresholds=(0.5,)), RandInfoSweep(thresholds=(0.5,), suffix="_3d")
    sections.add_sections(BORDER, TRUTH_CELLS)
    volume.add(BORDER, TRUTH_CELLS, spacing=SPACING)
    assert sections.best() == pytest.approx(
        {"vrand": 2 / 3, "vrand_threshold": 0.5, "vinfo": 2 / 3, "vinfo_threshold": 0.5}
    )
    assert volume.best() == pytest.approx(
        {"vrand_3d": 4 / 17, "vrand_3d_threshold": 0.5, "vinfo_3d": 0.0, "vinfo_3d_threshold": 0.5}
    )


def test_dice_iou_and_pixel_error_are_per_volume_and_per_class():
    """Two 3-class volumes (2x2x2): volume 0 gets one class-1 voxel of 2 called class 2; volume 1 is perfect."""
    truth = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    truth[:, 0, 0, :] = 1  # 2 voxels of class 1
    truth[:, 1, 1, 1] = 2  # 1 voxel of class 2
    pred = truth.clone()
    pred[0, 0, 0, 1] = 2
    scores = overlap_scores(confusion_counts(pred, truth, 3))
    # volume 0: class 1 tp 1 fn 1 -> Dice 2/3, IoU 1/2; class 2 tp 1 fp 1 -> Dice 2/3, IoU 1/2; 1 of 8 wrong
    assert scores["dice_1"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores["iou_1"].tolist() == pytest.approx([1 / 2, 1.0])
    assert scores["dice_2"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores["iou_2"].tolist() == pytest.approx([1 / 2, 1.0])
    assert scores["dice"].tolist() == pytest.approx([2 / 3, 1.0])
    assert scores["pixel_error"].tolist() == pytest.approx([1 / 8, 0.0])


class _Case:
    def __init__(self, name: str, spacing: tuple[float, ...], unit: str | None) -> None:
        self.name, self.spacing, self.unit = name, spacing, unit


class _Volumes:
    def __init__(self, *cases: _Case) -> None:
        self.cases = list(cases)


def test_volume_spacing_names_the_unit_hd95_is_in():
    assert volume_spacing([np.zeros((4, 4))]) == ({}, "pixel")  # 2D images
    spacing, unit = volume_spacing(_Volumes(_Case("a", (2.0, 0.5, 0.5), "micrometer")))
    assert spacing == {"a": (2.0, 0.5, 0.5)} and unit == "micrometer"
    assert volume_spacing(_Volumes(_Case("a", (1.0, 1.0, 1.0), None)))[1] == "voxel"  # no spacing stated
    assert volume_spacing(_Volumes(_Case("a", (3.0, 1.0, 1.0), None)))[1] == "spacing unit"  # data.spacing, no unit
    assert volume_spacing(_Volumes(_Case("a", (1, 1, 1), "nanometer"), _Case("b", (1, 1, 1), None)))[1] == (
        "mixed units"
    )


def test_sections_of_volumes_are_scored_in_pixels_and_say_so():
    """2.5D scoring (each section a 2D image, named ``<volume>-z<index>``) measures HD95 in pixels: its unit is
    ``pixel``, not the volumes' millimetres (a CT's 0.8 mm pixels gave pixel figures labelled millimeter)."""
    from unet_train.data.sections import SectionDataset

    ct = _Case("ct0", (2.5, 0.8, 0.8), "millimeter")
    ct.shape = (4, 8, 8, 1)
    assert volume_spacing(SectionDataset([ct], context=1)) == ({}, "pixel")


def test_the_eval_report_scores_a_volume_per_section_in_3d_and_with_its_spacing():
    truth = np.zeros((3, 6, 6), dtype=np.int64)
    truth[1] = 1  # the positive (membrane) class fills the middle section
    logits = torch.full((1, 1, 3, 6, 6), -8.0)
    logits[0, 0, 2] = 8.0  # predicted one section too deep
    report = EvalReport(2, spacing={"vol": SPACING})
    report.on_batch({"name": ["vol"], "mask": torch.from_numpy(truth)[None]}, logits)
    result = EvalResult(metrics={}, per_image=[{"name": "vol"}])
    report.finish(result)
    assert result.metrics["hd95"] == pytest.approx(4.0)  # one section of 4.0 apart
    (row,) = result.per_image
    assert set(row) >= {"vrand", "vinfo", "vrand_3d", "vinfo_3d", "hd95"}
    sections, volume = RandInfoSweep(), RandInfoSweep(suffix="_3d")
    prob = torch.sigmoid(logits[0, 0]).numpy()
    sections.add_sections(prob, truth == 0)
    volume.add(prob, truth == 0, spacing=SPACING)
    assert result.metrics["vrand"] == sections.best()["vrand"]
    assert result.metrics["vrand_3d"] == volume.best()["vrand_3d"]
    assert result.metrics["vrand"] == 1.0 != result.metrics["vrand_3d"]  # each section alone is right; the 3D is not
    unscaled = EvalReport(2)  # a volume without a spacing is measured in voxels
    unscaled.on_batch({"name": ["vol"], "mask": torch.from_numpy(truth)[None]}, logits)
    assert unscaled.hd95 == [pytest.approx(1.0)]


def test_a_3d_run_may_monitor_the_3d_figures_and_a_2d_run_may_not():
    from unet_train.engine.validation import check_monitor
    from unet_train.errors import ConfigError

    check_monitor("val/vrand_3d", 2, spatial_dims=3)
    check_monitor("val/vrand", 2, spatial_dims=3)  # the per-section figure, as for 2D runs
    with pytest.raises(ConfigError, match="monitor='val/vrand_3d' is not a validation metric"):
        check_monitor("val/vrand_3d", 2)


def test_volumes_in_different_length_units_have_their_hd95_in_one_unit():
    """A TIFF stack in micrometres and a NIfTI in millimetres: the mean of their HD95 was of mixed numbers."""
    tiffs = [_Case("a", (2.0, 0.5, 0.5), "micrometer"), _Case("b", (2.0, 0.5, 0.5), "micrometer")]
    spacing, unit = volume_spacing(_Volumes(*tiffs, _Case("n", (0.002, 0.0005, 0.0005), "millimeter")))
    assert unit == "micrometer" and spacing["a"] == (2.0, 0.5, 0.5)
    assert spacing["n"] == pytest.approx((2.0, 0.5, 0.5))  # the millimetre volume in micrometres
    # A volume with no unit converts to none: the label says so and each row names its volume's own
    unknown = _Volumes(_Case("a", (2.0, 0.5, 0.5), "micrometer"), _Case("s", (3.0, 1.0, 1.0), None))
    assert volume_spacing(unknown) == ({"a": (2.0, 0.5, 0.5), "s": (3.0, 1.0, 1.0)}, "mixed units")
    assert volume_units(unknown) == {"a": "micrometer", "s": "spacing unit"}
