"""A split in memory and the dataset of its items: augmentation, then tensors (and instance targets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unet_train.data.sampling import reseed_transform


@dataclass
class Split:
    """Images of one split ``(H, W)`` or ``(H, W, C)``, int ``(H, W)`` masks (or None), names.

    ``load_split`` returns the images as stored (any dtype); :meth:`SegmentationData.split` returns
    them normalised: float32, or uint8 where the scheme is plain division by 255 (done in
    :func:`image_to_tensor`, after augmentation). Mask values are classes ``0..num_classes-1``, or
    ``IGNORE_INDEX`` where a pixel is unlabelled; instance labels hold object ids instead (float32, see
    :mod:`unet_train.data.instances`).
    """

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)


class SegmentationDataset(Dataset):
    """Items of one split, augmented by an albumentations pipeline (or none)."""

    def __init__(
        self,
        split: Split,
        transform: Callable[..., dict[str, Any]] | None = None,
        sample_weight: Callable[[np.ndarray], np.ndarray] | None = None,
        to_target: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] | None = None,
    ) -> None:
        self.split = split
        self.transform = transform
        # Instance labels: the augmented id map -> (training target, ids, extra target maps such as
        # ``distance``), after augmentation so that every geometric transform moves the ids (nearest-neighbour)
        # before boundaries and distances are drawn.
        self.to_target = to_target
        # Per-pixel loss weights from the augmented mask (a weighted loss's ``sample_weight``),
        # computed here so that the loader's workers do it in parallel; returned as ``weight``.
        self.sample_weight = sample_weight

    def __len__(self) -> int:
        return len(self.split)

    @property
    def has_masks(self) -> bool:
        return self.split.masks is not None

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        # An EpochSampler passes (index, item_seed): the augmentation of this item is then fixed
        # by the seed alone, whichever worker process draws it.
        if isinstance(index, tuple):
            index, item_seed = index
            reseed_transform(self.transform, item_seed)
        image = self.split.images[index]
        mask = self.split.masks[index] if self.split.masks is not None else None
        if self.transform is not None:
            if mask is None:
                image = self.transform(image=image)["image"]
            else:
                out = self.transform(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
        item: dict[str, Any] = {"image": image_to_tensor(image), "name": self.split.names[index]}
        if mask is not None:
            if self.to_target is not None:
                mask, ids, extras = self.to_target(mask)
                item["instances"] = array_to_tensor(ids, np.int64)
                item.update({name: array_to_tensor(value, np.float32) for name, value in extras.items()})
            item["mask"] = array_to_tensor(mask, np.int64)
            if self.sample_weight is not None:
                item["weight"] = array_to_tensor(self.sample_weight(mask), np.float32)
        return item


def array_to_tensor(array: np.ndarray, dtype: Any = None) -> torch.Tensor:
    """``torch.from_numpy`` of a contiguous ``array`` (as ``dtype``), copied when it is read-only.

    The cached splits are read-only; a tensor on their memory could be changed in place, and torch
    warns about each one (``The given NumPy array is not writable``).
    """
    array = np.ascontiguousarray(array, dtype=dtype)
    # A flip along an axis of length 1 (a one-plane crop) leaves a negative stride that numpy still calls
    # contiguous and torch refuses: copied as well.
    fresh = array.flags.writeable and min(array.strides, default=0) >= 0
    return torch.from_numpy(array if fresh else array.copy())


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, C)`` -> float32 ``(C, H, W)``; uint8 is divided by 255, float is kept as it is."""
    if image.ndim == 2:
        image = image[..., None]
    tensor = array_to_tensor(image.transpose(2, 0, 1))
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()
