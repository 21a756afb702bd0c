"""A fault-injecting loss whose training calls advance a virtual clock: budgeted runs in virtual seconds.

A test patches ``time.monotonic`` (and the run's budget clock) with :data:`CLOCK`; each training call of
``loss._target_=tests.engine.clocked_loss.ClockedLoss +loss.step_s=0.1`` then takes 0.1 virtual seconds and
everything else none, so a run stopped by ``trainer.max_time`` stops at the same step every time, on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tests.engine.faulty_loss import FaultyLoss


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = VirtualClock()


class ClockedLoss(FaultyLoss):
    """:class:`FaultyLoss` (NaN and signal injection) whose every training call advances :data:`CLOCK` by ``step_s``."""

    def __init__(
        self, step_s: float = 0.1, signal_calls: Sequence[int] = (), pos_weight: float | None = None, val_s: float = 0.0
    ) -> None:
        super().__init__(signal_calls=signal_calls, pos_weight=pos_weight)
        self.step_s, self.val_s = step_s, val_s  # val_s: what each validation call (no grad) takes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        CLOCK.now += self.step_s if torch.is_grad_enabled() else self.val_s
        return super().forward(logits, target)
