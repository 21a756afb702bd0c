"""Self-describing checkpoints, written atomically and loaded without running code.

A checkpoint is a dict: ``format``, ``model`` (state dict of the unwrapped model),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``step``, ``best``
(monitored value), ``monitor``, ``rng`` and ``config`` (the resolved run config as plain
containers), so ``unet-eval`` and a resumed ``unet-train`` need nothing else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_train.errors import CheckpointError

FORMAT = "unet-train/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or kill at any point leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a unet-train checkpoint with ``weights_only=True``; explain any failure in one message."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass ckpt=<run>/checkpoints/best.pt or last.pt.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types here; all mean "not a checkpoint we can load"
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        blocked = [line for line in str(exc).splitlines() if "GLOBAL" in line]
        if blocked:
            raise CheckpointError(
                f"Refused to load {path}: it holds pickled objects other than tensors and plain values, which "
                "could run code when loaded. Only load checkpoints written by unet-train. " + blocked[0].strip()
            ) from exc
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupted or not a torch file): {first_line}"
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a unet-train checkpoint (no format={FORMAT!r} entry).")
    return checkpoint
