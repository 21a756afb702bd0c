"""Chunk-wise blending: the tiled prediction of an image larger than memory, one output chunk at a time.

The tiles are those of :class:`~unet_train.inference.tiling.TiledPredictor` on the whole image
(the same grid, mirrored margin and Gaussian weights). An output chunk is finished as soon as the
tiles that touch it are computed: their weighted probabilities are summed in the whole image's
tile order and divided by the summed weights, which is exactly what whole-image blending does for
those pixels. Memory is bounded by the chunk, its halo of tiles and a cache of computed tiles:

- Chunks are visited in blocks of about ``block`` pixels per side (row-major blocks, row-major
  chunks inside a block). A tile stays cached while a chunk of the current block still needs it
  and is dropped at the end of the block, so the cache never holds more than about two rows of
  tiles of one block, whatever the image size. Tiles on a block's edge are computed again by the
  neighbouring block (about 6 % more tiles with 4096-pixel blocks and 256-pixel tiles).
- Blocks are the unit of sharing work between processes: a rank takes whole blocks, so it
  writes only whole chunks, and no chunk is written by two processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from unet_train.inference.tiling import TiledPredictor, mirror_index

Tile = tuple[int, int]  # (row, column) index into the tile grid
Chunk = tuple[int, int]  # (row, column) index into the chunk grid


@dataclass(frozen=True)
class ChunkGrid:
    """Output chunks of ``chunk`` x ``chunk`` pixels over a ``height`` x ``width`` plane (the last ones smaller)."""

    height: int
    width: int
    chunk: int

    @property
    def shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk)

    def bounds(self, chunk: Chunk) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of a chunk in image pixels."""
        cy, cx = chunk
        c = self.chunk
        return cy * c, min((cy + 1) * c, self.height), cx * c, min((cx + 1) * c, self.width)

    def blocks(self, block: int) -> list[list[Chunk]]:
        """Chunks grouped into square blocks of about ``block`` pixels, row-major, chunks row-major inside."""
        per = max(1, block // self.chunk)
        ny, nx = self.shape
        return [
            [(cy, cx) for cy in range(by, min(by + per, ny)) for cx in range(bx, min(bx + per, nx))]
            for by in range(0, ny, per)
            for bx in range(0, nx, per)
        ]


class ChunkedPredictor:
    """Blend the tiles of one ``height`` x ``width`` plane chunk by chunk (see the module docstring).

    Args:
        predictor: gives the tile grid, the blending weights and the forward pass.
        height, width: the plane.
        chunk: side of the output chunks in pixels.
    """

    def __init__(self, predictor: TiledPredictor, height: int, width: int, chunk: int) -> None:
        self.predictor = predictor
        self.grid = ChunkGrid(height, width, chunk)
        self.tile_h, self.tile_w, self.ys, self.xs = predictor.grid(height, width)
        m = self.margin = predictor.margin
        # Padded (mirrored) coordinate -> image row/column, as TiledPredictor gathers its tiles.
        self.rows = mirror_index(m, height, self.ys[-1] + self.tile_h - height - m)
        self.cols = mirror_index(m, width, self.xs[-1] + self.tile_w - width - m)
        self.weight = predictor._weight((self.tile_h, self.tile_w))

    def _span(self, starts: list[int], size: int, length: int, lo: int, hi: int) -> list[int]:
        """Indices of the tiles (along one axis) whose part on the image overlaps ``[lo, hi)``."""
        out = []
        for i, s in enumerate(starts):
            t0, t1 = max(s - self.margin, 0), min(s - self.margin + size, length)
            if t0 < hi and t1 > lo:
                out.append(i)
        return out

    def tiles_of(self, chunk: Chunk) -> list[Tile]:
        """The tiles touching a chunk, in the whole image's (row-major) order."""
        y0, y1, x0, x1 = self.grid.bounds(chunk)
        rows = self._span(self.ys, self.tile_h, self.grid.height, y0, y1)
        cols = self._span(self.xs, self.tile_w, self.grid.width, x0, x1)
        return [(a, b) for a in rows for b in cols]

    def count_tiles(self, blocks: Iterable[list[Chunk]]) -> int:
        """Forward passes (tiles) needed for these blocks of chunks."""
        return sum(len({t for chunk in block for t in self.tiles_of(chunk)}) for block in blocks)

    def run(
        self,
        blocks: Iterable[list[Chunk]],
        read: Callable[[int, int, int, int], torch.Tensor],
        write: Callable[[Chunk, torch.Tensor], None],
        on_tiles: Callable[[int], None] | None = None,
    ) -> None:
        """Predict the given chunks, block by block, and hand each finished chunk to ``write``.

        ``read(y0, y1, x0, x1)`` returns the model input ``(C, h, w)`` of an image window;
        ``write(chunk, prob)`` gets the chunk's probabilities ``(K, h, w)`` float32.
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

    def _compute(
        self, tiles: list[Tile], read: Callable[[int, int, int, int], torch.Tensor]
    ) -> dict[Tile, torch.Tensor]:
        """Probabilities of these tiles, from one read of the image window that covers them."""
        th, tw = self.tile_h, self.tile_w
        p0, p1 = min(self.ys[a] for a, _ in tiles), max(self.ys[a] for a, _ in tiles) + th
        q0, q1 = min(self.xs[b] for _, b in tiles), max(self.xs[b] for _, b in tiles) + tw
        r0, r1 = int(self.rows[p0:p1].min()), int(self.rows[p0:p1].max()) + 1
        c0, c1 = int(self.cols[q0:q1].min()), int(self.cols[q0:q1].max()) + 1
        window = read(r0, r1, c0, c1)
        rows = torch.from_numpy(self.rows - r0)
        cols = torch.from_numpy(self.cols - c0)
        out: dict[Tile, torch.Tensor] = {}
        size = self.predictor.batch_size
        for i in range(0, len(tiles), size):
            group = tiles[i : i + size]
            batch = torch.stack(
                [
                    window.index_select(1, rows[self.ys[a] : self.ys[a] + th]).index_select(
                        2, cols[self.xs[b] : self.xs[b] + tw]
                    )
                    for a, b in group
                ]
            )
            prob = self.predictor.forward_tiles(batch, pad=True)
            out.update(zip(group, prob))
        return out

    def _blend(self, chunk: Chunk, tiles: list[Tile], cache: dict[Tile, torch.Tensor]) -> torch.Tensor:
        y0, y1, x0, x1 = self.grid.bounds(chunk)
        m = self.margin
        classes = cache[tiles[0]].shape[0]
        out = torch.zeros(classes, y1 - y0, x1 - x0)
        weight_sum = torch.zeros(y1 - y0, x1 - x0)
        for a, b in tiles:
            ty, tx = self.ys[a] - m, self.xs[b] - m  # the tile's top-left in image pixels
            top, bottom = max(ty, y0, 0), min(ty + self.tile_h, y1)
            left, right = max(tx, x0, 0), min(tx + self.tile_w, x1)
            w = self.weight[top - ty : bottom - ty, left - tx : right - tx]
            out[:, top - y0 : bottom - y0, left - x0 : right - x0].addcmul_(
                cache[(a, b)][:, top - ty : bottom - ty, left - tx : right - tx], w
            )
            weight_sum[top - y0 : bottom - y0, left - x0 : right - x0].add_(w)
        return out.div_(weight_sum)
