"""How often a run validates: every ``trainer.val_every`` epochs, or less often when validation costs more than
``trainer.val_share`` of the training time between two validations (a plan measured on an idle machine, a run on a
loaded one, or a validation slower than planned).

After every validation the run compares what it measured: that validation's seconds (the latest, not the longest:
the first validation pays one-time costs such as kernels for a new image size, and would space every later one too
far apart) against the training time of the epochs between two validations (the last epoch's seconds per step,
loading included). Validation stays within the share when an interval of ``n`` steps of ``step_s`` holds
``validation_s * (1 - share) / share`` seconds of training, so the interval becomes the fewest whole epochs that
hold it (never fewer than ``trainer.val_every``). A machine slower at both training and validation keeps its share
(both grow alike) and changes nothing. The decision travels in the checkpoint (``TrainState.val_every``), so a
resumed run validates on the same epochs, and under DDP every rank takes rank 0's figures.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)


class ValidationSchedule:
    """When a run of ``trainer`` validates; ``state`` (the run's ``TrainState``) holds the interval decided."""

    def __init__(self, trainer: Any, state: Any, dist: Any, steps_per_epoch: int, images_per_step: int) -> None:
        self.planned: int = int(trainer.val_every)
        self.share: float | None = trainer.get("val_share")
        self.state, self.dist = state, dist
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.images_per_step = images_per_step  # of all processes together: images_per_s counts them all

    @property
    def every(self) -> int:
        """Epochs between two validations now: the measured interval, else ``trainer.val_every``."""
        return max(self.planned, int(self.state.val_every or 0))

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (completed epochs) ends with a validation (the run's last one always does)."""
        if not self.state.val_every:  # not re-planned: every trainer.val_every-th epoch, as always
            return epoch % self.planned == 0
        return epoch - self.state.validated_epoch >= self.every

    def after_validation(self, validation_s: float, images_per_s: float) -> int:
        """Re-plan from a validation of ``validation_s`` and training at ``images_per_s``; returns the interval."""
        if self.share is None or images_per_s <= 0:
            return self.every
        # Rank 0's figures on every rank: each rank's clock differs, the interval must not.
        validation_s, images_per_s = self.dist.agree_values((validation_s, images_per_s))
        step_s = self.images_per_step / images_per_s
        wanted = validation_s * (1 - self.share) / (self.share * step_s)  # training steps per validation
        every = max(self.planned, math.ceil(wanted / self.steps_per_epoch - 1e-9))
        before = self.every
        if every != before:
            log.info(
                "A validation takes %.1f s and a step %.2f s: validating every %d steps (%d epoch%s) instead of every "
                "%d, so validation stays within trainer.val_share=%g of the training time",
                validation_s, step_s, every * self.steps_per_epoch, every, "s" * (every != 1),
                before * self.steps_per_epoch, self.share,
            )  # fmt: skip
        self.state.val_every, self.state.validated_epoch = every, self.state.epoch
        return every
