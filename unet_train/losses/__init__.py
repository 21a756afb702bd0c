"""Segmentation losses. All take logits ``(N, C, H, W)`` and an integer target ``(N, H, W)``.

``C == 1`` is a binary problem (sigmoid, target in {0, 1}); ``C > 1`` is multi-class (softmax,
target in {0, ..., C-1}). Target pixels equal to ``unet_train.labels.IGNORE_INDEX`` are
unlabelled and count in no loss.
"""

from unet_train.losses.deep_supervision import DeepSupervisionLoss, halving_weights
from unet_train.losses.segmentation import (
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    WeightedBCELoss,
    border_weight_map,
)

__all__ = [
    "BCEDiceLoss",
    "BCELoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "TverskyLoss",
    "WeightedBCELoss",
    "border_weight_map",
    "halving_weights",
]
