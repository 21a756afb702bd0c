"""Where and when a run's checkpoints are written: ``last.pt`` every epoch, ``best.pt`` on improvement."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unet_train.engine.checkpoint import FORMAT, discard_partial_writes, save_atomic, unwrap, weights_finite
from unet_train.engine.resume import checkpoint_extras

log = logging.getLogger(__name__)


class Checkpointer:
    """Writes the checkpoints of ``run`` (a :class:`~unet_train.engine.run.Run`) into ``folder``.

    Only the main rank writes (the ranks hold the same weights); weights that are no longer finite
    are never written, so the last good file stays; each write is atomic (temporary file + rename).
    Creating one removes the temporary files that a kill during an earlier write left behind.
    """

    def __init__(self, folder: Path, run: Any) -> None:
        self.folder = folder
        self.run = run
        self.is_main = run.dist.is_main
        for leftover in discard_partial_writes(folder) if self.is_main else []:
            log.warning("Removed %s, a checkpoint write cut short by a kill", leftover.name)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def contents(self, extras: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint holds (see :mod:`unet_train.engine.checkpoint`), as of now; ``extras``: RNG and plan."""
        run = self.run
        if getattr(run, "budget", None) is not None:
            run.state.elapsed = run.budget.elapsed  # a resumed time-based schedule continues from here
        return {
            "format": FORMAT,
            "model": unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "state": asdict(run.state),
            "monitor": run.cfg.monitor,
            **extras,
            "config": run.resolved_config,
        }

    def save(self, name: str) -> bool:
        """Write ``folder/name``; returns whether it was written (on every rank: rank 0's outcome).

        Under DDP every rank's RNG state goes into the file, gathered here: a collective, so every
        rank calls ``save`` at the same points.
        """
        run = self.run
        extras = checkpoint_extras(run.dist, run.schedule_steps_per_epoch, run.steps_per_epoch)
        if not self.is_main:
            return run.dist.agree(False)
        # One reduction per tensor, each a host-device sync on CUDA: once per save, not per step.
        if not weights_finite(run.model):
            log.warning("Not writing %s: the weights are no longer finite", name)
            return run.dist.agree(False)
        save_atomic(self.contents(extras), self.folder / name)
        return run.dist.agree(True)
