"""What every part of the benchmark shares: a timed case, device sync, the project's config, summaries."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ISBI = Path(os.environ.get("UNET_TRAIN_ISBI_ROOT", REPO.parent / "shared" / "data" / "isbi2012"))


@dataclass
class Case:
    """One thing to time: ``run()`` processes ``images_per_run`` images."""

    key: str
    group: str  # model, conv, data
    label: str
    images_per_run: int
    run: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  # images/s (conv: GFLOP/s) per repeat


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose(overrides: list[str]) -> Any:
    """The project's config as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from unet_train.config import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return hydra_compose(config_name="train", overrides=overrides)


def trainer_name(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, args.size, args.size, generator=g)
    masks = (torch.rand(args.batch, args.size, args.size, generator=g) > 0.5).long()
    return images.to(device), masks.to(device)


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True  # runs everywhere; fast only with AVX-512 BF16 / AMX (see the machine section)


def monai_version() -> str | None:
    try:
        import monai
    except ImportError:
        return None
    return str(monai.__version__)


# ----------------------------------------------------------------------------------------------
def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": [round(s, 4) for s in samples],
    }
