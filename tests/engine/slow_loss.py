"""A loss that sleeps on every training call, to give a run epochs of a known wall time through the real CLI.

``loss=bce loss._target_=tests.engine.slow_loss.SlowLoss +loss.sleep_s=0.15``: each optimizer step takes
0.15 s more; sleeping needs no CPU, so the epochs keep their length on a loaded machine. ``+loss.eval_sleep_s=0.3``
makes each validation call (one per validation batch) sleep too: a validation slower than the plan measured;
``+loss.cold_eval_sleep_s=1.5`` adds to the first one only (a cold first validation).
"""

from __future__ import annotations

import time

import torch

from unet_train.losses import BCELoss


class SlowLoss(BCELoss):
    """Binary cross-entropy that sleeps ``sleep_s`` on each call with gradients (training) and ``eval_sleep_s`` on
    each call without (validation)."""

    def __init__(
        self, sleep_s: float = 0.1, pos_weight: float | None = None, eval_sleep_s: float = 0.0,
        cold_eval_sleep_s: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(pos_weight)
        self.sleep_s, self.eval_sleep_s, self.cold_eval_sleep_s = sleep_s, eval_sleep_s, cold_eval_sleep_s

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            time.sleep(self.sleep_s)
        else:
            time.sleep(self.eval_sleep_s + self.cold_eval_sleep_s)
            self.cold_eval_sleep_s = 0.0
        return super().forward(logits, target)
