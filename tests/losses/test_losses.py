"""Losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_train.labels import IGNORE_INDEX
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


def whole_image_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Eq. 2 of the UNet paper the direct way: one whole-image distance transform per object."""
    from scipy import ndimage

    mask = mask > 0
    labels, n = ndimage.label(mask)
    f = mask.mean()
    class_weight = np.where(mask, 0.5 / f, 0.5 / (1 - f))
    class_weight = class_weight / class_weight.mean()
    d = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in range(1, n + 1)]), axis=0)
    return class_weight + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2)) * (~mask)


@pytest.mark.parametrize("seed", range(4))
def test_windowed_border_weight_map_equals_the_whole_image_computation(seed):
    """Distance transforms restricted to each object's window change no weight by more than ``tol``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((96, 80), dtype=bool)
    for _ in range(12):  # rectangles of random size, touching or apart, some at the image border
        y, x = rng.integers(0, 90), rng.integers(0, 74)
        mask[y : y + rng.integers(2, 20), x : x + rng.integers(2, 20)] = True
    mask[0, 0] = True  # a one-pixel object in the corner
    w0, sigma = (10.0, 5.0) if seed % 2 == 0 else (5.0, 8.0)
    expected = whole_image_weight_map(mask, w0, sigma)
    assert np.abs(border_weight_map(mask, w0, sigma, tol=1e-4) - expected).max() <= 1e-4
    assert np.abs(border_weight_map(mask, w0, sigma, tol=1e-9) - expected).max() <= 1e-5  # float32 rounding


def test_weighted_bce_uses_given_weights_and_computes_the_same_ones_itself():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((2, 24, 24)) < 0.3).long()
    logits = torch.randn(2, 1, 24, 24)
    loss = WeightedBCELoss(w0=10, sigma=5, object_class=0)
    weight = torch.from_numpy(np.stack([loss.sample_weight(m) for m in target.numpy()]))
    assert torch.equal(weight[0], torch.from_numpy(border_weight_map(target[0].numpy() == 0, 10, 5)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), target.float(), reduction="none")
    assert loss(logits, target, weight=weight).item() == pytest.approx((bce * weight).mean().item(), rel=1e-6)
    assert loss(logits, target).item() == pytest.approx(loss(logits, target, weight=weight).item(), rel=1e-6)
    assert loss(logits, target, weight=torch.ones(2, 24, 24)).item() == pytest.approx(bce.mean().item(), rel=1e-6)


def test_weighted_bce_of_a_labelled_image_is_the_same_beside_an_unlabelled_half():
    """Class frequencies and the weight normalisation count labelled pixels only (issue 24, item 11)."""
    rng = np.random.default_rng(5)
    labelled = np.ones((32, 32), dtype=np.int64)  # membrane (1) around cells (0)
    labelled[3:14, 3:14] = labelled[3:14, 16:29] = labelled[17:29, 4:27] = 0
    logits = torch.from_numpy(rng.normal(size=(1, 1, 32, 64)).astype(np.float32))
    wide = np.full((32, 64), IGNORE_INDEX, dtype=np.int64)
    wide[:, :32] = labelled
    loss = WeightedBCELoss(w0=10, sigma=5, object_class=0)
    alone = loss(logits[..., :32], torch.from_numpy(labelled)[None])
    beside = loss(logits, torch.from_numpy(wide)[None])
    assert beside.item() == pytest.approx(alone.item(), rel=1e-6)
    weights = loss.sample_weight(wide)
    assert np.allclose(weights[:, :32], loss.sample_weight(labelled), rtol=1e-6)
