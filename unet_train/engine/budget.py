"""The time budget of a run (``trainer.max_time``): training time, the schedule's progress, and what to keep in reserve.

The budget counts the training time of every segment of a run: a resumed run starts from the
elapsed time stored in its checkpoint (``TrainState.elapsed``), so a time-based learning-rate
schedule continues where it stopped. Training stops early enough that the final validation and
checkpoint still fit: their cost is measured (or, before the first validation, estimated from the
training speed) and held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A validation pass (forward only, no augmentation) costs about this share of a training step per
# pixel; the estimate is on the safe side until the first validation is timed.
VALIDATION_PER_PIXEL = 0.6
MARGIN = 1.2  # measured costs are held back with this factor


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
        self.checkpoint_s = 0.0  # the longest checkpoint write measured
        self.val_pixels = 0  # pixels of one validation pass
        self.pixels_per_step = 0  # training pixels of one optimizer step
        self.steps = 0  # steps taken in this segment

    def start(self, elapsed_before: float | None = None) -> None:
        """Start this segment's clock now (after the run is built), from ``elapsed_before`` if given."""
        if elapsed_before is not None:
            self.elapsed_before = elapsed_before
        self.started = self.clock()

    @property
    def elapsed(self) -> float:
        """Training time of the whole run so far (all segments)."""
        return self.elapsed_before + self.clock() - self.started

    @property
    def reserve(self) -> float:
        """Seconds held back for the final validation and checkpoint."""
        if self.max_time is None:
            return 0.0
        validation = self.validation_s
        if validation is None:  # not timed yet: from the training speed of this segment
            segment = self.clock() - self.started
            per_pixel = segment / max(1, self.steps * self.pixels_per_step) if self.steps else 0.0
            validation = VALIDATION_PER_PIXEL * per_pixel * self.val_pixels
        # Never more than half the budget: a validation that large is kept, and the run overruns by it.
        return min(MARGIN * (validation + self.checkpoint_s), 0.5 * self.max_time)

    def fraction(self) -> float:
        """The schedule's progress in [0, 1]: 1 when the training share of the budget is spent."""
        if self.max_time is None:
            return 0.0
        return min(1.0, max(0.0, self.elapsed / max(1e-9, self.max_time - self.reserve)))

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
