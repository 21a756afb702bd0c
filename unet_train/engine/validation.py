"""Validation during training: score the validation split, log it, and track the best monitored value."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Sampler
from torch.utils.tensorboard import SummaryWriter

from unet_train.data.foreground import boundary_positive
from unet_train.engine import distributed
from unet_train.engine.evaluate import ForwardCache, evaluate
from unet_train.engine.objects import ObjectReport, instance_target, params_for
from unet_train.engine.report import EvalReport, volume_spacing
from unet_train.engine.tensorboard import panel
from unet_train.errors import ConfigError
from unet_train.objects.heads import affinity_offsets, class_channels
from unet_train.objects.params import OBJECT_METRICS

log = logging.getLogger(__name__)

# V-Rand and V-Info are F-scores (1.0 = perfect, see metrics/isbi.py), so they are maximised.
MINIMIZED = ("loss", "error", "hd95")
# What unet-eval's EvalReport adds (binary tasks): a threshold sweep per image and distance transforms,
# seconds per image on a CPU, so validation computes them only when one of them is monitored.
CHALLENGE_KEYS = ("vrand", "vrand_threshold", "vinfo", "vinfo_threshold", "hd95")
VOLUME_KEYS = ("vrand_3d", "vrand_3d_threshold", "vinfo_3d", "vinfo_3d_threshold")  # volumes: 3D segments
# trainer.val_subset's sample is drawn with this seed, not the run's: every run of a sweep (and every validation
# of a run, resumed or not) scores the same images, so their best values compare.
VAL_SUBSET_SEED = 0


def validation_subset(size: int, subset: int | None) -> list[int] | None:
    """The items of a validation split of ``size`` images each validation scores: a fixed sample of ``subset`` of
    them (``trainer.val_subset``; sorted), or None for all of them."""
    if subset is None or subset >= size:
        return None
    return sorted(np.random.default_rng(VAL_SUBSET_SEED).choice(size, subset, replace=False).tolist())


class ItemSampler(Sampler[int]):
    """The given items of a split, in order: this rank's share of a validation subset."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)


def validation_sampler(dist: distributed.Distributed, size: int, subset: int | None) -> Sampler | None:
    """What each rank validates: its shard (every ``world_size``-th item) of the split or of its fixed subset."""
    items = validation_subset(size, subset)
    if items is None:
        return dist.eval_sampler(size)
    return ItemSampler(items[dist.rank :: dist.world_size])


def validation_keys(num_classes: int, instances: bool = False, spatial_dims: int = 2) -> list[str]:
    """The ``val/*`` keys a validation can report for a task of ``num_classes`` classes (``instances``: and the
    object metrics of an instance model; ``spatial_dims=3``: and the 3D V-Rand/V-Info of volumes)."""
    keys = ["loss", "dice", "iou", "pixel_error", *(OBJECT_METRICS if instances else ())]
    if num_classes > 2:
        keys += [f"{name}_{k}" for k in range(1, num_classes) for name in ("dice", "iou")]
    else:
        keys += [*CHALLENGE_KEYS, *(VOLUME_KEYS if spatial_dims == 3 else ())]
    return [f"val/{key}" for key in keys]


def check_monitor(monitor: str, num_classes: int, instances: bool = False, spatial_dims: int = 2) -> None:
    """Refuse, before any training, a ``monitor`` that validation cannot report."""
    keys = validation_keys(num_classes, instances, spatial_dims)
    if monitor not in keys:
        raise ConfigError(f"monitor={monitor!r} is not a validation metric; choose one of {', '.join(keys)}.")


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """``min`` for losses and errors, ``max`` for scores, unless ``monitor_mode`` says otherwise."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError(f"monitor_mode={mode!r} must be auto, min or max.")
    return "min" if any(word in monitor for word in MINIMIZED) else "max"


def improved(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def track_best(state: Any, monitor: str, metrics: dict[str, float], mode: str) -> bool:
    """Update ``state`` (a TrainState) with this validation's ``metrics[monitor]``; returns whether it improved."""
    value = metrics.get(monitor)
    if value is None:
        raise ConfigError(f"monitor={monitor!r} is not a validation metric; choose one of {', '.join(metrics)}.")
    if improved(value, state.best, mode):
        state.best, state.best_epoch, state.stale_validations = value, state.epoch, 0
        return True
    state.stale_validations += 1
    return False


def validate(
    cfg: DictConfig,
    model: torch.nn.Module,
    loader: Any,
    runtime: Any,
    criterion: torch.nn.Module,
    num_classes: int,
    writer: SummaryWriter,
    state: Any,
    dist: distributed.Distributed | None = None,
    forwards: ForwardCache | None = None,
    budget: Any = None,
) -> dict[str, float]:
    """Score the validation split; log ``val/*`` scalars and image panels at the current step (``forwards``: the
    run's :class:`~unet_train.engine.evaluate.ForwardCache`, so its validations share one measured forward;
    ``budget``, the run's :class:`~unet_train.engine.budget.TimeBudget`: told what an instance model's
    post-processing cost)."""
    panels: list[torch.Tensor] = []
    wanted = cfg.trainer.num_image_panels
    extras = None
    if cfg.monitor.removeprefix("val/") in (*CHALLENGE_KEYS, *VOLUME_KEYS):
        spacing, _ = volume_spacing(getattr(loader, "dataset", None))  # HD95 of volumes in their units, as unet-eval
        extras = EvalReport(num_classes, boundary_positive=boundary_positive(cfg.data), spacing=spacing)
    target, classes = instance_target(cfg.data), class_channels(cfg.data)
    objects = (
        None
        if target is None
        else ObjectReport(target, params_for(cfg, target, None), classes=classes, offsets=affinity_offsets(cfg.data))
    )

    def collect(batch: dict[str, Any], logits: torch.Tensor) -> None:
        class_logits = logits if classes is None else logits[:, :classes]  # without a distance map
        for i in range(len(batch["name"])):
            if len(panels) < wanted:
                mask = batch["mask"][i] if "mask" in batch else None
                panels.append(panel(batch["image"][i], mask, class_logits[i]))
        if extras is not None:
            extras.on_batch(batch, class_logits)
        if objects is not None:
            objects.on_batch(batch, logits)

    result = evaluate(
        model, loader, runtime, num_classes, loss_fn=criterion, on_batch=collect, classes=classes, forwards=forwards
    )
    if objects is not None:
        objects.finish(result)  # per-image rows too, which DDP's gather averages
        if budget is not None:
            budget.postprocess_s = objects.seconds  # the cost of one point of the tuning after training
    if extras is not None:
        extras.finish(result)  # adds per-image rows too, so DDP's gather averages them like the others
    merged = dist.gather_eval(result) if dist is not None else result.metrics  # over all ranks' shards
    metrics = {f"val/{k}": v for k, v in merged.items()}
    for key, value in metrics.items():
        writer.add_scalar(key, value, state.step)
    for i, image in enumerate(panels):
        writer.add_image(f"val/panel_{i}", image, state.step)
    return metrics


def validate_epoch(
    run: Any, writer: Any, checkpoints: Any, epochs_bar: Any, train_loss: float, images_per_s: float
) -> dict[str, float]:
    """Validate ``run`` after its epoch, track the best value (``best.pt`` written on improvement), log the epoch."""
    cfg, state = run.cfg, run.state
    run.dist.sync_buffers(run.model)  # BatchNorm statistics drift apart per rank; all validate with rank 0's
    # Validation runs the plain module: DDP's forward expects every rank to run the same batches (each
    # rank scores its own shard), and a compiled model would recompile for eval mode and for every new
    # validation image size, which costs more than it saves on a few images.
    metrics = validate(cfg, run.model, run.val_loader, run.runtime, run.criterion, run.data.num_classes, writer,
                       state, run.dist, run.val_forwards, run.budget)  # fmt: skip
    if run.dist.agree(track_best(state, cfg.monitor, metrics, run.mode)):  # saving best.pt is a collective
        checkpoints.save("best.pt")
    best = math.nan if state.best is None else state.best  # None while every value so far was NaN
    epochs_bar.set_postfix({cfg.monitor: f"{metrics[cfg.monitor]:.4f}", "best": f"{best:.4f}"})
    log.info(
        "epoch %d  train/loss %.4f  %s  (%.1f images/s)",
        state.epoch,
        train_loss,
        "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        images_per_s,
    )
    return metrics
