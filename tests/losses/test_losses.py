"""Losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_train.losses import BCEDiceLoss, BCELoss, DiceLoss, FocalLoss, TverskyLoss, WeightedBCELoss, border_weight_map

LOGITS = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])  # (1, 1, 2, 2)
TARGET = torch.tensor([[[0, 1], [1, 1]]])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bce_by_hand():
    p = [sigmoid(v) for v in (0.0, 2.0, -1.0, 3.0)]
    t = [0, 1, 1, 1]
    expected = -sum(ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip(p, t)) / 4
    assert BCELoss()(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    p = [sigmoid(v) for v in (0.0, 2.0, -1.0, 3.0)]
    t = [0, 1, 1, 1]
    inter = sum(pi * ti for pi, ti in zip(p, t))
    expected = 1 - (2 * inter + 1) / (sum(p) + sum(t) + 1)
    assert DiceLoss(smooth=1.0)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert BCEDiceLoss()(LOGITS, TARGET).item() == pytest.approx(BCELoss()(LOGITS, TARGET).item() + expected, rel=1e-6)


def test_tversky_with_equal_weights_is_dice():
    tversky = TverskyLoss(0.5, 0.5, smooth=0.0)(LOGITS, TARGET).item()
    assert tversky == pytest.approx(DiceLoss(smooth=0.0)(LOGITS, TARGET).item(), rel=1e-6)


def test_focal_gamma_zero_is_bce():
    assert FocalLoss(gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(BCELoss()(LOGITS, TARGET).item(), rel=1e-6)


def test_multiclass_losses_use_softmax():
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 1]]])
    assert BCELoss()(logits, target).item() == pytest.approx(math.log(3), rel=1e-6)
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss(smooth=0.0)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_border_weight_map_by_hand():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:15, 2:13] = 1
    mask[5:15, 15:28] = 1  # two objects, columns 13 and 14 between them
    weights = border_weight_map(mask, w0=10, sigma=5)
    f = mask.mean()
    w_background, w_object = 0.5 / (1 - f), 0.5 / f  # class weights (their pixel mean is already 1)
    # Gap pixel (10, 13): 1 px to the left object, 2 px to the right one.
    assert weights[10, 13] == pytest.approx(w_background + 10 * math.exp(-((1 + 2) ** 2) / 50), rel=1e-5)
    # Corner (0, 0): sqrt(5^2 + 2^2) and sqrt(5^2 + 15^2) away.
    d1, d2 = math.hypot(5, 2), math.hypot(5, 15)
    assert weights[0, 0] == pytest.approx(w_background + 10 * math.exp(-((d1 + d2) ** 2) / 50), rel=1e-5)
    assert weights[10, 5] == pytest.approx(w_object, rel=1e-6)  # inside an object: class weight only


def test_weighted_bce_is_finite_and_positive():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :, 7:9] = 1  # a membrane between two cells
    loss = WeightedBCELoss()(torch.zeros(1, 1, 16, 16), target)
    assert math.isfinite(loss.item()) and loss.item() > 0
