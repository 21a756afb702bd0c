"""Checkpoints for the export tests: tiny real-config models with non-trivial batch norm statistics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from unet_train.build import build_model
from unet_train.engine.checkpoint import FORMAT

from ..conftest import TINY, compose_config

# A tiny 3D model on a folder of volumes (tests/data/volume_folder.py), pooled as thick sections are:
# y and x first, then all three axes, so its inputs pad to multiples of (2, 4, 4).
VOLUME_MODEL = [
    "data=volumes",
    "data.in_channels=1",
    "data.num_classes=2",
    "model.base_channels=4",
    "model.depth=2",
    "model.spatial_dims=3",
    "model.pool_factors=[[1,2,2],[2,2,2]]",
]


def make_checkpoint(
    path: Path, overrides: Sequence[str] = (), seed: int = 0, base: Sequence[str] = tuple(TINY)
) -> Path:
    """A unet-train checkpoint of the ``base`` config (the TINY quick start) plus ``overrides`` (untrained, seeded).

    The batch norms get random running statistics and affine parameters, so that folding them is
    tested (fresh ones are the identity).
    """
    cfg = compose_config([*base, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model": model.state_dict(), "config": config, "epoch": 0}, path)
    return path


def make_volume_checkpoint(path: Path, root: Path, overrides: Sequence[str] = (), seed: int = 0) -> Path:
    """A checkpoint of the tiny anisotropic 3D model, its data config pointing at the volume folder ``root``."""
    return make_checkpoint(path, [f"data.root={root}", *overrides], seed, base=VOLUME_MODEL)
