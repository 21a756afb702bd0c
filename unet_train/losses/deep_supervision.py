"""Deep supervision as a stateless wrapper around any loss (multi-scale loss).

Deep supervision adds losses on intermediate outputs (Lee et al. 2015, arXiv:1409.5185); for a
UNet, 1x1 heads on the coarser decoder levels are scored against a downsampled target with
weights that halve per level and are normalised, as nnU-Net does (Isensee et al. 2021,
arXiv:1809.10486).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unet_train.errors import ConfigError


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

    @property
    def sample_weight(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The wrapped loss's per-pixel weight maps, if it uses any (see ``WeightedBCELoss``)."""
        return getattr(self.loss, "sample_weight", None)

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        **per_pixel: torch.Tensor,
    ) -> torch.Tensor:
        """``per_pixel``: the loss's other full-resolution maps (``weight``, ``distance``), resized with the
        target for each head."""

        def head_loss(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
            resized = {name: resize_target(value, size) for name, value in per_pixel.items()}
            return self.loss(logits, resize_target(target, size), **resized)

        if isinstance(outputs, torch.Tensor):
            return head_loss(outputs, outputs.shape[2:])
        weights = self.weights if self.weights is not None else halving_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ConfigError(
                f"deep_supervision_weights={weights} has {len(weights)} entries but the model returns "
                f"{len(outputs)} outputs (full resolution + model.supervision_levels): give {len(outputs)} "
                "weights, full resolution first, or null for halving weights."
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for scale, logits in zip(weights, outputs, strict=True):
            total = total + scale * head_loss(logits, logits.shape[2:])
        return total


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``(N, *spatial)`` label map (or ``(N, C, *spatial)`` target) to ``size``.

    ``size`` has one entry per spatial axis (two for images, three for volumes), so a ``(N, D, H, W)``
    label volume is resized on all three axes. Nearest interpolation only copies values, so integer
    labels stay labels and a binary mask stays binary; the dtype is kept.
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-len(size) :]) == size:
        return target
    labels = target.ndim == len(size) + 1  # no channel axis
    # float32 holds every label exactly up to 2**24, far beyond any class count.
    batched = target.unsqueeze(1) if labels else target
    resized = F.interpolate(batched.float(), size=size, mode="nearest").to(target.dtype)
    return resized.squeeze(1) if labels else resized
