"""TorchScript by ``torch.jit.trace``: deprecated since torch 2.13, but what deepImageJ, QuPath/DJL and ilastik load."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from unet_train.safe_io import write_atomic

log = logging.getLogger(__name__)


def trace_torchscript(
    model: nn.Module, path: str | Path, in_channels: int, example_size: Sequence[int] = (45, 37)
) -> Path:
    """Trace ``model`` on one example and save it; :func:`max_abs_difference` then checks other sizes.

    The UNet's padding is a gather by index computed from the input's size, which the trace records
    as size arithmetic rather than constants, so the traced graph pads any size it is given.
    ``example_size`` is (H, W) for a 2D model, (D, H, W) for a 3D one.
    """
    path = Path(path)
    example = torch.rand(1, in_channels, *example_size)
    with warnings.catch_warnings():
        # torch.jit.trace is deprecated in torch 2.13 (a FutureWarning) and warns about shape
        # comparisons it freezes (the attention gate's resize, never taken after padding); the
        # traced graph is checked at other sizes instead of trusting either.
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        write_atomic(path, lambda handle: torch.jit.save(traced, handle))
    log.info("Wrote %s (torch.jit.trace, torch %s)", path, torch.__version__.split("+")[0])
    return path


def torchscript_runner(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs the saved TorchScript module on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run
