"""One training step: forward under autocast, loss, guard, backward, gradient clipping, optimizer and schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unet_train.engine.guard import NonFiniteGuard
from unet_train.engine.runtime import Runtime


class TrainStep:
    """``step(images, masks, **loss_inputs)`` trains on one batch; returns the detached loss, or None when
    the guard skipped the step (host-side guard only: a sync-free skip happens inside the optimizer).

    ``model`` is what the forward runs (DDP- or compile-wrapped); ``params`` is the plain module whose
    gradients are clipped. ``scheduler`` may be None (the benchmark times the step without it).
    """

    def __init__(
        self,
        model: nn.Module,
        params: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        scheduler: Any,
        runtime: Runtime,
        guard: NonFiniteGuard,
        grad_clip: float | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.model = model
        self.params = params
        self.criterion = criterion
        self.optimizer = optimizer
        self.scaler = scaler
        self.scheduler = scheduler
        self.runtime = runtime
        self.guard = guard
        self.grad_clip = grad_clip
        self.cuda_graphs = cuda_graphs  # trainer.compile_mode=reduce-overhead: the model replays CUDA graphs

    @classmethod
    def for_run(cls, run: Any, guard: NonFiniteGuard) -> TrainStep:
        """The step of ``run`` (a :class:`~unet_train.engine.run.Run`)."""
        tcfg = run.cfg.trainer
        cuda_graphs = bool(tcfg.compile) and tcfg.get("compile_mode") == "reduce-overhead"
        return cls(
            run.train_model, run.model, run.criterion, run.optimizer, run.scaler, run.scheduler, run.runtime, guard,
            tcfg.grad_clip, cuda_graphs,
        )  # fmt: skip

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, **loss_inputs: torch.Tensor) -> torch.Tensor | None:
        if self.cuda_graphs:
            # A new iteration: the previous step's graph outputs may be overwritten (the loss kept for logging
            # was computed outside the graph, so it stays valid).
            torch.compiler.cudagraph_mark_step_begin()
        with self.runtime.autocast():
            outputs = self.model(images)
        loss = self.criterion(outputs, masks, **loss_inputs)  # outside autocast, as the losses are written
        if not self.guard.admit(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            # Clipping needs true gradients: unscale first (a no-op without float16 loss scaling).
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params.parameters(), self.grad_clip)
        self.guard.arm(self.optimizer, self.scaler)
        self.scaler.step(self.optimizer)  # skips the update when found_inf is set (fp16 overflow, sync-free NaN)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()
