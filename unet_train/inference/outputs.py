"""What ``unet-predict`` writes for an image or a TIFF stack predicted in memory, written whole or not at all.

Per image: ``<name>_prob.tif`` (float32 probabilities: ``(H, W)`` of the positive class for a binary model,
``(K, H, W)`` otherwise), ``<name>.png`` (the mask: 0/255 for a binary model, class indices otherwise) and,
with instances, ``<name>_labels.tif``. A stack gives ``(N, H, W)`` TIFF stacks written slice by slice.
Every file is written under a temporary name and renamed when complete (:func:`written_whole`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage import io as skio

from unet_train.errors import UserError
from unet_train.inference.instances import instance_labels
from unet_train.inference.sources import Volume
from unet_train.inference.tiling import TiledPredictor
from unet_train.safe_io import cleared, confined, make_folder

# What an image or stack predicted in memory writes: <name><suffix> (see predict_in_memory).
OUTPUT_SUFFIXES = ("_prob.tif", ".png", "_labels.tif", "_mask.tif")


def mask_of(prob: torch.Tensor, threshold: float) -> np.ndarray:
    """Probabilities ``(K, H, W)`` -> uint8 mask: 0/255 for a binary model, argmax class indices otherwise."""
    if prob.shape[0] == 1:
        return (prob[0] > threshold).numpy().astype(np.uint8) * 255
    return prob.argmax(0).numpy().astype(np.uint8)


def probability_array(prob: torch.Tensor) -> np.ndarray:
    """What ``<name>_prob.tif`` holds: the positive class ``(H, W)`` for a binary model, else ``(K, H, W)``."""
    return (prob[0] if prob.shape[0] == 1 else prob).numpy().astype(np.float32, copy=False)


@contextlib.contextmanager
def removed_on_failure(paths: Sequence[Path], errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Remove again those of ``paths`` that did not exist before when the block fails with one of ``errors`` (a
    refused input: NaN pixels or a truncated file found mid-way), so it leaves no output folder or store behind.
    A folder goes only when empty, except a Zarr store this block created (a path ending in ``.zarr``); the
    files themselves are written whole or not at all (:func:`written_whole`)."""
    fresh = [p for p in paths if not p.exists() and not p.is_symlink()]
    try:
        yield
    except errors:
        for path in reversed(fresh):  # files before the folders that hold them
            if path.is_dir() and not path.is_symlink():
                if path.name.lower().endswith(".zarr"):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):  # a folder that holds anything else stays
                        path.rmdir()
            elif path.exists() or path.is_symlink():
                path.unlink()
        raise


def predict_in_memory(
    predictor: TiledPredictor,
    path: Path,
    volume: Volume,
    out: Path,
    model_input: Callable[[np.ndarray], torch.Tensor],
    threshold: float,
    method: str | None = None,
    min_distance: int = 5,
    on_tiles: Callable[[int], None] | None = None,
) -> list[Path]:
    """An image or a TIFF stack with whole-plane outputs: TIFF probabilities, PNG/TIFF masks (and labels).

    ``model_input(raw)`` turns each plane's raw pixels into the model input; each plane is normalised on its
    own, as training normalised each image (``per: image`` statistics of that plane), as the chunked path
    does (:class:`~unet_train.inference.sources.PlaneScaling`). The planes are predicted with the tiles
    :meth:`TiledPredictor.for_shape` fixes for their size (the whole plane where it fits the memory budget).
    """
    _, height, width, _ = volume.shape
    plane_predictor = predictor.for_shape(height, width)

    def planes() -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
        for z in range(volume.depth):
            prob = plane_predictor.predict(model_input(volume.read(z, 0, height, 0, width)), on_tiles=on_tiles)
            labels = instance_labels(prob.numpy(), method, threshold, min_distance) if method else None
            yield prob, labels

    if not volume.has_z:
        prob, labels = next(planes())  # read and predicted before anything is written
        names = ["_prob.tif", ".png", *(["_labels.tif"] if labels is not None else [])]
        files = [out / f"{path.stem}{suffix}" for suffix in names]
        with removed_on_failure([out], (UserError,)):
            make_folder(out, out)
            with written_whole(files) as temps:
                tifffile.imwrite(temps[0], probability_array(prob))
                skio.imsave(temps[1], mask_of(prob, threshold), check_contrast=False)
                if labels is not None:
                    tifffile.imwrite(temps[2], labels)
        return files
    # A stack: appended slice by slice (contiguous=True keeps one series, so files read back as (N, H, W)).
    names = ["_prob.tif", "_mask.tif", *(["_labels.tif"] if method else [])]
    files = [out / f"{path.stem}{suffix}" for suffix in names]
    with removed_on_failure([out], (UserError,)):
        make_folder(out, out)
        with written_whole(files) as temps:
            writers = [tifffile.TiffWriter(f) for f in temps]
            try:
                for prob, labels in planes():
                    writers[0].write(probability_array(prob), contiguous=True)
                    writers[1].write(mask_of(prob, threshold), contiguous=True)
                    if labels is not None:
                        writers[2].write(labels, contiguous=True)
            finally:
                for writer in writers:
                    writer.close()
    return files


@contextlib.contextmanager
def written_whole(files: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary names beside ``files`` to write them under: renamed to ``files`` when the block completes,
    removed when it does not (Ctrl-C, an error), so an output under its final name is always complete and a
    rerun redoes an interrupted one. The renames replace names: no link at a final name is written through."""
    for final in files:
        confined(final, final.parent)  # a planted link out of the output folder is refused in one line
    # The suffix tells writers the format; whatever was planted at a temporary name is removed first.
    temps = [cleared(f.with_name(f".{f.stem}.partial{f.suffix}")) for f in files]
    try:
        yield temps
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    for temp, final in zip(temps, files):
        os.replace(temp, final)
