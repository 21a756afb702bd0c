"""Where and when a run's checkpoints are written: ``last.pt`` every ``trainer.save_every`` (in the
background when ``trainer.background_save``), ``best.pt`` on improvement."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unet_train.engine.background_save import BackgroundWriter, SaveEvery
from unet_train.engine.checkpoint import FORMAT, discard_partial_writes, save_atomic, unwrap, weights_finite
from unet_train.engine.resume import checkpoint_extras

log = logging.getLogger(__name__)


class Checkpointer:
    """Writes the checkpoints of ``run`` (a :class:`~unet_train.engine.run.Run`) into ``folder``.

    Only the main rank writes (the ranks hold the same weights); weights that are no longer finite
    are never written, so the last good file stays; each write is atomic (temporary file + rename).
    Creating one removes the temporary files that a kill during an earlier write left behind.

    :meth:`save_last` is the per-epoch ``last.pt`` (at the cadence of ``trainer.save_every``, written by
    a thread when ``trainer.background_save``); :meth:`save` writes synchronously, after waiting for
    any background write, so files are always written in order. :meth:`wait` at the end of a run.
    """

    def __init__(self, folder: Path, run: Any) -> None:
        self.folder = folder
        self.run = run
        self.is_main = run.dist.is_main
        tcfg = run.cfg.get("trainer") or {}
        self.every = SaveEvery.parse(tcfg.get("save_every", 1))
        self.writer = BackgroundWriter() if tcfg.get("background_save", False) else None
        self.last_write = time.monotonic()
        self.sync_write_s = 0.0  # the longest synchronous write (what the run's final last.pt costs)
        for leftover in discard_partial_writes(folder) if self.is_main else []:
            log.warning("Removed %s, a checkpoint write cut short by a kill", leftover.name)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def contents(self, extras: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint holds (see :mod:`unet_train.engine.checkpoint`), as of now; ``extras``: RNG and plan."""
        run = self.run
        if getattr(run, "budget", None) is not None:
            run.budget.store(run.state)  # a resumed run's clock and time-based schedule continue from here
        return {
            "format": FORMAT,
            "model": unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "state": asdict(run.state),
            "monitor": run.cfg.monitor,
            # The layout and precision the run trains in (trainer.*=auto's measured choice): a resume keeps them.
            "runtime": {"precision": run.runtime.precision, "channels_last": run.runtime.channels_last},
            **extras,
            "config": run.resolved_config,
        }

    def save(self, name: str, background: bool = False) -> bool:
        """Write ``folder/name``; returns whether it was written (on every rank: rank 0's outcome).

        ``background``: hand the write to the writer thread (when ``trainer.background_save``) and return
        once the state is copied to host memory; the file is complete after the next :meth:`wait`.
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
        if name == "last.pt":
            self.last_write = time.monotonic()
        if background and self.writer is not None:
            self.writer.submit(self.contents(extras), self.folder / name, self.folder.parent)
            return run.dist.agree(True)
        started = time.monotonic()
        self.wait()  # an earlier background write lands first
        save_atomic(self.contents(extras), self.folder / name, self.folder.parent)  # inside the run folder
        self.sync_write_s = max(self.sync_write_s, time.monotonic() - started)
        return run.dist.agree(True)

    @property
    def write_s(self) -> float:
        """The longest write measured: synchronous ones, and the writer thread's own (a background save
        returns at once, but the run's final ``last.pt`` is written synchronously and costs that long)."""
        return max(self.sync_write_s, self.writer.write_s if self.writer is not None else 0.0)

    def save_last(self, final: bool) -> bool:
        """The end-of-epoch ``last.pt``: written when ``trainer.save_every`` says so, and always when ``final``.

        Returns whether it was written (or handed to the writer thread).
        """
        # Rank 0's clock decides for every rank: save() is a collective under DDP.
        due = final or self.run.dist.agree(self.every.due(self.run.state.epoch, time.monotonic() - self.last_write))
        return self.save("last.pt", background=not final) if due else False

    def wait(self) -> None:
        """Block until a background write in flight is on disk (re-raises its error)."""
        if self.writer is not None:
            self.writer.wait()
