"""Run a model over a loader and score it: the loop shared by validation and ``unet-eval``."""

from __future__ import annotations

import math
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


# Per-pixel inputs a loader batch may carry for the loss besides the mask: the weight map of a weighted loss,
# the regression map of the distance target, the affinity maps of the affinities target (unet_train.objects.heads).
LOSS_INPUTS = ("weight", "distance", "affinities")


def probabilities(logits: torch.Tensor, classes: int | None = None) -> torch.Tensor:
    """Logits -> probabilities in float32: of the first ``classes`` channels (None: all) sigmoid for one channel,
    softmax otherwise; every channel after them (a target's regression maps) through its own sigmoid."""
    logits = logits.float()
    head, rest = (logits, None) if classes is None else (logits[:, :classes], logits[:, classes:])
    prob = torch.sigmoid(head) if head.shape[1] == 1 else torch.softmax(head, dim=1)
    return prob if rest is None or not rest.shape[1] else torch.cat([prob, torch.sigmoid(rest)], dim=1)


def logits_of(prob: torch.Tensor, classes: int | None = None) -> torch.Tensor:
    """The inverse of :func:`probabilities`: ``logit(p)`` for sigmoid channels, ``log(p)`` for softmax classes."""
    head = prob.shape[1] if classes is None else classes
    if head == 1:  # every channel a sigmoid
        return torch.logit(prob, eps=1e-7)
    rest = prob[:, head:]
    out = torch.log(prob[:, :head].clamp_min(1e-12))
    return out if not rest.shape[1] else torch.cat([out, torch.logit(rest, eps=1e-7)], dim=1)


class BudgetedForward:
    """Logits of a batch of whole images within a memory budget, as ``unet-predict`` forwards an image.

    The batch goes through the model in one pass where it fits ``memory`` bytes (the model's forward bytes per
    pixel are measured once, :func:`~unet_train.inference.budget.forward_bytes_per_pixel`), else image by image,
    and an image too large for one pass is predicted in tiles that fit (its logits are then those of the blended
    probabilities: ``logit(p)``, or ``log(p)`` for several classes). ``memory=None``: a share of the device's
    free memory (:func:`~unet_train.inference.budget.default_memory`).
    """

    def __init__(
        self, model: nn.Module, runtime: Runtime, memory: int | None = None, classes: int | None = None
    ) -> None:
        self.model, self.runtime, self.memory, self.classes = model, runtime, memory, classes
        self.per_pixel: float | None = None

    def pixels(self, dims: int = 2, channels: int = 1) -> int:
        """The most pixels (voxels of a ``dims``-D input of ``channels`` channels) one forward pass may take."""
        # Imported here: the inference package imports this module (probabilities) for its TTA.
        from unet_train.inference.budget import default_memory, forward_bytes_per_pixel
        from unet_train.inference.tiling import size_multiple

        if self.memory is None:
            self.memory = default_memory(self.runtime.device)[0]
        if self.per_pixel is None:
            multiples = size_multiple(self.model)
            multiples = multiples * dims if len(multiples) == 1 else multiples
            sides = [max(64 if dims == 2 else 16, 2 * m) // m * m for m in multiples]
            # The images' own channels: a model need not have a convolution to read them from.
            probe = self.runtime.to_device(torch.rand(1, channels, *sides), image=True)
            with torch.inference_mode(), self.runtime.autocast():
                self.per_pixel = forward_bytes_per_pixel(self.model, probe)
        return int(self.memory / self.per_pixel)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = math.prod(images.shape[2:])
        fits = self.pixels(images.ndim - 2, images.shape[1])
        if images.shape[0] * pixels <= fits:
            with self.runtime.autocast():
                return self.model(images)
        if pixels <= fits:
            return torch.cat([self(image[None]) for image in images])
        return torch.stack([self.tiled(image) for image in images])

    def tiled(self, image: torch.Tensor) -> torch.Tensor:
        from unet_train.inference.tiling import TiledPredictor

        rt = self.runtime
        predictor = TiledPredictor(
            self.model,
            None,
            device=rt.device,
            channels_last=rt.channels_last,
            autocast_dtype=rt.autocast_dtype,
            fold_bn=False,
            memory=self.memory,
            batch_size=None,
            classes=self.classes,
        )
        prob = predictor.predict(image.float().cpu()).to(rt.device)
        return logits_of(prob[None], self.classes)[0]


class ForwardCache:
    """The :class:`BudgetedForward` of the last :func:`evaluate` call, kept while its model, runtime settings,
    memory budget and classes stay the same: a run measures its model's forward bytes per pixel once, not at
    every validation (weights change between validations, the bytes a forward pass takes do not)."""

    def __init__(self) -> None:
        self.forward: BudgetedForward | None = None
        self.key: tuple[Any, ...] | None = None

    def get(self, model: nn.Module, runtime: Runtime, memory: int | None, classes: int | None) -> BudgetedForward:
        # The runtime's fields, not the object: autotuning may change its layout or precision during a run.
        key = (runtime.device, runtime.autocast_dtype, runtime.channels_last, memory, classes)
        if self.forward is None or self.forward.model is not model or key != self.key:
            self.forward, self.key = BudgetedForward(model, runtime, memory, classes), key
        return self.forward


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    num_classes: int,
    loss_fn: nn.Module | None = None,
    on_batch: BatchHook | None = None,
    memory: int | None = None,
    classes: int | None = None,
    forwards: ForwardCache | None = None,
) -> EvalResult:
    """Score ``model`` on every image of ``loader``.

    ``on_batch(batch, logits)`` sees each batch and its float32 logits on the CPU (to save
    predictions or draw panels). Scores are averaged over images; batches without masks
    (an unlabelled test split) are predicted but not scored. Each batch is forwarded whole where it fits
    ``memory`` bytes per forward pass, else image by image or in tiles (:class:`BudgetedForward`).
    ``classes``: the leading class channels the pixel metrics score (None: all; see objects/heads.py).
    ``forwards``: where a run keeps that forward between its validations (None: a new one for this call).
    """
    forward = (forwards or ForwardCache()).get(model, runtime, memory, classes)
    per_image: list[dict[str, Any]] = []
    loss_sum = torch.zeros((), device=runtime.device)
    loss_batches = 0
    with eval_mode(model):
        for batch in loader:
            images = runtime.to_device(batch["image"], image=True)
            logits = forward(images)
            if "mask" in batch:
                masks = runtime.to_device(batch["mask"])
                if loss_fn is not None:
                    extra = {k: runtime.to_device(batch[k]) for k in LOSS_INPUTS if k in batch}
                    loss_sum += loss_fn(logits.float(), masks, **extra).detach()
                    loss_batches += 1
                class_logits = logits if classes is None else logits[:, :classes]
                counts = confusion_counts(predict_labels(class_logits), masks, num_classes)
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
