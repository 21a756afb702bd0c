"""A loss that turns NaN on chosen training calls: injects non-finite losses through the real CLI.

Used as ``loss._target_=tests.engine.nan_loss.NaNOnCalls +loss.nan_calls=[6,7,8]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unet_train.losses import BCELoss


class NaNOnCalls(BCELoss):
    """Binary cross-entropy, except that training calls number ``nan_calls`` (1-based) return NaN."""

    def __init__(self, nan_calls: Sequence[int] = (), pos_weight: float | None = None) -> None:
        super().__init__(pos_weight)
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        if not torch.is_grad_enabled():  # validation runs under inference mode: leave it alone
            return loss
        self.calls += 1
        return loss * float("nan") if self.calls in self.nan_calls else loss
