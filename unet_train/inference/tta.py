"""Test-time augmentation: average class probabilities over the 8 flips and 90-degree rotations.

Used by ``unet-eval tta=true`` (through :class:`TTALogits`, which looks like the model to the
evaluation loop) and by ``unet-predict tta=true`` (through :func:`predict_probabilities` on each
tile batch). It costs 8 forward passes per input.
"""

from __future__ import annotations

import torch
from torch import nn

from unet_train.engine.evaluate import logits_of, probabilities

# (quarter turns, horizontal flip): the dihedral group of the square, identity first.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def _forward(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def predict_probabilities(
    model: nn.Module, images: torch.Tensor, tta: bool = False, classes: int | None = None
) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` in float32 (K = 1 for a binary model), optionally averaged over TTA.
    ``classes``: the leading class channels (None: all), see :func:`unet_train.engine.evaluate.probabilities`.

    The transforms run one after the other rather than stacked into one batch, so memory stays that
    of a single forward pass. Rotations of a non-square input change its shape; the model pads any size.
    """
    if not tta:
        return probabilities(model(images), classes)
    total = None
    for k, flip in DIHEDRAL:
        prob = _inverse(probabilities(model(_forward(images, k, flip)), classes), k, flip)
        total = prob if total is None else total.add_(prob)
    assert total is not None
    return total.div_(len(DIHEDRAL))


class TTALogits(nn.Module):
    """Wraps a model so that ``forward`` returns the logits of its TTA-averaged probabilities.

    Binary models get ``logit(p)``, multi-class models ``log(p)``; sigmoid or softmax of these gives
    back the averaged probabilities, so code that expects logits (the evaluation loop) works unchanged.
    """

    def __init__(self, model: nn.Module, classes: int | None = None) -> None:
        super().__init__()
        self.model, self.classes = model, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(predict_probabilities(self.model, x, tta=True, classes=self.classes), self.classes)
