"""Run a model over a loader and score it: the loop shared by validation and ``unet-eval``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unet_train.engine.runtime import Runtime, eval_mode
from unet_train.metrics import confusion_counts, overlap_scores, predict_labels

BatchHook = Callable[[dict[str, Any], torch.Tensor], None]


@dataclass
class EvalResult:
    """Mean metrics over images (``loss`` included when a loss was given) and the per-image rows."""

    metrics: dict[str, float]
    per_image: list[dict[str, Any]] = field(default_factory=list)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits -> class probabilities in float32: sigmoid for one channel, softmax otherwise."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    num_classes: int,
    loss_fn: nn.Module | None = None,
    on_batch: BatchHook | None = None,
) -> EvalResult:
    """Score ``model`` on every image of ``loader``.

    ``on_batch(batch, logits)`` sees each batch and its float32 logits on the CPU (to save
    predictions or draw panels). Scores are averaged over images; batches without masks
    (an unlabelled test split) are predicted but not scored.
    """
    per_image: list[dict[str, Any]] = []
    loss_sum = torch.zeros((), device=runtime.device)
    loss_batches = 0
    with eval_mode(model):
        for batch in loader:
            images = runtime.to_device(batch["image"], image=True)
            with runtime.autocast():
                logits = model(images)
            if "mask" in batch:
                masks = runtime.to_device(batch["mask"])
                if loss_fn is not None:
                    loss_sum += loss_fn(logits.float(), masks).detach()
                    loss_batches += 1
                counts = confusion_counts(predict_labels(logits), masks, num_classes)
                scores = {k: v.cpu().tolist() for k, v in overlap_scores(counts).items()}
                for i, name in enumerate(batch["name"]):
                    per_image.append({"name": name, **{k: float(v[i]) for k, v in scores.items()}})
            if on_batch is not None:
                on_batch(batch, logits.float().cpu())
    metrics: dict[str, float] = {}
    if per_image:
        keys = [k for k in per_image[0] if k != "name"]
        metrics = {k: sum(row[k] for row in per_image) / len(per_image) for k in keys}
    if loss_batches:
        metrics["loss"] = float(loss_sum.item()) / loss_batches
    return EvalResult(metrics=metrics, per_image=per_image)
