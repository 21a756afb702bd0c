"""A loss with faults on chosen training calls, to inject them through the real CLI.

``loss=bce loss._target_=tests.engine.faulty_loss.FaultyLoss +loss.nan_calls=[6,7]`` makes
training calls 6 and 7 (1-based) return NaN; ``+loss.signal_calls=[6]`` sends SIGTERM to the
process during call 6, i.e. in the middle of an optimizer step (under DDP to rank 0 only); ``+loss.huge_calls=[2]``
multiplies call 2's loss by 1e30 (finite in float32, but its gradients overflow float16);
``+loss.nan_eval=true`` makes every validation loss NaN.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import torch

from unet_train.losses import BCELoss


class FaultyLoss(BCELoss):
    """Binary cross-entropy, with NaN or a SIGTERM on the training calls listed."""

    def __init__(
        self,
        nan_calls: Sequence[int] = (),
        signal_calls: Sequence[int] = (),
        huge_calls: Sequence[int] = (),
        pos_weight: float | None = None,
        nan_eval: bool = False,
    ) -> None:
        super().__init__(pos_weight)
        self.nan_calls, self.signal_calls, self.huge_calls = set(nan_calls), set(signal_calls), set(huge_calls)
        self.calls = 0
        self.nan_eval = nan_eval

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        if not torch.is_grad_enabled():  # validation runs under inference mode: leave it alone
            return loss * float("nan") if self.nan_eval else loss
        self.calls += 1
        if self.calls in self.signal_calls and os.environ.get("RANK", "0") == "0":
            os.kill(os.getpid(), signal.SIGTERM)
        if self.calls in self.huge_calls:
            return loss.float() * 1e30
        return loss * float("nan") if self.calls in self.nan_calls else loss
