"""What a model's output channels are, per training target: class logits first, then independent maps.

A model of classes (and the ``boundary`` target) outputs class logits only: one channel (sigmoid) for a binary
problem, K (softmax) for K classes. The ``distance`` target adds, after its one foreground logit, a channel whose
sigmoid regresses each pixel's normalised distance to its object's boundary. Every consumer of logits (losses,
pixel metrics, probabilities, tiling, test-time augmentation) takes ``classes``, the number of leading class
channels (None: all of them), from :func:`class_channels`, so the extra channels are never read as classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The named maps a target adds after its class logits (each one sigmoid channel).
EXTRA_MAPS: dict[str, tuple[str, ...]] = {"boundary": (), "distance": ("distance",)}


def extra_channels(target: str | None) -> int:
    """How many channels ``target`` adds after the class logits (0 for a model of classes)."""
    return len(EXTRA_MAPS.get(target or "", ()))


def class_channels(data: Mapping[str, Any]) -> int | None:
    """The number of leading class channels of the model of the run's ``data`` config, or None when every channel
    is a class logit (the models of classes and of the ``boundary`` target)."""
    target = str(data.get("target", "boundary")) if data.get("labels") == "instances" else None
    if not extra_channels(target):
        return None
    classes = int(data["num_classes"])
    return 1 if classes <= 2 else classes
