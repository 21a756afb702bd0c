"""The loss of the ``affinities`` target: the foreground by the configured class loss, each affinity by masked BCE.

The model's first channel is the foreground logit (scored by any class loss); the channels after it are one
sigmoid per offset of ``data.affinity_offsets`` (:mod:`unet_train.objects.heads`). Each affinity channel's binary
cross-entropy is averaged over its own counted pairs (the neighbour inside the image, neither pixel unlabelled:
the target holds 255 elsewhere, :class:`unet_train.data.instances.InstanceTarget`), then the channels are
averaged, so a long offset with fewer counted pairs weighs as much as a short one. ``dice_weight`` adds a soft
Dice per channel of the 0-affinities (the cuts) over the same pairs: it weighs the rare pairs that separate
objects as much as the many inside them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_train.labels import IGNORE_INDEX


class ForegroundAffinityLoss(nn.Module):
    """``class_loss(logits[:, :1], target) + affinity_weight * mean_k masked BCE(logits[:, 1 + k], affinities[:, k])``
    (+ ``dice_weight`` times the mean per-channel soft Dice loss).

    Args:
        class_loss: the configured loss of the foreground (binary: one logit channel).
        affinity_weight: weight of the affinity terms.
        dice_weight: weight of the per-channel soft Dice of the affinities (0: BCE only).
    """

    def __init__(self, class_loss: nn.Module, affinity_weight: float = 1.0, dice_weight: float = 0.0) -> None:
        super().__init__()
        self.class_loss, self.affinity_weight, self.dice_weight = class_loss, affinity_weight, dice_weight

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        affinities: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if affinities is None:
            raise ValueError("the affinities target's loss needs the batch's affinity maps (data.target=affinities)")
        extra = {} if weight is None else {"weight": weight}
        loss = self.class_loss(logits[:, :1], target, **extra)
        aff_logits = logits[:, 1:].float()
        if aff_logits.shape[1] != affinities.shape[1]:
            raise ValueError(f"{aff_logits.shape[1]} affinity channels for {affinities.shape[1]} target maps")
        valid = (affinities != IGNORE_INDEX).float()
        truth = affinities.float() * valid
        dims = tuple(d for d in range(truth.ndim) if d != 1)  # every axis but the offsets'
        counted = valid.sum(dims).clamp_min(1)
        bce = F.binary_cross_entropy_with_logits(aff_logits, truth, reduction="none")
        term = ((bce * valid).sum(dims) / counted).mean()
        if self.dice_weight:
            # of the 0-affinities (the cuts between objects and to the background): the rare, decisive pairs
            cut = (1 - torch.sigmoid(aff_logits)) * valid
            truth_cut = (1 - truth) * valid
            overlap = (cut * truth_cut).sum(dims)
            dice = (2 * overlap + 1) / (cut.sum(dims) + truth_cut.sum(dims) + 1)
            term = term + self.dice_weight * (1 - dice).mean()
        return loss + self.affinity_weight * term
