"""A whole volume into an OME-Zarr store: chunk-wise blending, resume, and work shared between ranks.

For a 2D model each z plane is cut into blocks of chunks (:class:`~unet_train.inference.chunked.ChunkGrid`);
the (plane, block) pairs are dealt out to the ranks in turn (rank ``r`` takes pairs ``r, r + N, ...``),
so every rank writes whole chunks of its own. A 2.5D model's planes go in slabs of planes, whose sections are
read once (:func:`predict_sections_to_zarr`); (slab, block) pairs are dealt out. For a 3D model the volume is
cut into 3D chunks and blocks of them, dealt out the same way (:func:`predict_volume_to_zarr`). Chunks marked
done in the store are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from unet_train.engine.distributed import Distributed
from unet_train.errors import ConfigError
from unet_train.inference.chunked import ChunkedPredictor
from unet_train.inference.tiling import TiledPredictor
from unet_train.inference.volumes import Volume
from unet_train.inference.zarr_output import ZarrPrediction

log = logging.getLogger(__name__)

BLOCK_PIXELS = 4096  # side of the blocks of chunks that share a tile cache (see chunked.py)
BLOCK_VOXELS = 256  # the same for a 3D model's chunks: a block's cache holds about two layers of its tiles
# Input values (float32) of the sections a 2.5D model's slab of planes reads at once in a block's window: the
# slab's planes plus its context (2k planes), 128 MiB; a slab has one plane at least.
SLAB_VALUES = 2**25


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


def chunk_setting(value: Any, dims: int) -> int | tuple[int, ...]:
    """``chunk_size``: the side of a plane's chunks (null: 512), or for a 3D model a cube's side or ``[z, y, x]``
    (null: 128 a side); refused in one line otherwise."""
    if value is None:
        return 512 if dims == 2 else (128,) * 3
    sides = [value] * 3 if isinstance(value, int) else list(value) if isinstance(value, Sequence | ListConfig) else []
    good = [s for s in sides if isinstance(s, int) and not isinstance(s, bool) and s >= 1]
    if dims == 2 and isinstance(value, int) and good:
        return int(value)
    if dims == 2:
        raise ConfigError(f"chunk_size={value!r} must be a whole number of pixels, 1 or more.")
    if isinstance(value, str) or len(sides) != 3 or len(good) != 3:
        raise ConfigError(
            f"chunk_size={value!r} must be a whole number of voxels, 1 or more, or three of them [z, y, x] "
            "for a 3D model's chunks."
        )
    return tuple(int(s) for s in sides)


def checkpoint_identity(paths: Sequence[str | Path]) -> list[str]:
    """Each checkpoint's absolute path and the SHA-256 of its bytes: a store records them, so a resume with other
    checkpoints is refused, a different file copied over the same path included."""
    return [f"{path} (sha256 {file_sha256(path)[:16]})" for path in (Path(p).expanduser().resolve() for p in paths)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_settings(predictor: TiledPredictor, volume: Volume, dims: int, **more: Any) -> dict[str, Any]:
    """What a store records of the prediction that writes it; resuming it with other settings is refused."""
    tile = predictor.tile_size
    margins = predictor.axes(dims)[2]
    return {
        "input": volume.name,
        "input_shape": list(volume.shape),
        "tile_size": tile if isinstance(tile, int) else list(tile),  # as JSON reads it back, to compare
        "overlap": predictor.overlap,
        "margin": margins[0] if dims == 2 else margins,
        "batch_size": predictor.batch_size,
        "tta": predictor.tta,
        **more,
    }


def _open_store(
    path: Path,
    volume: Volume,
    classes: int,
    chunk: int | tuple[int, ...],
    prob_dtype: str,
    threshold: float,
    settings: dict[str, Any],
    dist: Distributed,
) -> tuple[ZarrPrediction, Any]:
    """The store at ``path`` (created by rank 0, or resumed) and its done-markers."""
    if dist.is_main:
        ZarrPrediction.create(path, volume, classes, chunk, prob_dtype, settings)
    dist.barrier()
    store = ZarrPrediction(path, threshold)
    done = store.done()
    skipped = int(done.sum())
    if skipped:
        log.info("Resuming %s: %d of %d chunks already written", path, skipped, done.size)
    return store, done


def _finish(store: ZarrPrediction, dist: Distributed) -> ZarrPrediction:
    dist.barrier()
    if dist.is_main:
        store.finish()
    return store


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
    """Predict ``volume`` plane by plane into the store at ``path`` (created by rank 0, or resumed); returns it.

    ``scaling(raw, z)`` turns raw pixels ``(h, w, C)`` of plane ``z`` into the model input (that plane's
    :class:`InputScaling`, or several concatenated for an ensemble of models normalised differently).
    """
    store, done = _open_store(path, volume, classes, chunk, prob_dtype, threshold, settings, dist)
    depth, height, width, _ = volume.shape
    planner = ChunkedPredictor(predictor, (height, width), chunk)
    work = []
    for z in range(depth):
        for block in planner.grid.blocks(BLOCK_PIXELS):
            work.append((z, [c for c in block if not done[z, c[0], c[1]]]))
    mine = [(z, block) for i, (z, block) in enumerate(work) if i % dist.world_size == dist.rank and block]
    total = sum(planner.count_tiles([block]) for _, block in mine)
    report = Throughput(total, f"rank {dist.rank}" if dist.enabled else "predict")
    for z, block in mine:

        def read(y0: int, y1: int, x0: int, x1: int, z: int = z) -> Any:
            return scaling(volume.read(z, y0, y1, x0, x1), z)

        def write(c: tuple[int, ...], prob: Any, z: int = z) -> None:
            store.write_chunk(z, (c[0], c[1]), planner.grid.bounds(c), prob)
            if on_chunk is not None:
                on_chunk()

        planner.run([block], read, write, on_tiles=report)
    return _finish(store, dist)


def predict_volume_to_zarr(
    predictor: TiledPredictor,
    volume: Volume,
    read: Callable[..., Any],
    path: Path,
    classes: int,
    chunk: tuple[int, ...],
    prob_dtype: str,
    threshold: float,
    settings: dict[str, Any],
    dist: Distributed,
    on_chunk: Callable[[], None] | None = None,
) -> ZarrPrediction:
    """A 3D model's prediction of ``volume`` into the store at ``path``, chunk ``(z, y, x)`` by chunk.

    Each chunk is blended from the tiles of the whole volume's 3D grid that touch it (its region plus up to a
    tile of context per axis), so the store equals the whole-volume prediction. Blocks of chunks of about
    :data:`BLOCK_VOXELS` a side (at least two tiles) share a tile cache and are dealt out to the ranks in turn.
    ``read(z0, z1, y0, y1, x0, x1)`` gives the scaled model input ``(C, d, h, w)`` of a window.
    """
    store, done = _open_store(path, volume, classes, chunk, prob_dtype, threshold, settings, dist)
    planner = ChunkedPredictor(predictor, volume.shape[:3], chunk)
    block = [max(BLOCK_VOXELS, 2 * t) for t in planner.tile]
    work = [[c for c in chunks if not done[c]] for chunks in planner.grid.blocks(block)]
    mine = [chunks for i, chunks in enumerate(work) if i % dist.world_size == dist.rank and chunks]
    report = Throughput(planner.count_tiles(mine), f"rank {dist.rank}" if dist.enabled else "predict")

    def write(c: tuple[int, ...], prob: Any) -> None:
        store.write_block(c, planner.grid.bounds(c), prob)
        if on_chunk is not None:
            on_chunk()

    planner.run(mine, read, write, on_tiles=report)
    return _finish(store, dist)


def predict_sections_to_zarr(
    predictor: TiledPredictor,
    volume: Volume,
    read_slab: Callable[..., Callable[[int], Any]],
    path: Path,
    classes: int,
    chunk: int,
    prob_dtype: str,
    threshold: float,
    settings: dict[str, Any],
    dist: Distributed,
    context: int,
    on_chunk: Callable[[], None] | None = None,
) -> ZarrPrediction:
    """A 2.5D model's (``data.context_slices=context``) prediction of ``volume`` into the store at ``path``, plane by
    plane as :func:`predict_to_zarr` (the same chunks, tiles and blending), over slabs of planes.

    The planes go in slabs of as many as fit :data:`SLAB_VALUES` with their ``2 x context`` neighbours in a block's
    window; for each (slab, block) pair the sections it needs are read once, by
    ``read_slab(z0, z1, y0, y1, x0, x1)``, which returns ``plane(z)``: the model input ``(C, h, w)`` of plane ``z``
    (``z0 <= z < z1``) in that window. The pairs are dealt out to the ranks in turn; chunks marked done are skipped.
    """
    store, done = _open_store(path, volume, classes, chunk, prob_dtype, threshold, settings, dist)
    depth, height, width, channels = volume.shape
    planner = ChunkedPredictor(predictor, (height, width), chunk)
    blocks = planner.grid.blocks(BLOCK_PIXELS)
    window = math.prod(min(n, BLOCK_PIXELS + 2 * t) for n, t in zip((height, width), planner.tile))  # with halo
    slab = max(1, SLAB_VALUES // (window * channels) - 2 * context)
    work = [
        [(z, [c for c in block if not done[z, c[0], c[1]]]) for z in range(z0, min(z0 + slab, depth))]
        for z0 in range(0, depth, slab)
        for block in blocks
    ]
    mine = [[(z, chunks) for z, chunks in pair if chunks] for pair in work[dist.rank :: dist.world_size]]
    mine = [planes for planes in mine if planes]
    total = sum(planner.count_tiles([chunks]) for planes in mine for _, chunks in planes)
    report = Throughput(total, f"rank {dist.rank}" if dist.enabled else "predict")
    for planes in mine:
        y0, y1, x0, x1 = planner.window({t for _, chunks in planes for c in chunks for t in planner.tiles_of(c)})
        plane = read_slab(planes[0][0], planes[-1][0] + 1, y0, y1, x0, x1)
        for z, chunks in planes:
            image = plane(z)

            def read(a: int, b: int, c: int, d: int, image: Any = image, y0: int = y0, x0: int = x0) -> Any:
                return image[:, a - y0 : b - y0, c - x0 : d - x0]

            def write(c: tuple[int, ...], prob: Any, z: int = z) -> None:
                store.write_chunk(z, (c[0], c[1]), planner.grid.bounds(c), prob)
                if on_chunk is not None:
                    on_chunk()

            planner.run([chunks], read, write, on_tiles=report)
    return _finish(store, dist)
