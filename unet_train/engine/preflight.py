"""Config checks run before any data is read or any model is built.

The trainer and paths groups are typed by their Hydra schemas (a wrong type fails when the
config is composed). The data, model and optimizer groups are free-form ``_target_`` nodes, so
a value like ``data.batch_size=four`` or ``optim.lr=-1`` would otherwise surface as a traceback
from deep inside a constructor, after the data was loaded.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unet_train.errors import ConfigError

# (key, kind, smallest allowed value, whether the smallest value itself is allowed)
NUMBERS: tuple[tuple[str, type, float, bool], ...] = (
    ("seed", int, -math.inf, True),
    ("data.batch_size", int, 1, True),
    ("data.val_batch_size", int, 1, True),
    ("data.patch_size", int, 1, True),
    ("data.num_workers", int, 0, True),
    ("data.in_channels", int, 1, True),
    ("data.num_classes", int, 2, True),
    ("data.samples_per_epoch", int, 1, True),
    ("data.fold", int, 0, True),
    ("data.num_folds", int, 2, True),
    ("data.foreground_oversample", float, 0.0, True),
    ("model.base_channels", int, 1, True),
    ("model.depth", int, 1, True),
    ("optim.lr", float, 0.0, False),
    ("optim.weight_decay", float, 0.0, True),
)


# Settings that may be ``auto`` (inferred from the files by the data config; the workers measured by the run).
AUTO = ("data.in_channels", "data.num_classes", "data.num_workers")


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _describe(kind: type, low: float, inclusive: bool) -> str:
    if kind is int:
        if low == 1:
            return "a positive integer"
        if low == 0:
            return "0 or a positive integer"
        return "an integer" if low == -math.inf else f"an integer >= {low:g}"
    return "a positive number" if low == 0 and not inclusive else f"a finite number >= {low:g}"


def check_numbers(cfg: DictConfig) -> None:
    """Each numeric setting present in ``cfg`` has the right type and range (``None`` means "not set")."""
    for key, kind, low, inclusive in NUMBERS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or (key in AUTO and value == "auto"):
            continue
        if key == "data.patch_size" and OmegaConf.is_list(value):  # [z, y, x] of a volume crop
            if len(value) != 3 or not all(_is_number(v, int) and v >= 1 for v in value):
                raise ConfigError(f"data.patch_size={list(value)} must be three positive integers [z, y, x].")
            continue
        if not _is_number(value, kind) or value < low or (value == low and not inclusive):
            either = ", or auto" if key in AUTO else ""
            raise ConfigError(f"{key}={value!r} must be {_describe(kind, low, inclusive)}{either}.")
