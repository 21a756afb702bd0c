"""2.5D: a 2D model that sees ``data.context_slices=k`` neighbouring sections on each side as channels.

The conventions, the same in training, ``unet-eval``, ``unet-predict`` and ``unet-export``:

- ``k`` sections on *each* side: the model sees ``2k + 1`` sections, ``z - k .. z + k``, and predicts the mask
  of the centre one, ``z``. ``k = 0`` is a plain 2D model.
- Channels are section-major: channel ``j * C + c`` is channel ``c`` of section ``z - k + j`` (``j = 0 .. 2k``),
  so a grey volume's channels are the sections in order, the centre one in the middle.
- At a volume's ends the missing neighbours are mirrored about the end section without repeating it
  (``z = -1`` reads section 1, ``z = depth`` reads ``depth - 2``: numpy's ``reflect``, OpenCV's
  BORDER_REFLECT_101, as the tiles' padding); a volume of one section repeats it.
- Each section is scaled with its volume's ``data.normalize`` (``per: image`` statistics of the whole volume)
  before the sections are stacked, so every channel is scaled alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unet_train.data.dataset import array_to_tensor
from unet_train.data.normalize import resolve_spec
from unet_train.data.sampling import reseed_transform
from unet_train.data.volume_case import crop_origin, item_seed
from unet_train.errors import ConfigError

Block = tuple[int, int, int, int]  # y0, x0, height, width of the window read in each section


def check_context_slices(value: Any, spatial_dims: int = 2) -> int:
    """``data.context_slices`` as an int >= 0, refused in one line when it is not one or the model is 3D."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"data.context_slices={value!r} must be a whole number of sections on each side of the centre one, "
            "0 (a plain 2D model) or more."
        )
    if value and spatial_dims == 3:
        raise ConfigError(
            f"data.context_slices={value} stacks neighbouring sections as the channels of a 2D model; a 3D model "
            "sees them already: set data.context_slices=0, or data.spatial_dims=2 (and model.spatial_dims=2)."
        )
    return value


def context_indices(z: int, depth: int, k: int) -> list[int]:
    """The ``2k + 1`` section indices ``z - k .. z + k``, mirrored at the ends without repeating the end section."""
    if depth == 1:
        return [0] * (2 * k + 1)
    period = 2 * (depth - 1)
    out = []
    for i in range(z - k, z + k + 1):
        i %= period  # reflection is periodic: a context wider than the volume bounces back and forth
        out.append(period - i if i >= depth else i)
    return out


class SectionSlab:
    """The sections that centre sections ``z0 .. z1 - 1`` of ``cases`` need (each with its ``k`` neighbours on each
    side), normalised and read once: one contiguous block per case in ``window``, the slab's sections plus ``k`` on
    each side clipped to the volume (the mirrored indices never leave it). ``cases`` are the same volume scaled by
    each normalisation of an ensemble, or one case."""

    def __init__(self, cases: Sequence[Any], k: int, z0: int, z1: int, window: Block) -> None:
        self.k, self.depth = k, cases[0].shape[0]
        needed = [i for z in range(z0, z1) for i in context_indices(z, self.depth, k)]
        self.low, high = min(needed), max(needed)
        y0, x0, height, width = window
        self.blocks = [case.read_image((self.low, y0, x0), (high - self.low + 1, height, width)) for case in cases]

    def sections(self, z: int) -> list[np.ndarray]:
        """The sections ``z - k .. z + k`` of each case: ``(2k + 1, h, w, C)`` float32."""
        indices = np.asarray(context_indices(z, self.depth, self.k)) - self.low
        return [block[indices] for block in self.blocks]

    def image(self, z: int) -> np.ndarray:
        """Section ``z`` as a 2.5D model's input ``(h, w, (2k + 1) x C)`` (section-major), each case's in turn."""
        return np.concatenate([stack_sections(block) for block in self.sections(z)], axis=2)


def read_sections(case: Any, z: int, k: int, window: Block) -> np.ndarray:
    """The normalised float32 sections ``z - k .. z + k`` of ``case`` in ``window``: ``(2k + 1, h, w, C)``,
    from one read of a contiguous block."""
    return SectionSlab([case], k, z, z + 1, window).sections(z)[0]


def raw_sections(volume: Any, z: int, k: int) -> np.ndarray:
    """The whole sections ``z - k .. z + k`` of a :class:`~unet_train.data.volume_readers.Volume` as stored (its own
    dtype), stacked: ``(Y, X, (2k + 1) * C)``, what a 2.5D model's exported package takes as its input."""
    indices = context_indices(z, volume.depth, k)
    low, high = min(indices), max(indices)
    block = volume.read_block((low, 0, 0), (high - low + 1, *volume.shape[1:3]))
    return stack_sections(block[np.asarray(indices) - low])


def section_spec(spec: Mapping[str, Any], k: int) -> dict[str, Any]:
    """``data.normalize`` for the ``(2k + 1) * C`` stacked channels: per-channel values repeated for each section
    (section-major), so the stack is scaled as each section was in training."""
    spec = resolve_spec(spec)
    for key in ("min_value", "max_value", "mean", "std"):
        if isinstance(spec.get(key), list):
            spec[key] = list(spec[key]) * (2 * k + 1)
    return spec


def section_names(k: int, channels: int) -> list[str]:
    """Channel names of a 2.5D input: ``z-1``, ``z+0``, ``z+1`` (with ``:c0``, ``:c1``... for several channels)."""
    offsets = [f"z{j:+d}" for j in range(-k, k + 1)]
    return offsets if channels == 1 else [f"{o}:c{c}" for o in offsets for c in range(channels)]


def stack_sections(block: np.ndarray) -> np.ndarray:
    """``(2k + 1, h, w, C)`` sections -> one ``(h, w, (2k + 1) * C)`` image, section-major channels."""
    sections, height, width, channels = block.shape
    return np.ascontiguousarray(np.moveaxis(block, 0, 2).reshape(height, width, sections * channels))


class SectionDataset(Dataset):
    """2D items with context from volume cases (:class:`~unet_train.data.volume_case.VolumeCase`).

    Scoring (``training=False``): every section of every case once, whole, named ``<case>-z<index>``.
    Training: an item of a case is one random section, with a share ``foreground_p`` centred on a foreground
    voxel; ``crop`` ``(h, w)`` is read from the file (``block_transform``, a 3D transform of ``data=volumes``,
    then augments the ``2k + 1`` sections as a block), or with ``crop`` None the whole section is read and the
    2D albumentations ``transform`` (``data=isbi``: elastic, rotations, the crop) augments the stacked image,
    the same spatial transform on every channel.
    """

    def __init__(
        self,
        cases: Sequence[Any],
        context: int,
        training: bool = False,
        crop: tuple[int, int] | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
        block_transform: Callable[..., Any] | None = None,
        foreground_p: float = 0.0,
    ) -> None:
        self.cases, self.context, self.training = list(cases), context, training
        self.crop, self.transform, self.block_transform = crop, transform, block_transform
        self.foreground_p = foreground_p
        self.sections = [(i, z) for i, case in enumerate(self.cases) for z in range(case.shape[0])]

    def __len__(self) -> int:
        return len(self.cases) if self.training else len(self.sections)

    def item_pixels(self) -> list[int]:
        """The pixels of each scored item (a section of its case): what validating it costs."""
        return [self.cases[i].shape[1] * self.cases[i].shape[2] for i, _ in self.sections]

    @property
    def has_masks(self) -> bool:
        return all(case.mask is not None for case in self.cases)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item_seed(index, self.training)
        if self.training:
            case, rng = self.cases[index], np.random.default_rng(seed)
            if self.crop is not None:
                z, y0, x0 = crop_origin(case, (1, *self.crop), rng, self.foreground_p)
                window = (y0, x0, *self.crop)
            else:
                z, window = int(rng.integers(case.shape[0])), (0, 0, *case.shape[1:3])
        else:
            case_index, z = self.sections[index]
            case, rng, window = self.cases[case_index], None, (0, 0, *self.cases[case_index].shape[1:3])
        block = read_sections(case, z, self.context, window)
        mask = None if case.mask is None else case.read_mask((z, window[0], window[1]), (1, *window[2:]))
        if self.block_transform is not None and rng is not None:
            # The sections are the context of one plane, never exchanged with an in-plane axis: an infinite z
            # spacing keeps RandomAxisSwap off z; a flip of z reverses the sections and leaves the centre's mask.
            spacing = (math.inf, *case.spacing[1:])
            block, mask = self.block_transform(block, mask, rng, spacing)
        image = stack_sections(block)
        mask = None if mask is None else mask[0]
        if self.transform is not None and rng is not None:
            reseed_transform(self.transform, seed)
            out = self.transform(image=image) if mask is None else self.transform(image=image, mask=mask)
            image, mask = out["image"], out.get("mask")
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        item["name"] = case.name if self.training else f"{case.name}-z{z:03d}"
        if mask is not None:
            item["mask"] = array_to_tensor(mask, np.int64)
        return item
