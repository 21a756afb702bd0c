"""A training step timed on copies of the run's model and loss: ``trainer.channels_last/precision=auto``'s
measurement (:func:`tune_training`) and the steps unet-plan, the loader-worker choice and the benchmarks time."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import default_collate

from unet_train.build import build_optimizer
from unet_train.config import TrainerConfig
from unet_train.engine import autotune, distributed
from unet_train.engine.evaluate import LOSS_INPUTS
from unet_train.engine.guard import NonFiniteGuard, can_skip_on_device
from unet_train.engine.runtime import Runtime, to_channels_last
from unet_train.engine.state import TrainState
from unet_train.engine.step import TrainStep

log = logging.getLogger(__name__)


def tune_training(
    cfg: DictConfig,
    runtime: Runtime,
    model: nn.Module,
    criterion: nn.Module,
    data: Any,
    dist: distributed.Distributed,
    resumed: autotune.Setting | None = None,
) -> tuple[Runtime, float | None]:
    """``trainer.channels_last/precision=auto`` on a CPU: this run's own step timed in each setting, on copies of
    the model and loss and a batch of its own training samples (engine/autotune.py). Under DDP rank 0 measures
    and every rank takes its choice. Also the chosen setting's seconds per step where they were measured.

    ``resumed``: the setting a resumed run's checkpoint trained in; what is ``auto`` takes it, unmeasured, so the
    run goes on as it began (every rank reads the same checkpoint)."""
    if not runtime.auto:
        return runtime, None
    if resumed is not None:
        kept = autotune.Setting(
            resumed.channels_last if "channels_last" in runtime.auto else runtime.channels_last,
            resumed.precision if "precision" in runtime.auto else runtime.precision,
        )
        words = {"channels_last": f"channels_last {'on' if kept.channels_last else 'off'}",
                 "precision": f"precision {'bfloat16' if kept.precision == 'bf16' else 'float32'}"}  # fmt: skip
        log.info(
            "%s for training, as the resumed run trained (%s=auto: not measured again; set a value to change it)",
            ", ".join(words[name] for name in runtime.auto), "/".join(f"trainer.{name}" for name in runtime.auto),
        )  # fmt: skip
        return autotune.with_setting(runtime, kept), None
    chosen, seconds = runtime, dict[str, float]()
    if dist.is_main:
        with autotune.preserved_rng():  # drawing the sample must not move the run's random streams
            batch = default_collate([data.dataset("train")[0]] * int(cfg.data.batch_size))

        make_step, what = trial_steps(cfg, model, criterion, batch)
        chosen, seconds = autotune.tune(runtime, "training", make_step, what, tuple(batch["image"].shape))
    agreed = autotune.agree(dist, runtime, chosen)
    return agreed, seconds.get(autotune.Setting(agreed.channels_last, agreed.precision).name)


def trial_steps(
    cfg: DictConfig, model: nn.Module, criterion: nn.Module, batch: dict[str, Any]
) -> tuple[Callable[[Runtime], Callable[[], object]], dict[str, Any]]:
    """What :func:`autotune.tune` needs to time training: ``make_step(runtime)``, the :func:`trial_step` of a copy of
    ``model`` in that runtime's layout on ``batch`` (``image``, ``mask``, optional ``weight``), and the step's
    identity for the cache (the model's and loss's structure, the optimizer, clipping)."""

    def make_step(rt: Runtime) -> Callable[[], object]:
        trial = copy.deepcopy(model)
        step = trial_step(cfg, to_channels_last(trial) if rt.channels_last else trial, copy.deepcopy(criterion), rt)
        images, masks = rt.to_device(batch["image"], image=True), rt.to_device(batch["mask"])
        extra = {k: rt.to_device(batch[k]) for k in LOSS_INPUTS if k in batch}
        return lambda: step(images, masks, **extra)

    tcfg = cfg.get("trainer") or OmegaConf.structured(TrainerConfig)
    what = {"model": repr(model), "loss": repr(criterion), "optim": cfg.optim.get("_target_"),
            "grad_clip": tcfg.grad_clip is not None}  # fmt: skip
    return make_step, what


def trial_step(
    cfg: DictConfig, model: nn.Module, criterion: nn.Module, runtime: Runtime, forward: nn.Module | None = None
) -> TrainStep:
    """The step ``fit`` takes, on ``model`` with an optimizer of its own (``cfg.optim``, fused as ``fit`` builds it)
    and a guard, without a schedule: what a measurement times (autotune, unet-plan, scripts/benchmark.py).
    ``forward``: a compiled wrapper of ``model`` to run instead."""
    tcfg = cfg.get("trainer") or OmegaConf.structured(TrainerConfig)
    optimizer = build_optimizer(cfg, model, fused=True)
    guard = NonFiniteGuard(
        tcfg.max_nonfinite_steps, sync_free=can_skip_on_device(runtime.device, optimizer), device=runtime.device,
        state=TrainState(), checkpoint=Path("last.pt"),
    )  # fmt: skip
    scaler = runtime.grad_scaler()
    # not ``forward or model``: a compiled module's truth value asks for its len()
    train_model = model if forward is None else forward
    return TrainStep(train_model, model, criterion, optimizer, scaler, None, runtime, guard, tcfg.grad_clip)
