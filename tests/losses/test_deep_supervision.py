"""DeepSupervisionLoss against sums computed by hand, and its nearest-neighbour target resizing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from unet_train.errors import ConfigError
from unet_train.losses import BCELoss, DeepSupervisionLoss, halving_weights
from unet_train.losses.deep_supervision import resize_target


def bce_by_hand(logits: list[float], labels: list[int]) -> float:
    """Mean of -[t log s(z) + (1 - t) log(1 - s(z))] over the pixels."""
    terms = []
    for z, t in zip(logits, labels, strict=True):
        p = 1 / (1 + math.exp(-z))
        terms.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
    return sum(terms) / len(terms)


def test_default_weights_halve_per_level_and_sum_to_one():
    assert halving_weights(1) == [1.0]
    assert halving_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    weights = halving_weights(5)
    assert sum(weights) == pytest.approx(1.0)
    assert [b / a for a, b in itertools.pairwise(weights)] == pytest.approx([0.5] * 4)


def test_loss_equals_the_weighted_sum_computed_by_hand():
    target = torch.tensor([[[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]]])  # 1 x 4 x 4
    full = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, -0.5, 0.25, -2.0], [3.0, 0.0, -1.0, 1.0], [0.0, 2.0, -3.0, 0.5]])
    half = torch.tensor([[2.0, -1.0], [-0.5, 1.0]])
    outputs = [full.view(1, 1, 4, 4), half.view(1, 1, 2, 2)]
    # Nearest resizing by 1/2 keeps the top-left pixel of every 2x2 block: rows/cols 0 and 2.
    half_labels = [1, 0, 1, 0]
    expected_full = bce_by_hand(full.flatten().tolist(), target.flatten().tolist())
    expected_half = bce_by_hand(half.flatten().tolist(), half_labels)

    loss = DeepSupervisionLoss(BCELoss(), weights=[0.75, 0.25])(outputs, target)
    assert loss.item() == pytest.approx(0.75 * expected_full + 0.25 * expected_half, rel=1e-6)

    default = DeepSupervisionLoss(BCELoss())(outputs, target)
    assert default.item() == pytest.approx(2 / 3 * expected_full + 1 / 3 * expected_half, rel=1e-6)


def test_a_single_tensor_is_scored_by_the_wrapped_loss_alone():
    logits = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    target = torch.tensor([[[1, 0], [0, 1]]])
    loss = DeepSupervisionLoss(BCELoss(), weights=[0.5, 0.5])(logits, target)
    assert loss.item() == pytest.approx(bce_by_hand([1.0, -2.0, 0.5, 0.0], [1, 0, 0, 1]), rel=1e-6)


def test_target_resizing_keeps_labels_integral():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 7])[torch.randint(0, 4, (2, 37, 45))]
    for size in [(19, 23), (10, 12), (5, 6), (37, 45)]:
        resized = resize_target(labels, size)
        assert resized.shape == (2, *size) and resized.dtype == torch.long
        assert set(resized.unique().tolist()) <= {0, 1, 2, 7}
    # Halving an even grid picks the top-left pixel of each 2x2 block, copied unchanged.
    grid = torch.arange(64).view(1, 8, 8)
    assert torch.equal(resize_target(grid, (4, 4)), grid[:, ::2, ::2])
    # A float binary mask stays binary, and a channel dimension is kept.
    mask = (torch.rand(1, 1, 9, 9) > 0.5).float()
    small = resize_target(mask, (5, 5))
    assert small.shape == (1, 1, 5, 5) and set(small.unique().tolist()) <= {0.0, 1.0}


def test_multiclass_outputs_of_any_size_are_scored_against_resized_labels():
    target = torch.randint(0, 3, (2, 37, 45))
    outputs = [torch.zeros(2, 3, 37, 45), torch.zeros(2, 3, 19, 23), torch.zeros(2, 3, 10, 12)]
    loss = DeepSupervisionLoss(BCELoss())(outputs, target)
    # Uniform logits: cross-entropy is log(3) at every scale, so any weights summing to 1 give log(3).
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)


def test_weights_that_do_not_match_the_outputs_are_refused():
    outputs = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    message = r"deep_supervision_weights=\[0.5, 0.5\] has 2 entries but the model returns 3 outputs"
    with pytest.raises(ConfigError, match=message):
        DeepSupervisionLoss(BCELoss(), weights=[0.5, 0.5])(outputs, target)


def test_pixel_weights_are_resized_with_the_target_for_each_head():
    from unet_train.losses import WeightedBCELoss

    torch.manual_seed(0)
    target = (torch.rand(2, 16, 16) < 0.4).long()
    weight = torch.rand(2, 16, 16) + 0.5
    outputs = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8)]
    inner = WeightedBCELoss()
    got = DeepSupervisionLoss(inner, [0.75, 0.25])(outputs, target, weight=weight)
    half_target, half_weight = target[:, ::2, ::2], weight[:, ::2, ::2]  # nearest: every other pixel
    expected = 0.75 * inner(outputs[0], target, weight=weight) + 0.25 * inner(
        outputs[1], half_target, weight=half_weight
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert DeepSupervisionLoss(inner).sample_weight == inner.sample_weight


@pytest.mark.parametrize("factors", [[[2, 2, 2], [2, 2, 2]], [[1, 2, 2], [2, 2, 2]]])
def test_a_3d_model_s_heads_are_scored_against_targets_resized_on_every_axis(factors):
    from unet_train.losses import DiceLoss
    from unet_train.models import UNet

    torch.manual_seed(0)
    model = UNet(1, 3, base_channels=2, depth=2, deep_supervision=True, spatial_dims=3, pool_factors=factors)
    outputs = model(torch.randn(2, 1, 8, 12, 12))
    target = torch.randint(0, 3, (2, 8, 12, 12))
    assert outputs[1].shape[2:] == (8 // factors[0][0], 6, 6)
    # the label volume is resized on z too (it was resized on y and x only), every other voxel
    half = resize_target(target, outputs[1].shape[2:])
    assert torch.equal(half, target[:, :: factors[0][0], ::2, ::2])
    loss = DeepSupervisionLoss(DiceLoss(), [0.5, 0.5])(outputs, target)
    expected = 0.5 * DiceLoss()(outputs[0], target) + 0.5 * DiceLoss()(outputs[1], half)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
