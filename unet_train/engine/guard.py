"""The non-finite-loss guard: a NaN/inf loss skips its optimizer step; too many in a row stop the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from unet_train.engine import distributed
from unet_train.errors import TrainingDiverged

log = logging.getLogger(__name__)

ADVICE = "Lower optim.lr, use trainer.precision=32, or check the data for NaNs."


def can_skip_on_device(device: torch.device, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` on ``device`` can skip a step from a device-side flag (CUDA, fused: ``found_inf``)."""
    return device.type == "cuda" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class NonFiniteGuard:
    """Decides per step whether a loss may update the weights, and stops a run that keeps diverging.

    Two behaviours behind one interface (:meth:`admit`, :meth:`arm`, :meth:`kept`, :meth:`at_log_point`):

    - host-side (CPU, DDP, optimizers without ``found_inf``): the loss's finiteness is read every step
      and a bad step is skipped before its backward. Free on a CPU; under DDP the flag is all-reduced,
      so all ranks skip together.
    - sync-free (one CUDA device, fused optimizer: :func:`can_skip_on_device`): reading the flag on
      the host is a host-device sync that stalls the launch queue every step. Instead the flag goes
      to the optimizer as ``found_inf`` (the device-side skip GradScaler uses too), which leaves
      weights and moments untouched; the flags are summed on the device and read at log points,
      where the loss is read anyway.

    ``state`` is the run's :class:`~unet_train.engine.state.TrainState` (read for the step and epoch
    that messages name); ``checkpoint`` is the ``last.pt`` a divergence message points to.
    """

    def __init__(
        self,
        limit: int,
        sync_free: bool,
        device: torch.device,
        state: Any,
        checkpoint: Path,
        dist: distributed.Distributed | None = None,
    ) -> None:
        self.limit = limit
        self.sync_free = sync_free
        self.state = state
        self.checkpoint = checkpoint
        self.dist = dist or distributed.Distributed()
        self.consecutive = 0  # non-finite losses in a row (sync-free: up to the last log point)
        self._window = torch.zeros((), dtype=torch.int64, device=device)  # sync-free: bad steps since last read
        self._bad: torch.Tensor | None = None  # sync-free: this step's flag, on the device

    @classmethod
    def for_run(cls, run: Any, checkpoint: Path) -> NonFiniteGuard:
        """The guard for ``run`` (a :class:`~unet_train.engine.run.Run`): sync-free wherever it can be."""
        sync_free = can_skip_on_device(run.runtime.device, run.optimizer) and not run.dist.enabled
        limit = run.cfg.trainer.max_nonfinite_steps
        return cls(limit, sync_free, run.runtime.device, run.state, checkpoint, run.dist)

    def admit(self, loss: torch.Tensor) -> bool:
        """Whether to run backward and the optimizer step for ``loss``. Raises TrainingDiverged at the limit."""
        if self.sync_free:
            self._bad = ~torch.isfinite(loss.detach())
            self._window += self._bad
            return True  # the optimizer step itself skips the update (see arm)
        if self.dist.all_finite(loss):  # a host-device sync on CUDA, a collective under DDP
            self.consecutive = 0
            return True
        self.consecutive += 1
        step, epoch = self.state.step, self.state.epoch + 1
        log.warning("Non-finite loss at step %d (%d in a row); step skipped", step, self.consecutive)
        if self.consecutive >= self.limit:
            saved = self.checkpoint.is_file()
            kept = f"the last good checkpoint {self.checkpoint} is kept" if saved else "none was saved"
            raise TrainingDiverged(
                f"The loss was NaN/inf for {self.consecutive} consecutive steps (last at step {step}, "
                f"epoch {epoch}); training stopped and {kept}. {ADVICE}"
            )
        return False

    def arm(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Before ``scaler.step(optimizer)``: hand this step's flag to the optimizer (sync-free only)."""
        if self.sync_free and not scaler.is_enabled():  # (an enabled scaler sets its own found_inf)
            optimizer.found_inf = self._bad.float()  # type: ignore[attr-defined,union-attr]

    def kept(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """What an admitted step adds to the logged training loss: (value, count), zero for a skipped one."""
        if self.sync_free and self._bad is not None:
            return torch.where(self._bad, 0.0, loss.detach()), ~self._bad
        return loss.detach(), 1

    def at_log_point(self, steps: int) -> None:
        """Read the device-side count of skipped steps (sync-free only; the caller syncs here anyway)."""
        if not self.sync_free:
            return
        n_bad = int(self._window.item())
        self._window.zero_()
        self.consecutive = self.consecutive + n_bad if n_bad else 0
        if n_bad:
            log.warning("Non-finite loss in %d of the last %d steps; those steps skipped", n_bad, steps)
        if self.consecutive >= self.limit:
            raise TrainingDiverged(
                f"The loss was NaN/inf for {self.consecutive} steps up to step {self.state.step}; training "
                f"stopped. The last good checkpoint is {self.checkpoint}. {ADVICE}"
            )
