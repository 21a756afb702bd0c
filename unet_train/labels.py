"""Label conventions shared by the data, the losses and the metrics: the ignore value.

Unlabelled pixels (``data.ignore_index`` in a mask file, or a zero in a ``valid/`` mask) hold
:data:`IGNORE_INDEX` in every mask from loading on: through albumentations (nearest-neighbour
for masks), the device-side augmentation, the deep-supervision resizing, the losses and the
metrics. Losses and metrics derive their ``valid`` map from it with :func:`valid_pixels`, so
a mask is the only thing that travels and nothing else has to follow the augmentation.
"""

from __future__ import annotations

import torch

# The largest uint8 value: masks stay uint8 for the augmentation, and no class can use it
# (data.num_classes is at most 255, classes 0..254).
IGNORE_INDEX = 255
MAX_CLASSES = IGNORE_INDEX


def valid_pixels(target: torch.Tensor) -> torch.Tensor:
    """Boolean map of the labelled pixels of an integer target (``target != IGNORE_INDEX``), same shape."""
    return target != IGNORE_INDEX


def labelled_target(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``target`` with its ignored pixels set to class 0, so that one-hot codes and indexing stay in range.

    Those pixels must still be left out by ``valid``; the 0 only keeps the arithmetic defined.
    """
    return target.masked_fill(~valid, 0)
