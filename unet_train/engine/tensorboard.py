"""TensorBoard helpers: image panels and hparams."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unet_train.labels import valid_pixels
from unet_train.metrics import predict_labels


def display_grey(image: torch.Tensor) -> torch.Tensor:
    """A ``(C, H, W)`` model input as one grey ``(H, W)`` picture in [0, 1] (for panels, not for numbers).

    Inputs already in [0, 1] are shown as they are; others (z-scores, unclipped percentiles) are
    stretched by their own min and max.
    """
    grey = image.float()
    grey = grey.mean(0) if grey.shape[0] != 1 else grey[0]
    low, high = float(grey.min()), float(grey.max())
    if low < 0.0 or high > 1.0:
        grey = (grey - low) / max(high - low, 1e-12)
    return grey


def panel(image: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """One (3, H, 3W) panel: image | ground truth | prediction, grey in [0, 1]; of a volume, its middle plane."""
    if image.dim() == 4:  # (C, D, H, W)
        middle = image.shape[1] // 2
        image, logits = image[:, middle], logits[:, middle]
        mask = None if mask is None else mask[middle]
    grey = display_grey(image)
    num_classes = max(logits.shape[0], 2)
    pred = predict_labels(logits.unsqueeze(0))[0].float() / (num_classes - 1)
    if mask is None:
        truth = torch.zeros_like(pred)
    else:  # unlabelled pixels mid-grey
        truth = torch.where(valid_pixels(mask), mask.float() / (num_classes - 1), torch.full_like(pred, 0.5))
    row = torch.cat([grey, truth, pred], dim=1)
    return row.unsqueeze(0).expand(3, -1, -1)


HPARAM_KEYS = (
    "model._target_",
    "model.encoder",
    "model.skip",
    "model.deep_supervision",
    "model.base_channels",
    "model.depth",
    "data._target_",
    "data.batch_size",
    "data.patch_size",
    "loss._target_",
    "loss.bce_weight",
    "loss.dice_weight",
    "optim._target_",
    "optim.lr",
    "optim.weight_decay",
    "sched._target_",
    "trainer.max_epochs",
    "trainer.precision",
    "seed",
)


def hparams(cfg: DictConfig, precision: str | None = None) -> dict[str, Any]:
    """Flat scalars of the config that tell runs of a sweep apart (for TensorBoard's HParams tab); ``precision``:
    the one the run trained in, for ``trainer.precision`` (``auto`` is measured per model, so runs of one sweep
    may differ in it)."""
    out: dict[str, Any] = {}
    for key in HPARAM_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if isinstance(value, str) and key.endswith("_target_"):
            value = value.rsplit(".", 1)[-1]
        out[key.replace("._target_", "")] = value if isinstance(value, (int, float, str, bool)) else str(value)
    if precision is not None and "trainer.precision" in out:
        out["trainer.precision"] = precision
    return out
