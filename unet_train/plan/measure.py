"""Measure the machine for a plan: the time of a few training steps at each candidate base width, taken as
the run will take them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from unet_train.config import config_dir
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
    precision: str = "32",
    channels_last: bool | str = "auto",
) -> DeviceFacts:
    """Seconds per training step of the vanilla UNet at each width of ``WIDTHS``: the step ``unet-train`` takes
    (BCE + Dice, fused Adam, gradient clipping) in the layout and precision it will take them.

    ``channels_last``/``precision`` ``auto`` on a CPU: both settings are timed and the faster one's time is the
    width's (engine/autotune.py; cached, so the run reuses the measurement); otherwise ``steps`` steps after a
    warm-up one. Wider widths are not timed once a narrower one is already too slow for ``MIN_STEPS`` steps in
    ``budget_s``.
    """
    from unet_train.engine import autotune
    from unet_train.engine.run import trial_steps
    from unet_train.engine.runtime import make_runtime
    from unet_train.losses import BCEDiceLoss
    from unet_train.models import UNet

    kind = "cuda" if device.type == "cuda" else "cpu"
    name = torch.cuda.get_device_name(device) if kind == "cuda" else cpu_name(torch.get_num_threads())
    out_channels = 1 if num_classes <= 2 else num_classes
    images = torch.rand(batch, in_channels, patch, patch)
    target = torch.randint(0, max(2, num_classes), (batch, patch, patch))
    if out_channels == 1:
        target = target.clamp(max=1)
    loss_fn = BCEDiceLoss()
    cfg = OmegaConf.create({"optim": OmegaConf.load(config_dir() / "optim" / "adam.yaml")})  # the default optimizer
    runtime = make_runtime(str(device), precision, channels_last, deterministic=False)
    timed: dict[int, float] = {}
    for width in WIDTHS[kind]:
        model = UNet(in_channels=in_channels, out_channels=out_channels, base_channels=width, depth=depth).to(device)
        make_step, what = trial_steps(cfg, model, loss_fn, {"image": images, "mask": target})
        chosen, seconds = autotune.tune(runtime, "training", make_step, what, tuple(images.shape))
        if seconds:
            timed[width] = seconds[autotune.Setting(chosen.channels_last, chosen.precision).name]
        else:
            timed[width] = _seconds_per_call(make_step(chosen), steps, device)
        log.info("width %d: %.0f ms per step (%d x %d px crops, %s, %s)", width, timed[width] * 1000, batch, patch,
                 "channels-last" if chosen.channels_last else "NCHW", chosen.precision)  # fmt: skip
        if budget_s is not None and timed[width] * MIN_STEPS > budget_s:
            break  # a wider one would be slower still
    return DeviceFacts(kind=kind, name=name, step_seconds=timed)


def _seconds_per_call(step: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean seconds of ``calls`` calls after one warm-up call (the first allocates and picks kernels)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls


def cpu_name(threads: int) -> str:
    return f"CPU, {threads} thread{'s' if threads != 1 else ''}"
