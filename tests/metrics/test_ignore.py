"""Ignored pixels count in no metric: Dice, IoU, pixel error, HD95, V-Rand/V-Info, and unet-eval's rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_train.engine.evaluate import evaluate
from unet_train.engine.report import EvalReport
from unet_train.engine.runtime import make_runtime
from unet_train.labels import IGNORE_INDEX
from unet_train.losses import BCEDiceLoss
from unet_train.metrics import confusion_counts, hd95, overlap_scores, slice_scores
from unet_train.metrics.distance import contour

I = IGNORE_INDEX  # noqa: E741


def scores(pred: list, target: list, num_classes: int = 2) -> dict[str, float]:
    counts = confusion_counts(torch.tensor([pred]), torch.tensor([target]), num_classes)
    return {k: float(v[0]) for k, v in overlap_scores(counts).items()}


def test_overlap_by_hand_over_the_labelled_pixels():
    pred = [[1, 1, 0], [0, 1, 0]]
    target = [[1, I, 0], [I, 1, 1]]
    # Labelled: (0,0) TP, (0,2) TN, (1,1) TP, (1,2) FN. The predictions on the two ignored pixels do not count.
    got = scores(pred, target)
    assert got["dice"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert got["iou"] == pytest.approx(2 / 3)
    assert got["pixel_error"] == pytest.approx(1 / 4)
    assert scores([[1, 0, 0], [1, 1, 0]], target) == got  # other predictions there: the same numbers


def test_overlap_multiclass_by_hand():
    pred = [[2, 1, 0, 2]]
    target = [[2, I, 1, I]]
    got = scores(pred, target, num_classes=3)
    # Labelled: (0,0) class 2 right, (0,2) class 1 predicted 0. Class 1: TP 0, FN 1 -> Dice 0; class 2: Dice 1.
    assert (got["dice_1"], got["dice_2"], got["dice"]) == (0.0, 1.0, 0.5)
    assert got["pixel_error"] == pytest.approx(1 / 2)


def test_an_image_without_labelled_pixels_scores_no_error():
    got = scores([[1, 0]], [[I, I]])
    assert got == {"dice": 1.0, "iou": 1.0, "pixel_error": 0.0}


def test_contour_does_not_run_along_an_ignored_region():
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    valid = np.ones((5, 5), bool)
    valid[:, 3:] = False  # columns 3 and 4 unlabelled
    # The labelled part of the square is columns 1-2; pixel (2, 2) borders only the mask and the ignored column.
    expected = mask & valid
    expected[2, 2] = False
    np.testing.assert_array_equal(contour(mask & valid, valid), expected)
    assert contour(mask & valid)[2, 2]  # without valid, the cut is a contour


def test_hd95_ignores_predictions_and_truth_in_ignored_regions():
    truth = np.zeros((40, 60), bool)
    truth[:, 10:20] = True  # a band from the top edge to the bottom edge
    pred = truth.copy()
    pred[5:15, 40:46] = True  # a false blob ...
    valid = np.ones_like(truth)
    valid[:, 35:] = False  # ... inside the unlabelled region
    assert hd95(pred, truth) > 20
    assert hd95(pred, truth, valid) == 0.0
    flipped = truth.copy()
    flipped[:, 35:] = ~flipped[:, 35:]  # other ground truth there: the same
    assert hd95(pred, flipped, valid) == 0.0
    shifted = np.zeros_like(truth)
    shifted[:, 12:22] = True  # the band 2 px to the right: every contour pixel is 2 px from the other's
    assert hd95(shifted, truth, valid) == pytest.approx(2.0)


def test_vrand_vinfo_score_only_labelled_pixels():
    # Two cells split by a vertical membrane (column 8); the prediction adds a membrane across
    # the right cell in row 2, which is unlabelled (rows 0-3), and so splits that cell.
    truth_cells = np.ones((16, 16), bool)
    truth_cells[:, 8] = False
    prob = np.where(truth_cells, 0.0, 1.0)
    prob[2, 9:] = 1.0
    valid = np.ones_like(truth_cells)
    valid[:4] = False
    with_valid = slice_scores(prob, truth_cells, thresholds=(0.5,), valid=valid)
    np.testing.assert_allclose(with_valid, [[1.0, 1.0]])
    assert (slice_scores(prob, truth_cells, thresholds=(0.5,)) < 1.0).all()  # scored, the blob is an error
    flipped = truth_cells.copy()
    flipped[:4] = ~flipped[:4]
    np.testing.assert_array_equal(slice_scores(prob, flipped, thresholds=(0.5,), valid=valid), with_valid)


class ImageAsLogits(torch.nn.Module):
    """A 'model' whose logits are its input image scaled: the prediction is whatever the image says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8 * (x - 0.5)


def test_evaluation_and_its_per_image_rows_ignore_unlabelled_pixels():
    g = torch.Generator().manual_seed(0)
    truth = (torch.rand(3, 24, 24, generator=g) > 0.6).long()
    image = torch.where(torch.rand(3, 24, 24, generator=g) > 0.2, truth.float(), 1 - truth.float())
    valid = torch.ones(3, 24, 24, dtype=torch.bool)
    valid[:, :, :6] = False
    valid[1, 10:14] = False
    target = torch.where(valid, truth, IGNORE_INDEX)
    other = torch.where(valid, image, torch.rand(3, 24, 24, generator=g))  # other predictions on ignored pixels
    runtime = make_runtime("cpu", "32", False, deterministic=False)
    names = ["a", "b", "c"]
    results = []
    for images in (image, other):
        batches = [
            {"image": images[i : i + 2, None], "mask": target[i : i + 2], "name": names[i : i + 2]} for i in (0, 2)
        ]
        report = EvalReport(2)
        result = evaluate(ImageAsLogits(), batches, runtime, 2, loss_fn=BCEDiceLoss(), on_batch=report.on_batch)
        report.finish(result)
        results.append(result)
    assert results[0].per_image == results[1].per_image
    assert results[0].metrics == results[1].metrics
    assert {"loss", "dice", "pixel_error", "vrand", "vinfo", "hd95"} <= set(results[0].metrics)
    # Against the labelled pixels counted by hand.
    pred = (image > 0.5).long()
    for i, row in enumerate(results[0].per_image):
        keep = valid[i]
        p, t = pred[i][keep], truth[i][keep]
        tp, fp, fn = (
            int(((p == 1) & (t == 1)).sum()),
            int(((p == 1) & (t == 0)).sum()),
            int(((p == 0) & (t == 1)).sum()),
        )
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["pixel_error"] == pytest.approx(float((p != t).float().mean()))
        assert {"vrand", "vinfo", "hd95"} <= set(row)
