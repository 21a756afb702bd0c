"""Deep supervision as a stateless wrapper around any loss (multi-scale loss)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def halving_weights(n: int) -> list[float]:
    """``[1, 1/2, 1/4, ...]`` for ``n`` outputs, normalised to sum to 1."""
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` to every output of a deeply supervised model and sum with ``weights``.

    The target is resized to each output's size with nearest-neighbour interpolation, so
    labels stay integral. A single tensor (eval mode) is passed straight to ``loss``.

    Args:
        loss: any loss ``(logits, target) -> scalar``.
        weights: one weight per output, full resolution first; ``None`` halves per level
            and normalises (``[4/7, 2/7, 1/7]`` for three outputs).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights if self.weights is not None else halving_weights(len(outputs))
        if len(weights) < len(outputs):
            raise ValueError(f"DeepSupervisionLoss got {len(outputs)} outputs but only {len(weights)} weights.")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, logits in zip(weights, outputs):
            total = total + weight * self.loss(logits, resize_target(target, logits.shape[-2:]))
        return total


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer ``(N, H, W)`` target; values stay labels."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    resized = F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest")
    return resized.squeeze(1).to(target.dtype)
