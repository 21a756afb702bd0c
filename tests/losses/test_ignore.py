"""Ignored pixels (mask value IGNORE_INDEX) count in no loss term, for every loss and deep supervision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unet_train.labels import IGNORE_INDEX
from unet_train.losses import (
    BCEDiceLoss,
    BCELoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    WeightedBCELoss,
)
from unet_train.losses.deep_supervision import resize_target

LOSSES = {
    "bce": BCELoss,
    "bce_pos_weight": lambda: BCELoss(pos_weight=3.0),
    "dice": DiceLoss,
    "dice_background": lambda: DiceLoss(include_background=True),
    "bce_dice": BCEDiceLoss,
    "focal": FocalLoss,
    "focal_alpha": lambda: FocalLoss(alpha=0.25),
    "tversky": TverskyLoss,
    "weighted_bce": WeightedBCELoss,
}


def case(channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (2, C, 8, 8), labels (2, 8, 8) and a valid map with about a third of the pixels unlabelled."""
    g = torch.Generator().manual_seed(seed)
    classes = max(channels, 2)
    logits = torch.randn(2, channels, 8, 8, generator=g)
    labels = torch.randint(classes, (2, 8, 8), generator=g)
    valid = torch.rand(2, 8, 8, generator=g) > 0.33
    return logits, labels, valid


def with_ignored(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, labels, torch.full_like(labels, IGNORE_INDEX))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_change_neither_loss_nor_gradient(name, channels):
    loss_fn = LOSSES[name]()
    logits, labels, valid = case(channels)
    target = with_ignored(labels, valid)
    weight = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.5

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return loss_fn(x, target, weight=weight) if name == "weighted_bce" else loss_fn(x, target)

    x = logits.clone().requires_grad_(True)
    reference = loss_of(x)
    reference.backward()
    assert torch.isfinite(reference)
    # The logits of the ignored pixels are free: other values give the very same loss, and no gradient flows there.
    assert x.grad is not None and (x.grad.permute(0, 2, 3, 1)[~valid] == 0).all()
    assert (x.grad.permute(0, 2, 3, 1)[valid] != 0).any()
    changed = torch.where(valid.unsqueeze(1), logits, 20 * torch.randn_like(logits))
    assert loss_of(changed).item() == reference.item()


def pixels_only(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The valid pixels of (N, C, H, W) or (N, H, W) as a one-row image (1, C, 1, M) or (1, 1, M)."""
    if x.ndim == 4:
        return x.permute(1, 0, 2, 3)[:, valid].reshape(1, x.shape[1], 1, -1)
    return x[valid].reshape(1, 1, -1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_with_ignored_pixels_is_the_loss_of_the_labelled_pixels(name, channels):
    """Per-pixel means and the batch-wide Dice/Tversky sums are over the labelled pixels alone."""
    loss_fn = LOSSES[name]()
    logits, labels, valid = case(channels, seed=3)
    weight = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(4)) + 0.5
    if name == "weighted_bce":
        got = loss_fn(logits, with_ignored(labels, valid), weight=weight)
        expected = loss_fn(pixels_only(logits, valid), pixels_only(labels, valid), weight=pixels_only(weight, valid))
    else:
        got = loss_fn(logits, with_ignored(labels, valid))
        expected = loss_fn(pixels_only(logits, valid), pixels_only(labels, valid))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_by_hand_over_the_labelled_pixels():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[0, IGNORE_INDEX], [1, IGNORE_INDEX]]])
    # Two labelled pixels: logit 0 with label 0, logit -1 with label 1.
    expected = (torch.log1p(torch.exp(torch.tensor(0.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert BCELoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_without_ignored_pixels_the_numbers_are_the_plain_means_bit_for_bit(channels):
    logits, labels, _ = case(channels, seed=5)
    if channels == 1:
        plain = F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.float())
    else:
        plain = F.cross_entropy(logits, labels)
    assert BCELoss()(logits, labels).item() == plain.item()
    if channels == 1:
        ce = F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.float(), reduction="none")
    else:
        ce = F.cross_entropy(logits, labels, reduction="none")
    assert FocalLoss()(logits, labels).item() == ((1 - torch.exp(-ce)) ** 2 * ce).mean().item()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_batch_without_labelled_pixels_gives_zero(name):
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    loss = LOSSES[name]()(logits, target, **({"weight": torch.ones(1, 4, 4)} if name == "weighted_bce" else {}))
    loss.backward()
    assert loss.item() == 0.0  # the smoothed region losses too: 1 - s / s
    assert logits.grad is not None and (logits.grad == 0).all()


def test_deep_supervision_keeps_ignored_pixels_out_at_every_scale():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (2, 16, 16), generator=g)
    target = labels.clone()
    target[:, :, :8] = IGNORE_INDEX  # the left half is unlabelled
    outputs = [torch.randn(2, 1, s, s, generator=g) for s in (16, 8, 4)]
    loss = DeepSupervisionLoss(BCEDiceLoss())
    reference = loss(outputs, target)
    # Nearest-neighbour resizing keeps the ignore value exactly where it was.
    for size in (8, 4):
        small = resize_target(target, (size, size))
        assert (small[:, :, : size // 2] == IGNORE_INDEX).all() and (small[:, :, size // 2 :] <= 1).all()
    changed = [o.clone() for o in outputs]
    for o in changed:
        o[..., : o.shape[-1] // 2] = 30 * torch.randn(o[..., : o.shape[-1] // 2].shape, generator=g)
    assert loss(changed, target).item() == reference.item()
    weight = torch.rand(2, 16, 16, generator=g)
    weighted = DeepSupervisionLoss(WeightedBCELoss())
    assert weighted(changed, target, weight=weight).item() == weighted(outputs, target, weight=weight).item()
