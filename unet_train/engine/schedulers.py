"""Learning-rate schedules stepped once per optimizer step.

Each is a ``_partial_: true`` factory in ``configs/sched``: the training loop calls it with the
optimizer and the planned number of steps. With ``trainer.max_time`` set it also passes
``progress``, the share of the time budget spent (:meth:`~unet_train.engine.budget.TimeBudget.schedule_progress`:
agreed by every rank, never going back): the decay then runs over the budget instead of the steps, and
the rate reaches its floor as the clock runs out. Warm-up is counted in steps either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["constant", "cosine", "poly"]


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


Progress = Callable[[], float]


def _progress(step: int, total_steps: int, warmup_steps: int, progress: Progress | None) -> float:
    """Share of the decay done: of the time budget when ``progress`` is given, else of the steps after warm-up."""
    if progress is not None:
        return min(1.0, max(0.0, progress()))
    return min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01,
    progress: Progress | None = None,
) -> LambdaLR:  # fmt: skip
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``total_steps`` (or at the end of the budget)."""

    def factor(step: int) -> float:
        done = _progress(step, total_steps, warmup_steps, progress)
        cos = 0.5 * (1 + math.cos(math.pi * done))
        return _warmup(step, warmup_steps) * (min_lr_ratio + (1 - min_lr_ratio) * cos)

    return LambdaLR(optimizer, factor)


def poly(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, progress: Progress | None = None
) -> LambdaLR:
    """Polynomial decay ``(1 - step / total_steps) ** power`` (nnU-Net's; or of the budget spent), with warm-up."""

    def factor(step: int) -> float:
        done = _progress(step, total_steps, 0, progress)  # poly's decay counts the warm-up steps too
        return _warmup(step, warmup_steps) * (1 - done) ** power

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """A constant learning rate (after an optional warm-up)."""
    return LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))


def continue_schedule(scheduler: Any, old_factors: list, done: int, planned_before: int, planned_now: int) -> None:
    """Re-plan a resumed schedule from ``planned_before`` to ``planned_now`` steps without a jump.

    ``old_factors`` are the ``lr_lambdas`` of the schedule as planned before. The part of the old
    plan still ahead (steps ``done`` to ``planned_before``) is stretched or squeezed over the steps
    now ahead (``done`` to ``planned_now``): the learning rate goes on from its value at ``done`` and
    reaches the old plan's end value at ``planned_now``. A run resumed after its plan had ended keeps
    the end value. Schedules that are not step-indexed factors are left alone.
    """
    if planned_before == planned_now or not isinstance(scheduler, LambdaLR):
        return
    scale = max(0, planned_before - done) / max(1, planned_now - done)

    def stretched(factor: Any) -> Any:
        return lambda step: factor(done + (step - done) * scale if step >= done else step)

    scheduler.lr_lambdas = [stretched(factor) for factor in old_factors]
