"""Reproducible data order and augmentation: every epoch is a pure function of ``(seed, epoch)``.

A resumed run must see exactly the batches an uninterrupted run would have seen. Relying on
RNG state that flows from one epoch to the next does not give that: DataLoader workers keep
their own generators (and persistent workers keep them across epochs), and albumentations
draws from its own generator, seeded from the OS unless told otherwise. So the training
sampler derives the epoch's order *and* one augmentation seed per item from ``(seed, epoch)``,
and yields ``(index, item_seed)`` pairs; the dataset reseeds its transform with ``item_seed``
before augmenting. The result does not depend on history, on the number of workers or on
which worker gets which item, and an epoch can restart part-way by skipping its first items.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from unet_train.errors import ConfigError

# How a foreground-centred crop draws its centre's class (data.oversample_classes, ForegroundCrop's ``classes``):
# uniformly among the classes present (nnU-Net's rule: rare classes are seen) or by pixel count.
OVERSAMPLE_CLASSES = ("per_class", "foreground")

# Independent streams derived from the same (seed, epoch).
SAMPLER_STREAM = 0
GLOBAL_STREAM = 1


def check_oversample_classes(value: object) -> str:
    """``value`` if it is one of :data:`OVERSAMPLE_CLASSES`, else one line naming the key and the choices."""
    if value not in OVERSAMPLE_CLASSES:
        raise ConfigError(f"data.oversample_classes={value!r}: choose {' or '.join(OVERSAMPLE_CLASSES)}.")
    return str(value)


def epoch_seed(seed: int, epoch: int, stream: int = SAMPLER_STREAM) -> int:
    """A 63-bit seed for ``epoch`` of a run seeded with ``seed``; different streams are independent."""
    words = np.random.SeedSequence([int(seed) % 2**64, int(epoch), int(stream)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)`` for one epoch, drawn from ``(seed, epoch)`` only.

    Under DDP each rank takes every ``world_size``-th position of the same epoch order, from
    ``rank`` (the order is padded by wrapping around so that every rank gets as many items), so
    the item at a given position of the epoch gets the same index and seed whatever the number
    of processes. With ``world_size=1`` the order is the single-process one.

    Args:
        num_items: dataset length.
        seed: the run's seed (the same on every rank).
        shuffle: random order (without replacement) or ``0..num_items-1``.
        num_samples: draw this many items with replacement per epoch (over all ranks) instead of one pass.
        rank, world_size: this process's place under DDP.
    """

    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        shuffle: bool = True,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.num_samples = num_samples
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch that the next iteration yields, leaving out this rank's first ``skip`` items."""
        self.epoch, self.skip = epoch, skip

    def _full_length(self) -> int:  # items per rank
        return math.ceil((self.num_samples or self.num_items) / self.world_size)

    def __len__(self) -> int:
        return max(0, self._full_length() - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        padded = self._full_length() * self.world_size
        if self.num_samples:
            order = torch.randint(self.num_items, (padded,), generator=generator)
        elif self.shuffle:
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        item_seeds = torch.randint(2**62, (padded,), generator=generator)
        if len(order) < padded:  # one pass split over ranks: the first items again, with seeds of their own
            order = order[torch.arange(padded) % len(order)]
        mine = slice(self.rank + self.skip * self.world_size, padded, self.world_size)
        yield from zip(order[mine].tolist(), item_seeds[mine].tolist())


def reseed_transform(transform: Any, seed: int) -> None:
    """Point an albumentations pipeline at fresh generators seeded with ``seed`` (one per item: cheap)."""
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def set_loader_epoch(loader: Any, epoch: int, skip_batches: int = 0) -> None:
    """Tell the loader's sampler which epoch comes next and how many of its batches were already trained on."""
    sampler = loader.sampler
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, skip_batches * (loader.batch_size or 1))
    elif hasattr(sampler, "set_epoch"):  # another sampler: no part-way restart
        sampler.set_epoch(epoch)
