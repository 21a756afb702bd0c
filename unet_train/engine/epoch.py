"""One training epoch: the step loop, with the loss logged every ``trainer.log_every`` steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unet_train.engine import distributed
from unet_train.engine.checkpointer import Checkpointer
from unet_train.engine.eta import RunClock
from unet_train.engine.guard import NonFiniteGuard
from unet_train.engine.step import TrainStep
from unet_train.engine.stopping import StopRules


@dataclass
class EpochResult:
    loss: float | None  # the last training loss read in the epoch (None when no step was taken)
    images_per_s: float  # training images per second of the epoch's loop (all processes), loading included
    out_of_time: bool  # trainer.max_time ran out during the epoch


class LossWindow:
    """The training loss summed on the device between log points.

    Reading a loss on the host (``.item()``) is a host-device sync that drains the CUDA launch queue,
    so the step only adds on the device; :meth:`read` syncs once per ``log_every`` steps.
    """

    def __init__(self, device: torch.device) -> None:
        self.sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)  # steps with a finite loss in ``sum``
        self.steps = 0  # steps since the last read

    def add(self, value: torch.Tensor, count: torch.Tensor | int) -> None:
        self.sum += value
        self.count += count
        self.steps += 1

    def read(self, dist: distributed.Distributed) -> float:
        """The mean loss since the last read over all ranks (NaN if every step was skipped); restarts the window."""
        value = (dist.mean(self.sum) / self.count).item()
        self.sum.zero_()
        self.count.zero_()
        self.steps = 0
        return value


def train_epoch(
    run: Any,
    epoch: int,
    step: TrainStep,
    guard: NonFiniteGuard,
    stop: StopRules,
    checkpoints: Checkpointer,
    writer: Any,
    progress: bool,
    clock: RunClock | None = None,
) -> EpochResult:
    """Train ``run`` (a :class:`~unet_train.engine.run.Run`) for epoch ``epoch`` (0-based), or what is left of it.

    Raises RunInterrupted (after saving ``last.pt``) when a stop signal arrives, TrainingDiverged
    from the guard. On return ``run.state`` counts the epoch as completed.
    """
    state, dist, log_every = run.state, run.dist, run.cfg.trainer.log_every
    run.start_epoch(epoch)
    epoch_start, steps_before = time.monotonic(), state.step
    window = LossWindow(run.runtime.device)
    loss: float | None = None
    out_of_time = False
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        if stop.signalled:  # the batch is not used: a resumed run starts from it
            raise stop.interrupted(checkpoints.last, state.step, checkpoints.save("last.pt"))
        state.batch += 1
        images, masks, loss_inputs = run.inputs(batch)
        taken = step(images, masks, **loss_inputs)
        if taken is None:  # skipped by the guard (host-side): not a step
            continue
        state.step += 1
        if clock is not None:
            clock.step_done()
        window.add(*guard.kept(taken))
        if state.step % log_every == 0:
            guard.at_log_point(window.steps)
            loss = window.read(dist)  # host-device sync, once per log_every steps
            lr = log_train(writer, run.optimizer, loss, state.step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if clock is not None:
            clock.progress_line(epoch, state.step, loss, run.cfg.data.batch_size * dist.world_size)
        if stop.out_of_time():
            out_of_time = True
            break
    if window.steps:
        loss = window.read(dist)
        log_train(writer, run.optimizer, loss, state.step)
    seen = (state.step - steps_before) * run.cfg.data.batch_size * dist.world_size
    images_per_s = seen / max(time.monotonic() - epoch_start, 1e-9)
    writer.add_scalar("train/images_per_s", images_per_s, state.step)
    state.epoch, state.batch = epoch + 1, 0
    return EpochResult(loss, images_per_s, out_of_time)


def log_train(writer: Any, optimizer: torch.optim.Optimizer, loss: float, step: int) -> float:
    """Write ``train/loss`` and ``train/lr`` at ``step``; returns the learning rate."""
    lr = optimizer.param_groups[0]["lr"]
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    return lr
