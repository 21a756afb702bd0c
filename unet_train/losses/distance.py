"""The loss of the ``distance`` target: the foreground by the configured class loss, the distance by regression.

The model's first channel is the foreground logit (scored by any class loss: BCE, Dice, BCE + Dice, ...); the
channel after it regresses each pixel's distance to its object's boundary, normalised to [0, 1] per object
(:func:`unet_train.objects.targets.distance_target`), through a sigmoid. The regression term is the binary
cross-entropy of the sigmoid against the distance as a soft target: a regression of a value in [0, 1] (it is
least where the sigmoid equals the distance) whose gradient ``sigmoid - distance`` does not vanish as the sigmoid
saturates near the background's 0 and the peaks' 1, as a squared error's does (that one learnt the peaks too
slowly to seed objects in short runs). It is averaged over the labelled pixels, background included (where
the distance is 0), so unlabelled pixels count in neither term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_train.labels import valid_pixels


class ForegroundDistanceLoss(nn.Module):
    """``class_loss(logits[:, :1], target) + distance_weight * BCE(logits[:, 1], distance)`` (soft target).

    Args:
        class_loss: the configured loss of the foreground (binary: one logit channel).
        distance_weight: weight of the regression term.
    """

    def __init__(self, class_loss: nn.Module, distance_weight: float = 1.0) -> None:
        super().__init__()
        self.class_loss, self.distance_weight = class_loss, distance_weight

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        distance: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if distance is None:
            raise ValueError("the distance target's loss needs the batch's distance maps (data.target=distance)")
        extra = {} if weight is None else {"weight": weight}
        loss = self.class_loss(logits[:, :1], target, **extra)
        valid = valid_pixels(target).to(torch.float32)
        error = F.binary_cross_entropy_with_logits(logits[:, 1].float(), distance.float(), reduction="none")
        return loss + self.distance_weight * (error * valid).sum() / valid.sum().clamp_min(1)
