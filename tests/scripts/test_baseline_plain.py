"""scripts/baseline_plain.py scores its test images as unet-eval does, so the comparison table is like for like."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_train.metrics.overlap import confusion_counts, overlap_scores

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "baseline_plain.py"


def load_script():
    spec = importlib.util.spec_from_file_location("baseline_plain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hand_built_case():
    # Image a: class 1 predicted on 2 of its 4 pixels plus 2 wrong ones (Dice 0.5, IoU 1/3); image b: class 1
    # absent from truth and prediction (1 and 1). Per-image mean 0.75; pooled over both images 0.5.
    truth_a = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    pred_a = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    zeros = np.zeros((2, 4), dtype=int)
    dice, iou, pooled = load_script().score([pred_a, zeros], [truth_a, zeros], classes=2)
    assert dice == pytest.approx(0.75) and iou == pytest.approx((1 / 3 + 1) / 2) and pooled == pytest.approx(0.5)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_scores_equal_unet_evals(classes):
    rng = np.random.default_rng(classes)
    preds = [rng.integers(0, classes, (9, 11)) for _ in range(4)]
    truths = [rng.integers(0, classes, (9, 11)) for _ in range(4)]
    truths[1][truths[1] == 1] = 0  # a class absent from one image's truth...
    preds[1][preds[1] == 1] = 0  # ...and from its prediction
    dice, iou, _ = load_script().score(preds, truths, classes)
    counts = confusion_counts(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(truths)), classes)
    scores = overlap_scores(counts)
    assert dice == pytest.approx(scores["dice"].mean().item()) and iou == pytest.approx(scores["iou"].mean().item())


def test_distance_watershed_splits_touching_discs():
    # two discs of radius 8 whose centres are 14 px apart overlap in a neck: one component, two objects
    yy, xx = np.mgrid[:24, :40]
    discs = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 64) | ((yy - 12) ** 2 + (xx - 26) ** 2 <= 64)
    labels = load_script().distance_watershed(discs)
    assert labels.dtype == np.uint16 and set(np.unique(labels).tolist()) == {0, 1, 2}
    assert labels[12, 12] != labels[12, 26] and ((labels > 0) == discs).all()
