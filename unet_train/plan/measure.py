"""Measure the machine for a plan: the time of a few training steps at each candidate base width."""

from __future__ import annotations

import logging
import time

import torch

from unet_train.plan.derive import MIN_STEPS, DeviceFacts

log = logging.getLogger(__name__)

WIDTHS = {"cpu": (8, 16, 32), "cuda": (16, 32, 64)}


def measure_device(
    device: torch.device,
    in_channels: int,
    num_classes: int,
    patch: int,
    depth: int,
    batch: int,
    steps: int = 2,
    budget_s: float | None = None,
) -> DeviceFacts:
    """Seconds per Adam step of the vanilla UNet at each width of ``WIDTHS`` (after one warm-up step).

    Wider widths are not timed once a narrower one is already too slow for ``MIN_STEPS`` steps in ``budget_s``.
    """
    from unet_train.losses import BCEDiceLoss
    from unet_train.models import UNet

    kind = "cuda" if device.type == "cuda" else "cpu"
    name = torch.cuda.get_device_name(device) if kind == "cuda" else cpu_name(torch.get_num_threads())
    out_channels = 1 if num_classes <= 2 else num_classes
    images = torch.rand(batch, in_channels, patch, patch, device=device)
    target = torch.randint(0, max(2, num_classes), (batch, patch, patch), device=device)
    if out_channels == 1:
        target = target.clamp(max=1)
    loss_fn = BCEDiceLoss()
    timed: dict[int, float] = {}
    for width in WIDTHS[kind]:
        model = UNet(in_channels=in_channels, out_channels=out_channels, base_channels=width, depth=depth).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for i in range(steps + 1):
            if i == 1:  # the first step allocates and picks kernels
                if kind == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), target).backward()
            optimizer.step()
        if kind == "cuda":
            torch.cuda.synchronize(device)
        timed[width] = (time.perf_counter() - start) / steps
        log.info("width %d: %.0f ms per step (%d x %d px crops)", width, timed[width] * 1000, batch, patch)
        if budget_s is not None and timed[width] * MIN_STEPS > budget_s:
            break  # a wider one would be slower still
    return DeviceFacts(kind=kind, name=name, step_seconds=timed)


def cpu_name(threads: int) -> str:
    return f"CPU, {threads} thread{'s' if threads != 1 else ''}"
