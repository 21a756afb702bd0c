"""A loss that sleeps on every training call, to give a run epochs of a known wall time through the real CLI.

``loss=bce loss._target_=tests.engine.slow_loss.SlowLoss +loss.sleep_s=0.15``: each optimizer step takes
0.15 s more; sleeping needs no CPU, so the epochs keep their length on a loaded machine.
"""

from __future__ import annotations

import time

import torch

from unet_train.losses import BCELoss


class SlowLoss(BCELoss):
    """Binary cross-entropy that sleeps ``sleep_s`` on each call with gradients (training, not validation)."""

    def __init__(self, sleep_s: float = 0.1, pos_weight: float | None = None) -> None:
        super().__init__(pos_weight)
        self.sleep_s = sleep_s

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            time.sleep(self.sleep_s)
        return super().forward(logits, target)
