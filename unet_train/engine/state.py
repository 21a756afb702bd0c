"""The progress of a training run that its checkpoints carry besides the weights."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float | None = None  # best monitored value so far
    best_epoch: int = 0
    stale_validations: int = 0  # validations since the monitored value last improved
    batch: int = 0  # batches of epoch ``epoch + 1`` already trained on (> 0 only after a stop signal)
    planned_steps: int = 0  # the steps the learning-rate schedule was planned over (0: not recorded)
    elapsed: float = 0.0  # training time of the run so far in seconds (a time-based schedule's clock)
    # What trainer.max_time's reserve and schedule had reached (engine/budget.py), so a resume goes on from them:
    progress: float | None = None  # the time-based schedule's progress in [0, 1] (None: not recorded)
    validation_s: float | None = None  # the longest validation measured (None: not yet)
    checkpoint_s: float = 0.0  # the longest synchronous checkpoint write measured
    validation_total_s: float = 0.0  # all validations together (metrics.json's validation_s: the budget's share)
    # Epochs between validations as trainer.val_share re-planned them from measured costs (0: trainer.val_every),
    # and the epoch of the last validation it counts from (engine/val_schedule.py).
    val_every: int = 0
    validated_epoch: int = 0
    # Each earlier re-plan of the schedule as [step, steps planned before, steps planned after], oldest first.
    replans: list[list[int]] = field(default_factory=list)
