"""When a run stops: after ``trainer.max_epochs``, at ``trainer.max_time``, by early stopping, or on a signal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unet_train.engine import distributed
from unet_train.engine.budget import TimeBudget
from unet_train.engine.signals import GracefulStop, interrupted
from unet_train.errors import RunInterrupted


class StopRules:
    """The stopping rules of one run, asked at the two places a run may stop.

    Per step, :meth:`out_of_time` (the time budget) and :attr:`signalled` (SIGINT/SIGTERM, by
    ``signals``); per epoch, :meth:`after_epoch` gives the reason to stop normally, if any. Under DDP
    the ranks agree on every decision (a collective), so they all stop at the same step.
    """

    def __init__(
        self, trainer: Any, signals: GracefulStop, dist: distributed.Distributed | None = None,
        budget: TimeBudget | None = None,
    ) -> None:  # fmt: skip
        self.max_epochs: int = trainer.max_epochs
        self.max_time: float | None = trainer.max_time
        # The budget counts the run's training time over resumes and holds back the final validation's cost.
        self.budget = budget if budget is not None else TimeBudget(self.max_time)
        self.patience: int | None = trainer.early_stopping_patience
        self.signals = signals
        self.dist = dist or distributed.Distributed()
        self._signal = 0  # the stop signal agreed on at the last check

    @property
    def elapsed(self) -> float:
        """The run's training time over all its segments (the budget's clock, also without a budget)."""
        return self.budget.elapsed

    @property
    def signalled(self) -> bool:
        """Whether a stop signal reached any rank (a collective under DDP: every rank stops at the same step)."""
        self._signal = self.dist.max(self.signals.signal or 0)
        return bool(self._signal)

    def out_of_time(self) -> bool:
        """Whether ``trainer.max_time``, less the final validation's reserve, has run out (after every step; a
        collective under DDP).

        The time-based schedule's progress travels with the decision: every rank takes rank 0's, so the
        replicas' learning rates, and so their weights, stay identical (each rank's own clock would differ).
        """
        self.budget.steps += 1
        if self.max_time is None:
            return False
        progress, stop = self.dist.agree_values((self.budget.fraction(), float(self.budget.out_of_time())))
        self.budget.advance(progress)
        return bool(stop)

    def after_epoch(self, state: Any, out_of_time: bool) -> str | None:
        """The reason to stop after this epoch (``state`` is the run's TrainState), or None to go on."""
        if out_of_time:
            return f"max_time ({self.max_time:g} s)"
        if self.patience is not None and self.dist.agree(state.stale_validations >= self.patience):
            return f"early stopping ({self.patience} validations without improvement)"
        return None

    def interrupt_after_epoch(self, state: Any) -> bool:
        """Whether a signal ends the run after this epoch (after the last epoch the run finishes normally)."""
        return self.signalled and state.epoch < self.max_epochs

    def interrupted(self, checkpoint: Path, step: int, saved: bool) -> RunInterrupted:
        """The error that ends a signalled run, with the command that resumes it."""
        return interrupted(self._signal or self.signals.signal, checkpoint, step, saved)
