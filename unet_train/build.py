"""Build the run's objects from its config: data, model, loss, optimizer, scheduler."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn

from unet_train.data.base import SegmentationData
from unet_train.data.limits import available_memory
from unet_train.data.sections import check_context_slices
from unet_train.errors import ConfigError, UserError
from unet_train.losses import DeepSupervisionLoss
from unet_train.losses.affinities import ForegroundAffinityLoss
from unet_train.losses.distance import ForegroundDistanceLoss
from unet_train.models.anisotropy import pool_factors_for_spacing
from unet_train.objects.heads import class_channels, extra_channels

log = logging.getLogger(__name__)


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own user errors and names the config group on others."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        reason = " ".join(str(exc).split())  # Hydra's message spans lines (the error, then full_key)
        raise ConfigError(f"Could not build {what} from its config: {reason}") from exc


def build_data(cfg: DictConfig) -> SegmentationData:
    """The data module of ``cfg.data``."""
    data = _instantiate(cfg, "data")
    if not isinstance(data, SegmentationData):
        raise ConfigError(f"data._target_={cfg.get('_target_')} does not build a SegmentationData.")
    return data


def resolve_data_config(cfg: DictConfig, data: SegmentationData) -> None:
    """Write what the data decided into ``cfg.data``, before the model is built from it.

    ``in_channels``/``num_classes`` given as ``auto`` become numbers, and ``data.normalize``
    becomes the full spec with its ``per: dataset`` statistics (computed on the training split):
    the checkpoint's resolved config then carries them, so unet-eval and unet-predict apply
    exactly the same. Loads the training split (it is cached).
    """
    data.split("train")
    with open_dict(cfg):
        cfg.data.in_channels = data.in_channels
        cfg.data.num_classes = data.num_classes
        cfg.data.normalize = dict(data.normalize)
        if "labels" in cfg.data:  # labels=auto resolved: evaluation and prediction read the ids the same way
            cfg.data.labels = "classes" if getattr(data, "instance_target", None) is None else "instances"
        target = getattr(data, "instance_target", None)
        if target is not None and getattr(data, "device_augment", None) is not None:
            # the target (classes, distance maps) is drawn from the ids in the workers; moving it afterwards on
            # the device would leave the ids and the distance maps behind
            raise ConfigError(
                "data.device_augment augments masks after the instance target was drawn from the object ids; "
                "set data.device_augment=null to train on instance labels (the workers augment the ids)."
            )
        if target == "affinities" and "affinity_offsets" in cfg.data:  # null (a volume's default) resolved too
            cfg.data.affinity_offsets = [list(offset) for offset in data.affinity_offsets or []]
        extra = extra_channels(target, cfg.data)
        if extra and "out_channels" in cfg.model:  # the target's maps after the class logits (objects/heads.py)
            cfg.model.out_channels = (1 if data.num_classes <= 2 else data.num_classes) + extra
        if getattr(data, "spatial_dims", 2) == 3:
            _volume_model(cfg, data)
        if getattr(data, "context_slices", 0):
            _context_model(cfg, data)


def _context_model(cfg: DictConfig, data: Any) -> None:
    """2.5D: a 2D model of ``(2k + 1) * C`` input channels, the sections stacked section-major."""
    check_context_slices(data.context_slices, int(cfg.model.get("spatial_dims", 2)))
    channels = (2 * data.context_slices + 1) * data.in_channels
    cfg.model.in_channels = channels
    log.info(
        "model.in_channels=%d: data.context_slices=%d gives %d sections of %d channel(s) each",
        channels, data.context_slices, 2 * data.context_slices + 1, data.in_channels,
    )  # fmt: skip


def _volume_model(cfg: DictConfig, data: Any) -> None:
    """``model.spatial_dims=3`` for volumes, and ``model.pool_factors`` (when null) from the voxel spacing."""
    if cfg.model.get("spatial_dims", 2) != 3:
        log.info("model.spatial_dims=3: the data are volumes (data.spatial_dims=3)")
        cfg.model.spatial_dims = 3
    if cfg.model.get("pool_factors") is None and "depth" in cfg.model:
        factors, reasons = pool_factors_for_spacing(data.spacing, data.patch, int(cfg.model.depth))
        cfg.model.pool_factors = factors
        log.info(
            "model.pool_factors=%s from the voxel spacing %s (z, y, x) and patch %s%s",
            factors, list(data.spacing), list(data.patch), "; not pooled: " + "; ".join(reasons) if reasons else "",
        )  # fmt: skip


def build_model(cfg: DictConfig) -> nn.Module:
    """The model of ``cfg.model``, refused in one line when its weights alone would not fit in memory."""
    if torch.empty(()).device.type != "meta":  # built on the meta device (a checkpoint's shape check): no memory
        check_model_memory(cfg)
    return _instantiate(cfg, "model")


def check_model_memory(cfg: DictConfig) -> None:
    """Count the weights of ``cfg.model`` on the ``meta`` device (no memory) and refuse a model whose float32
    weights exceed the free memory: ``model.depth=40`` would otherwise be killed by the kernel, unexplained."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in _instantiate(cfg, "model").parameters())
    except ConfigError as exc:
        if "overflow" not in str(exc):  # a config error of another kind: building for real says it the same way
            raise
        count = None  # more weights than a tensor's size can hold
    free = available_memory()
    if count is not None and 4 * count <= free:
        return
    size = "more weights than a tensor can hold" if count is None else (
        f"{count:.3g} weights ({4 * count / 2**30:,.1f} GiB in float32)")  # fmt: skip
    raise ConfigError(
        f"The model asked for (model.depth={cfg.get('depth')}, model.base_channels={cfg.get('base_channels')}) has "
        f"{size}, more than the {free / 2**30:.1f} GiB of free memory; lower model.depth or model.base_channels."
    )


def build_loss(cfg: DictConfig) -> nn.Module:
    """The loss of ``cfg.loss``, with the distance target's regression term (``data.target=distance``), wrapped in
    DeepSupervisionLoss when the model is deeply supervised."""
    loss = _instantiate(cfg.loss, "loss")
    if class_channels(cfg.data) is not None:  # distance, affinities: the class loss scores the foreground logit
        affinities = str(cfg.data.get("target")) == "affinities"
        loss = ForegroundAffinityLoss(loss) if affinities else ForegroundDistanceLoss(loss)
    if cfg.model.get("deep_supervision", False):
        loss = DeepSupervisionLoss(loss, cfg.get("deep_supervision_weights"))
    return loss


def build_optimizer(cfg: DictConfig, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """``cfg.optim`` is a ``_partial_`` optimizer; no weight decay on norms and biases.

    ``fused``: use the optimizer's fused kernel (``fused=True``: Adam, AdamW, SGD) unless its config
    sets ``fused`` itself (``optim.fused=false``; null leaves the choice here) or the parameters'
    device has none (CPUs before torch 2.4). One pass over
    the weights per step instead of several (on the CPU a base-32 UNet's Adam step takes 7 ms
    instead of 22), and on CUDA a fused optimizer can skip a step on a device-side flag (see ``fit``).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    factory = _instantiate(cfg.optim, "optim")
    target = getattr(factory, "func", None)
    accepts_fused = target is not None and "fused" in inspect.signature(target).parameters
    weight_decay = cfg.optim.get("weight_decay", 0.0) or 0.0
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if fused and cfg.optim.get("fused") is None and accepts_fused:
        try:
            return functools.partial(factory, fused=True)(groups)
        except RuntimeError:  # no fused kernel for these parameters' device in this torch
            pass
    return factory(groups)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, progress: Any = None) -> Any:
    """``cfg.sched`` is a ``_partial_`` factory ``(optimizer, total_steps[, progress]) -> LRScheduler``.

    ``progress`` (the time budget's share spent, see ``configs/sched``) goes to a factory that takes it.
    """
    factory = _instantiate(cfg.sched, "sched")
    target = getattr(factory, "func", factory)
    try:
        takes_progress = "progress" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_progress = False
    if progress is not None and takes_progress:
        return factory(optimizer, total_steps=total_steps, progress=progress)
    return factory(optimizer, total_steps=total_steps)
