"""How many pixels one forward pass may take: the tile size chosen from a memory budget.

``unet-predict tile_size=null`` (the default) measures what the model's forward pass holds per input pixel
(:func:`forward_bytes_per_pixel`) and divides the memory it may use (``tile_memory``, or a share of the free
memory of the device) by it. An image that fits is predicted whole, in one forward pass padded only to the
model's size multiple; a larger one is cut into the largest square tiles that fit (at most
:data:`MAX_AUTO_TILE` pixels a side), several per forward pass where the budget holds more than one.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from unet_train.data.limits import available_memory
from unet_train.errors import ConfigError

log = logging.getLogger(__name__)

MIB = 2**20
# The live-tensor count below against the peak RSS growth of a CPU forward pass at 1024^2 (vanilla UNet,
# depth 4): 1748 vs 1972 B/px at width 64 and 440 vs 553 at width 16 (contiguous; channels-last 1706 and
# 476). The allocator's slack and the kernels' scratch space are what the count does not see.
OVERHEAD = 1.3
# Default budgets: a quarter of the free RAM (other processes, the image and its outputs need the rest), half
# of the free GPU memory (a lent GPU runs little else).
CPU_SHARE, GPU_SHARE = 4, 2
# Larger tiles lose little to overlap; capping them leaves room for several per forward pass on a big budget.
MAX_AUTO_TILE = 1024
MAX_AUTO_BATCH = 16


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors alive during a forward pass (each storage once) and their peak."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ to keep Dynamo out of it, and that import of torch._dynamo cost
        # 4-9 s at the first validation of every run (and at unet-predict's start); nothing here is compiled.
        return False

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors holding it]
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(
        self, func: Callable[..., Any], types: object, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._hold(tensor)
        return out

    def _hold(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [storage.nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[address]


def forward_bytes_per_pixel(forward: Callable[[torch.Tensor], object], batch: torch.Tensor) -> float:
    """Bytes per input pixel (voxel) that ``forward(batch)`` holds at its peak (its input included), with an allowance
    (:data:`OVERHEAD`) for what a count of live tensors misses. Activations grow with the pixels, so one small
    probe (a few multiples of the model's size multiple a side) gives the figure for any size."""
    counter = _LiveBytes()
    with counter:
        forward(batch)
    pixels = batch.shape[0] * math.prod(batch.shape[2:])  # every spatial axis: a volume's voxels, not its columns
    return (counter.peak + batch.numel() * batch.element_size()) * OVERHEAD / pixels


def parse_memory(value: object) -> int | None:
    """``tile_memory`` (MiB, a positive number, or null) -> bytes or None; a wrong value is refused in one line."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"tile_memory={value!r} must be a positive number of MiB (e.g. 2048), or null.")
    return int(value * MIB)


def default_memory(device: torch.device) -> tuple[int, str]:
    """The bytes a forward pass may take by default on ``device``, and where that figure comes from."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free // GPU_SHARE, f"1/{GPU_SHARE} of the {free / 2**30:.1f} GiB free on {device}"
    free = available_memory()
    return free // CPU_SHARE, f"1/{CPU_SHARE} of the {free / 2**30:.1f} GiB of free memory"


@dataclass(frozen=True)
class TilePlan:
    """How an input is forwarded: ``whole`` (one pass, no tiles; ``tile_size`` is its padded shape), or square
    (cubic) tiles of side ``tile_size``, ``batch_size`` per pass."""

    whole: bool
    tile_size: int | tuple[int, ...]
    batch_size: int


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def integer_root(value: int, dims: int) -> int:
    """The largest ``s`` with ``s ** dims <= value``."""
    side = round(max(value, 0) ** (1 / dims))
    while side > 0 and side**dims > value:
        side -= 1
    while (side + 1) ** dims <= value:
        side += 1
    return side


def plan_tiles(
    shape: Sequence[int],
    bytes_per_pixel: float,
    memory: int,
    aligns: Sequence[int],
    source: str,
    whole: bool = True,
) -> TilePlan:
    """The plan for an input of spatial ``shape`` (margins included) under ``memory`` bytes per forward pass.

    ``aligns`` are the model's size multiples per axis (tiles are multiples of them). Without ``whole``, an
    input is tiled even where it would fit (the chunked Zarr path, which reads windows). A budget below the
    smallest tile (2 size multiples, at least 64 px a side) is refused naming the figures.
    """
    fits = int(memory / bytes_per_pixel)
    padded = tuple(round_up(n, a) for n, a in zip(shape, aligns))
    if whole and math.prod(padded) <= fits:
        return TilePlan(True, padded, 1)
    align = max(aligns)
    smallest = min(max(64, 2 * align) // align * align, MAX_AUTO_TILE)
    # The smallest tile: that side on every axis, or the whole axis where it is shorter (a thin volume).
    minimal = [min(smallest, n) for n in padded] if len(shape) == 3 else [smallest] * len(shape)
    if math.prod(minimal) > fits:
        raise ConfigError(
            f"A forward pass may take {memory / MIB:.3g} MiB ({source}): {fits:,} pixels of this model "
            f"({bytes_per_pixel:.0f} bytes a pixel), less than one {'x'.join(map(str, minimal))} tile; raise "
            f"tile_memory to {math.ceil(math.prod(minimal) * bytes_per_pixel / MIB)} or more, or set tile_size."
        )
    if len(shape) == 3:
        sides = volume_tile_sides(padded, fits, aligns)
        return TilePlan(False, sides, max(1, min(fits // math.prod(sides), MAX_AUTO_BATCH)))
    side = min(integer_root(fits, len(shape)) // align * align, MAX_AUTO_TILE)
    return TilePlan(False, side, max(1, min(fits // side ** len(shape), MAX_AUTO_BATCH)))


def volume_tile_sides(padded: Sequence[int], fits: int, aligns: Sequence[int]) -> tuple[int, ...]:
    """Tile sides of a volume holding at most ``fits`` voxels: an axis shorter than its share of a cube is taken
    whole, and what it leaves goes to the others (a 5-plane EM volume gets 5 x 304 x 304 tiles, not 64^3 ones
    that are 59 mirrored planes out of 64). Sides are multiples of each axis's pooling grid."""
    sides = list(padded)
    left = fits
    order = sorted(range(len(padded)), key=lambda i: padded[i])
    for done, axis in enumerate(order):
        share = integer_root(left, len(padded) - done)
        if padded[axis] > share:
            smallest = min(max(16, 2 * aligns[axis]) // aligns[axis] * aligns[axis], padded[axis])
            sides[axis] = max(smallest, min(share, MAX_AUTO_TILE) // aligns[axis] * aligns[axis])
        left //= sides[axis]
    return tuple(sides)
