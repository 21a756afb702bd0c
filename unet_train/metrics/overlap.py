"""Per-image overlap metrics from confusion counts, computed on the model's device.

Dice and IoU are reported for the positive class(es): in a binary problem class 1 (the
membrane for ISBI), in a multi-class problem each class ``k >= 1`` and their mean. Pixel
error is the share of wrongly labelled pixels (``1 - accuracy``), as in the ISBI challenge.
Pixels whose target is :data:`~unet_train.labels.IGNORE_INDEX` are left out of every count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unet_train.labels import valid_pixels


def predict_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` -> integer labels ``(N, H, W)``: sigmoid threshold for C == 1, argmax otherwise."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


@dataclass
class ConfusionCounts:
    """Per-image, per-class counts, each ``(N, K)`` with ``K`` classes (background included)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    pixels: torch.Tensor  # (N,) labelled pixels per image


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> ConfusionCounts:
    """Counts of true/false positives and false negatives per image and class over the labelled pixels; no host sync."""
    pred, target = pred.flatten(1).long(), target.flatten(1).long()
    valid = valid_pixels(target)  # (N, P)
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1)
    p = (pred.unsqueeze(1) == classes) & valid.unsqueeze(1)  # (N, K, P): predictions on ignored pixels drop out
    t = target.unsqueeze(1) == classes  # the ignore value is no class
    tp = (p & t).sum(-1)
    return ConfusionCounts(tp=tp, fp=p.sum(-1) - tp, fn=t.sum(-1) - tp, pixels=valid.sum(-1))


def overlap_scores(counts: ConfusionCounts) -> dict[str, torch.Tensor]:
    """Per-image scores ``(N,)``: ``dice``, ``iou``, ``pixel_error`` and per-class ``dice_k``/``iou_k`` for K > 2.

    An image where a class is absent from both prediction and ground truth scores 1 for it; an
    image without any labelled pixel has a pixel error of 0.
    """
    tp, fp, fn = (c.double() for c in (counts.tp, counts.fp, counts.fn))
    denom_dice, denom_iou = 2 * tp + fp + fn, tp + fp + fn
    dice = torch.where(denom_dice > 0, 2 * tp / denom_dice.clamp_min(1), torch.ones_like(tp))
    iou = torch.where(denom_iou > 0, tp / denom_iou.clamp_min(1), torch.ones_like(tp))
    correct = counts.tp.sum(1).double()
    pixels = counts.pixels.double()
    error = torch.where(pixels > 0, 1 - correct / pixels.clamp_min(1), torch.zeros_like(pixels))
    scores = {
        "dice": dice[:, 1:].mean(1),
        "iou": iou[:, 1:].mean(1),
        "pixel_error": error,
    }
    if dice.shape[1] > 2:
        for k in range(1, dice.shape[1]):
            scores[f"dice_{k}"], scores[f"iou_{k}"] = dice[:, k], iou[:, k]
    return scores
