"""A whole volume into an OME-Zarr store: chunk-wise blending, resume, and work shared between ranks.

Each z plane is cut into blocks of chunks (:class:`~unet_train.inference.chunked.ChunkGrid`); the
(plane, block) pairs are dealt out to the ranks in turn (rank ``r`` takes pairs ``r, r + N, ...``),
so every rank writes whole chunks of its own. Chunks marked done in the store are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_train.engine.distributed import Distributed
from unet_train.inference.chunked import ChunkedPredictor
from unet_train.inference.tiling import TiledPredictor
from unet_train.inference.volumes import Volume
from unet_train.inference.zarr_output import ZarrPrediction

log = logging.getLogger(__name__)

BLOCK_PIXELS = 4096  # side of the blocks of chunks that share a tile cache (see chunked.py)


@dataclass
class Throughput:
    """Logs tiles/s and an estimate for the whole input once, after the first batch of tiles, then every minute."""

    total: int
    what: str
    interval_s: float = 60.0
    done: int = 0
    start: float = field(default_factory=time.monotonic)
    _last: float | None = None

    def __call__(self, tiles: int) -> None:
        self.done += tiles
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s and self.done < self.total:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %d/%d tiles, %.1f tiles/s, about %s for the whole input (%s left)",
            self.what,
            self.done,
            self.total,
            rate,
            format_seconds(elapsed + left),
            format_seconds(left),
        )


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def predict_to_zarr(
    predictor: TiledPredictor,
    volume: Volume,
    scaling: Callable[[Any, int], Any],
    path: Path,
    classes: int,
    chunk: int,
    prob_dtype: str,
    threshold: float,
    settings: dict[str, Any],
    dist: Distributed,
    on_chunk: Callable[[], None] | None = None,
) -> ZarrPrediction:
    """Predict ``volume`` into the store at ``path`` (created by rank 0, or resumed); returns the store.

    ``scaling(raw, z)`` turns raw pixels ``(h, w, C)`` of plane ``z`` into the model input (that plane's
    :class:`InputScaling`, or several concatenated for an ensemble of models normalised differently).
    """
    if dist.is_main:
        ZarrPrediction.create(path, volume, classes, chunk, prob_dtype, settings)
    dist.barrier()
    store = ZarrPrediction(path, threshold)
    done = store.done()
    depth, height, width, _ = volume.shape
    planner = ChunkedPredictor(predictor, (height, width), chunk)
    work = []
    for z in range(depth):
        for block in planner.grid.blocks(BLOCK_PIXELS):
            work.append((z, [c for c in block if not done[z, c[0], c[1]]]))
    mine = [(z, block) for i, (z, block) in enumerate(work) if i % dist.world_size == dist.rank and block]
    skipped = int(done.sum())
    if skipped:
        log.info("Resuming %s: %d of %d chunks already written", path, skipped, done.size)
    total = sum(planner.count_tiles([block]) for _, block in mine)
    report = Throughput(total, f"rank {dist.rank}" if dist.enabled else "predict")
    for z, block in mine:

        def read(y0: int, y1: int, x0: int, x1: int, z: int = z) -> Any:
            return scaling(volume.read(z, y0, y1, x0, x1), z)

        def write(c: tuple[int, int], prob: Any, z: int = z) -> None:
            store.write_chunk(z, c, planner.grid.bounds(c), prob)
            if on_chunk is not None:
                on_chunk()

        planner.run([block], read, write, on_tiles=report)
    dist.barrier()
    if dist.is_main:
        store.finish()
    return store
