"""Chunk-wise blending: the tiled prediction of an image or volume larger than memory, one output chunk at a time.

The tiles are those of :class:`~unet_train.inference.tiling.TiledPredictor` on the whole input
(the same grid, mirrored margin and Gaussian weights, on every axis: an image's ``(y, x)`` or a
volume's ``(z, y, x)``). An output chunk is finished as soon as the tiles that touch it are
computed: their weighted probabilities are summed in the whole input's tile order and divided by
the summed weights, which is exactly what whole-input blending does for those pixels. So each chunk
is computed from its own region plus a halo of up to one tile (and the mirrored margin) per axis.
Memory is bounded by the chunk, its halo of tiles and a cache of computed tiles:

- Chunks are visited in blocks of about ``block`` pixels per side (row-major blocks, row-major
  chunks inside a block). A tile stays cached while a chunk of the current block still needs it
  and is dropped at the end of the block, so the cache never holds more than about two rows (in
  a volume two layers) of tiles of one block, whatever the input size. Tiles on a block's edge are
  computed again by the neighbouring block (about 6 % more tiles with 4096-pixel blocks and
  256-pixel tiles).
- Blocks are the unit of sharing work between processes: a rank takes whole blocks, so it
  writes only whole chunks, and no chunk is written by two processes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import torch

from unet_train.inference.tiling import TiledPredictor, mirror_index

Tile = tuple[int, ...]  # index into the tile grid per axis: (row, column) of an image, (layer, row, column)
Chunk = tuple[int, ...]  # index into the chunk grid per axis


class ChunkGrid:
    """Output chunks of ``chunk`` pixels a side (one int, or one per axis) over an input of spatial ``size``
    (``(height, width)`` or ``(depth, height, width)``); the last chunks along an axis are smaller."""

    def __init__(self, size: Sequence[int], chunk: int | Sequence[int]) -> None:
        self.size = tuple(int(n) for n in size)
        self.sides = tuple(int(c) for c in ([chunk] * len(self.size) if isinstance(chunk, int) else chunk))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / c) for n, c in zip(self.size, self.sides))

    def bounds(self, chunk: Chunk) -> tuple[int, ...]:
        """``(lo, hi)`` of a chunk per axis in input pixels, flat: ``(y0, y1, x0, x1)`` or ``(z0, z1, y0, ...)``."""
        return tuple(v for i, c, n in zip(chunk, self.sides, self.size) for v in (i * c, min((i + 1) * c, n)))

    def blocks(self, block: int | Sequence[int]) -> list[list[Chunk]]:
        """Chunks grouped into blocks of about ``block`` pixels a side, row-major, chunks row-major inside."""
        blocks = [block] * len(self.size) if isinstance(block, int) else list(block)
        per = [max(1, b // c) for b, c in zip(blocks, self.sides)]
        corners = itertools.product(*(range(0, n, p) for n, p in zip(self.shape, per)))
        return [
            list(itertools.product(*(range(c, min(c + p, n)) for c, p, n in zip(corner, per, self.shape))))
            for corner in corners
        ]


class ChunkedPredictor:
    """Blend the tiles of one image (or volume) chunk by chunk (see the module docstring).

    Args:
        predictor: gives the tile grid, the mirrored margins, the blending weights and the forward pass.
        size: the input's spatial size, ``(height, width)`` or ``(depth, height, width)``.
        chunk: side of the output chunks in pixels (one int, or one per axis).
    """

    def __init__(self, predictor: TiledPredictor, size: Sequence[int], chunk: int | Sequence[int]) -> None:
        self.predictor = predictor
        self.grid = ChunkGrid(size, chunk)
        self.tile, self.starts = predictor.grid_nd(self.grid.size)
        self.margins = predictor.axes(len(self.grid.size))[2]
        # Padded (mirrored) coordinate -> input index per axis, as TiledPredictor gathers its tiles.
        self.lookup = [
            mirror_index(m, n, s[-1] + t - n - m)
            for m, n, s, t in zip(self.margins, self.grid.size, self.starts, self.tile)
        ]
        self.weight = predictor._weight(self.tile)

    def tiles_of(self, chunk: Chunk) -> list[Tile]:
        """The tiles touching a chunk, in the whole input's (row-major) order."""
        bounds = self.grid.bounds(chunk)
        spans = []
        for axis, (starts, size, length, m) in enumerate(zip(self.starts, self.tile, self.grid.size, self.margins)):
            lo, hi = bounds[2 * axis], bounds[2 * axis + 1]
            # The tiles along this axis whose part on the input overlaps [lo, hi).
            spans.append([i for i, s in enumerate(starts) if max(s - m, 0) < hi and min(s - m + size, length) > lo])
        return list(itertools.product(*spans))

    def count_tiles(self, blocks: Iterable[list[Chunk]]) -> int:
        """Forward passes (tiles) needed for these blocks of chunks."""
        return sum(len({t for chunk in block for t in self.tiles_of(chunk)}) for block in blocks)

    def run(
        self,
        blocks: Iterable[list[Chunk]],
        read: Callable[..., torch.Tensor],
        write: Callable[[Chunk, torch.Tensor], None],
        on_tiles: Callable[[int], None] | None = None,
    ) -> None:
        """Predict the given chunks, block by block, and hand each finished chunk to ``write``.

        ``read(y0, y1, x0, x1)`` (``read(z0, z1, y0, y1, x0, x1)`` for a volume) returns the model input
        ``(C, h, w)`` (``(C, d, h, w)``) of a window; ``write(chunk, prob)`` gets the chunk's probabilities
        ``(K, h, w)`` (``(K, d, h, w)``) float32.
        """
        for block in blocks:
            needs = {chunk: self.tiles_of(chunk) for chunk in block}
            users: dict[Tile, int] = {}
            for tiles in needs.values():
                for tile in tiles:
                    users[tile] = users.get(tile, 0) + 1
            cache: dict[Tile, torch.Tensor] = {}
            size = self.predictor.batch_size
            for i, chunk in enumerate(block):
                missing = [t for t in needs[chunk] if t not in cache]
                # Fill the last batch with tiles the next chunks need (forward passes have a fixed size).
                ahead = iter(t for later in block[i + 1 :] for t in needs[later])
                while missing and len(missing) % size:
                    extra = next(ahead, None)
                    if extra is None:
                        break
                    if extra not in cache and extra not in missing:
                        missing.append(extra)
                if missing:
                    cache.update(self._compute(missing, read))
                    if on_tiles is not None:
                        on_tiles(len(missing))
                write(chunk, self._blend(chunk, needs[chunk], cache))
                for tile in needs[chunk]:
                    users[tile] -= 1
                    if users[tile] == 0:
                        del cache[tile]

    def window(self, tiles: Iterable[Tile]) -> tuple[int, ...]:
        """The input window these tiles read (their mirrored margins included), ``(lo, hi)`` per axis, flat."""
        tiles = list(tiles)
        bounds: list[int] = []
        for axis, (starts, size, lookup) in enumerate(zip(self.starts, self.tile, self.lookup)):
            p0, p1 = min(starts[t[axis]] for t in tiles), max(starts[t[axis]] for t in tiles) + size
            bounds += [int(lookup[p0:p1].min()), int(lookup[p0:p1].max()) + 1]
        return tuple(bounds)

    def _compute(self, tiles: list[Tile], read: Callable[..., torch.Tensor]) -> dict[Tile, torch.Tensor]:
        """Probabilities of these tiles, from one read of the input window that covers them."""
        window_bounds = self.window(tiles)
        offsets = [torch.from_numpy(lookup - lo) for lookup, lo in zip(self.lookup, window_bounds[0::2])]
        window = read(*window_bounds)
        out: dict[Tile, torch.Tensor] = {}
        size = self.predictor.batch_size
        for i in range(0, len(tiles), size):
            group = tiles[i : i + size]
            batch = torch.stack([self._gather(window, offsets, tile) for tile in group])
            prob = self.predictor.forward_tiles(batch, pad=True)
            out.update(zip(group, prob))
        return out

    def _gather(self, window: torch.Tensor, offsets: list[torch.Tensor], tile: Tile) -> torch.Tensor:
        """One tile ``(C, *tile)`` of a window, mirrored where it lies in the margin (one axis at a time)."""
        for axis, (starts, size, index) in enumerate(zip(self.starts, self.tile, offsets)):
            start = starts[tile[axis]]
            window = window.index_select(axis + 1, index[start : start + size])
        return window

    def _blend(self, chunk: Chunk, tiles: list[Tile], cache: dict[Tile, torch.Tensor]) -> torch.Tensor:
        bounds = self.grid.bounds(chunk)
        lows, highs = bounds[0::2], bounds[1::2]
        classes = cache[tiles[0]].shape[0]
        out = torch.zeros(classes, *(h - lo for lo, h in zip(lows, highs)))
        weight_sum = torch.zeros(out.shape[1:])
        for tile in tiles:
            in_chunk, in_tile = [], []
            for axis, (lo, hi) in enumerate(zip(lows, highs)):
                corner = self.starts[axis][tile[axis]] - self.margins[axis]  # the tile's origin in input pixels
                a, b = max(corner, lo, 0), min(corner + self.tile[axis], hi)
                in_chunk.append(slice(a - lo, b - lo))
                in_tile.append(slice(a - corner, b - corner))
            w = self.weight[tuple(in_tile)]
            out[(slice(None), *in_chunk)].addcmul_(cache[tile][(slice(None), *in_tile)], w)
            weight_sum[tuple(in_chunk)].add_(w)
        return out.div_(weight_sum)
