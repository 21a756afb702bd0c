"""The files of ``unet-predict``: which inputs, which outputs (and that they clash with nothing), written whole."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_train.data.folder import IMAGE_SUFFIXES
from unet_train.errors import CheckpointError, ConfigError, DataError
from unet_train.inference.sources import (
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    TIFF_SUFFIXES,
    is_chunked_input,
    is_zarr_path,
)
from unet_train.objects.heads import affinity_offsets
from unet_train.objects.params import instance_target
from unet_train.safe_io import cleared, confined

# What an image or stack predicted in memory writes: <name><suffix> (see predict_in_memory).
OUTPUT_SUFFIXES = ("_prob.tif", ".png", "_labels.tif", "_mask.tif")


def find_inputs(spec: str | Path, volumes: bool = False) -> list[Path]:
    """The inputs named by ``input``: one file or store, or the images of a folder (sorted by name); with
    ``volumes`` (a 3D model) a folder's volumes too (NIfTI, HDF5, Zarr stores, as ``data=volumes`` reads)."""
    from unet_train.data.volumes import volume_stem  # imports the inference modules

    path = Path(spec).expanduser()
    if path.is_dir() and not is_zarr_path(path):
        files = sorted(
            p
            for p in path.iterdir()
            if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            or (
                volumes
                and not p.name.startswith(".")
                and volume_stem(p) is not None
                and (p.is_file() or is_zarr_path(p))
            )
        )
        if not files:
            raise DataError(f"input={path} is a folder without images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    if not path.exists():
        raise DataError(f"input={path} does not exist; pass an image, a TIFF stack or a folder of images.")
    known = (*IMAGE_SUFFIXES, *TIFF_SUFFIXES, *HDF5_SUFFIXES, *NIFTI_SUFFIXES)
    if not is_zarr_path(path) and path.suffix.lower() not in known and not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise DataError(f"input={path} is not an image this tool reads ({', '.join(known)}, or a Zarr store).")
    return [path]


def check_output_names(files: list[Path], out: Path, to_zarr: bool) -> None:
    """Refuse inputs whose outputs would overwrite each other (``a.png`` and ``a.tif``) or an input itself."""
    if to_zarr:
        return
    seen: dict[str, Path] = {}
    inputs = {p.resolve() for p in files}
    for path in files:
        name = path.name.split(".")[0] if is_chunked_input(path) else path.stem
        if name in seen:
            raise ConfigError(
                f"{seen[name]} and {path} would both write {out / name}*; rename one, or predict them separately."
            )
        seen[name] = path
        outputs = [f"{name}.zarr"] if is_chunked_input(path) else [f"{name}{s}" for s in OUTPUT_SUFFIXES]
        clash = [out / o for o in outputs if (out / o).resolve() in inputs]
        if clash:
            raise ConfigError(f"output={out} would overwrite the input {clash[0]}; choose another output folder.")


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


def _ensemble_fact(data: Mapping[str, Any], key: str) -> Any:
    if key == "target":
        return instance_target(data)
    if key == "affinity_offsets":
        return [list(o) for o in affinity_offsets(data)] if instance_target(data) == "affinities" else None
    return data.get(key)


def check_ensemble(paths: Sequence[str], data: Sequence[Mapping[str, Any]]) -> None:
    """Refuse an ensemble whose models' data configs differ in channels, classes or instance target (each of
    which changes what the outputs' channels mean) or in affinity offsets, naming the first checkpoint that differs."""
    first = data[0]
    for path, other in zip(paths[1:], data[1:]):
        for key in ("in_channels", "num_classes", "target", "affinity_offsets"):
            # the target of an instance model (its output channels), None for a model of classes; an affinities
            # model's offsets (what each of its maps means)
            mine, theirs = (_ensemble_fact(d, key) for d in (other, first))
            if mine != theirs:
                raise CheckpointError(
                    f"ckpt ensemble: {path} has data.{key}={mine} but {paths[0]} has "
                    f"{theirs}; an ensemble needs models of the same inputs and classes."
                )
