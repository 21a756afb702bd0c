"""The time budget of a run (``trainer.max_time``): training time, the schedule's progress, and what to keep in reserve.

The budget counts the training time of every segment of a run: a resumed run starts from the
elapsed time, the measured costs and the schedule's progress stored in its checkpoint (``TrainState``),
so a time-based learning-rate schedule continues where it stopped, without a jump. It is the one clock
of a run: the stop, the estimate of the time left and ``metrics.json``'s ``time_s`` read it. Training
stops early enough that the final validation and checkpoint still fit: their cost is measured (or,
before the first validation, estimated from the training speed) and held back. An instance run holds back its
post-processing tuning too (:attr:`TimeBudget.tuning`), so that ``trainer.max_time`` bounds the whole run:
training, the final validation, the tuning and the checkpoints it rewrites.

The schedule reads :attr:`TimeBudget.progress`, not the clock: the value agreed after the last step
(rank 0's under DDP, see :meth:`~unet_train.engine.stopping.StopRules.out_of_time`), which never goes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# A validation pass (forward only, no augmentation) costs about this share of a training step per
# pixel; the estimate is on the safe side until the first validation is timed.
VALIDATION_PER_PIXEL = 0.6
MARGIN = 1.2  # measured costs are held back with this factor
TUNE_SHARE = 0.1  # the post-processing search after training takes at most this share of trainer.max_time


class TimeBudget:
    """Elapsed training time against ``max_time`` seconds (None: no budget).

    Args:
        max_time: the budget in seconds, or None.
        elapsed_before: training time of earlier segments of the run (from the checkpoint).
        clock: seconds from a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self, max_time: float | None, elapsed_before: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_time = max_time
        self.elapsed_before = elapsed_before
        self.clock = clock
        self.started = clock()
        self.validation_s: float | None = None  # the longest validation measured
        self.checkpoint_s = 0.0  # the longest synchronous checkpoint write measured
        self.val_pixels = 0  # pixels of one validation pass (of rank 0's share under DDP)
        self.pixels_per_step = 0  # training pixels of one optimizer step
        self.steps = 0  # steps taken in this segment
        # The schedule's progress at the start of this segment (a checkpoint's), None on a fresh run; the rest
        # of the budget then takes the schedule from there to 1 (see fraction()).
        self.progress_before: float | None = None
        self.progress = 0.0  # the schedule's progress as last agreed (advance()); never decreases
        # An instance run's tuning after training on the validation images (engine/objects.py): objects.tune_time
        # (0: none), its grid's points, and the post-processing and object scores of one validation pass, measured
        # (the cost of one grid point).
        self.tune_time = 0.0
        self.tune_points = 0
        self.postprocess_s: float | None = None

    def start(self) -> None:
        """Start this segment's clock now (after the run is built): once per segment."""
        self.started = self.clock()
        self.progress = max(self.progress, self.progress_before or 0.0)

    def store(self, state: Any) -> None:
        """Write the run's clock into ``state`` (a ``TrainState``) for a checkpoint."""
        state.elapsed, state.progress = self.elapsed, self.progress
        state.validation_s, state.checkpoint_s = self.validation_s, self.checkpoint_s

    def restore(self, state: Any) -> None:
        """Continue the run of ``state`` (a checkpoint's ``TrainState``): its time, measured costs and progress.

        Checkpoints from before the costs and progress were stored restore the elapsed time alone.
        """
        self.elapsed_before = state.elapsed
        if state.validation_s is not None:
            self.record_validation(state.validation_s)
        self.record_checkpoint(state.checkpoint_s)
        self.progress_before = state.progress
        if state.progress is None and self.max_time and state.elapsed > 0:
            # An older checkpoint: the budget's share it had spent, so its first step does not restart at 0.
            self.progress_before = min(1.0, state.elapsed / self.max_time)

    @property
    def elapsed(self) -> float:
        """Training time of the whole run so far (all segments)."""
        return self.elapsed_before + self.clock() - self.started

    def _validation(self) -> float:
        """The seconds of one validation pass: measured, or before it is, estimated from the training speed."""
        if self.validation_s is not None:
            return self.validation_s
        segment = self.clock() - self.started
        per_pixel = segment / max(1, self.steps * self.pixels_per_step) if self.steps else 0.0
        return VALIDATION_PER_PIXEL * per_pixel * self.val_pixels

    @property
    def tuning(self) -> float:
        """Seconds held back for an instance run's post-processing tuning after training (0 for other runs).

        The validation images predicted once more (a validation pass), the two checkpoints it rewrites, and the
        search: ``objects.tune_time``, at most :data:`TUNE_SHARE` of the budget, and no longer than the whole grid
        at the measured cost of one point.
        """
        if self.max_time is None or self.tune_time <= 0:
            return 0.0
        search = min(self.tune_time, TUNE_SHARE * self.max_time)
        if self.postprocess_s is not None:
            search = min(search, self.tune_points * self.postprocess_s)
        return MARGIN * (self._validation() + 2 * self.checkpoint_s) + search

    def tune_limit(self, wanted: float) -> float:
        """Seconds the search after training may take now: ``wanted`` (``objects.tune_time``), less what would
        overrun the budget with the two checkpoint writes after it; 0 when nothing is left (the default alone)."""
        if self.max_time is None:
            return wanted
        left = self.max_time - self.elapsed - MARGIN * 2 * self.checkpoint_s
        return max(0.0, min(wanted, left))

    @property
    def reserve(self) -> float:
        """Seconds held back for the final validation and checkpoint, and an instance run's tuning."""
        if self.max_time is None:
            return 0.0
        # Never more than half the budget: a validation that large is kept, and the run overruns by it.
        return min(MARGIN * (self._validation() + self.checkpoint_s) + self.tuning, 0.5 * self.max_time)

    def fraction(self) -> float:
        """The schedule's progress in [0, 1] by this process's clock: 1 when the training share of the budget is spent.

        A resumed segment goes on from its checkpoint's progress and reaches 1 when the budget left
        (less the reserve) is spent, so the rate neither jumps nor rises at a resume.
        """
        if self.max_time is None:
            return 0.0
        end = self.max_time - self.reserve  # the elapsed time at which training stops
        if self.progress_before is None:
            return min(1.0, max(0.0, self.elapsed / max(1e-9, end)))
        left = end - self.elapsed_before
        if left <= 0:
            return 1.0
        done = (self.elapsed - self.elapsed_before) / left
        return min(1.0, max(0.0, self.progress_before + (1.0 - self.progress_before) * done))

    def advance(self, progress: float) -> float:
        """Take ``progress`` (the agreed :meth:`fraction`) as the schedule's; it never goes back. Returns it."""
        self.progress = max(self.progress, progress)
        return self.progress

    def schedule_progress(self) -> float:
        """What a time-based schedule reads each step: the agreed, monotone :attr:`progress`."""
        return self.progress

    def out_of_time(self) -> bool:
        """Whether training must stop so that the final validation and checkpoint fit in the budget."""
        return self.max_time is not None and self.elapsed >= self.max_time - self.reserve

    def allows_validation(self) -> bool:
        """Whether an intermediate validation still leaves room for the final one (always true without a budget)."""
        if self.max_time is None:
            return True
        one = MARGIN * (self.validation_s or 0.0)
        return self.elapsed + one + self.reserve <= self.max_time

    def record_validation(self, seconds: float) -> None:
        self.validation_s = max(seconds, self.validation_s or 0.0)

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = max(seconds, self.checkpoint_s)
