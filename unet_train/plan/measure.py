"""Measure the machine for a plan: the time of a few training steps at each candidate base width, taken as
the run will take them."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from unet_train.config import config_dir
from unet_train.plan.derive import FLOOR_WIDTH, MIN_STEPS, DeviceFacts, choose_width
from unet_train.plan.validation_plan import VAL_SHARE

log = logging.getLogger(__name__)

WIDTHS = {"cpu": (8, 16, 32), "cuda": (16, 32, 64)}
LONG_CALL_S = 2.0  # a warm-up call this long is followed by one timed call, not ``calls``


def measure_device(
    device: torch.device,
    in_channels: int,
    num_classes: int,
    patch: int | Sequence[int],
    depth: int,
    batch: int,
    steps: int = 2,
    budget_s: float | None = None,
    precision: str = "auto",
    channels_last: bool | str = "auto",
    val_size: tuple[int, ...] | None = None,
    run_cfg: DictConfig | None = None,
    pool_factors: list[list[int]] | None = None,
    narrowest: int | None = None,
) -> DeviceFacts:
    """Seconds per training step of the vanilla UNet at each width of ``WIDTHS``: the step ``unet-train`` takes
    (BCE + Dice, fused Adam, gradient clipping) in the layout and precision it will take them.

    ``channels_last``/``precision`` ``auto`` on a CPU: both settings are timed and the faster one's time is the
    width's (engine/autotune.py; cached, so the run reuses the measurement); otherwise ``steps`` steps after a
    warm-up one. Widths above ``FLOOR_WIDTH`` are not timed once a narrower one is already too slow for
    ``MIN_STEPS`` steps in ``budget_s``. ``patch`` as ``(z, y, x)`` times a 3D UNet with ``pool_factors`` on
    crops of that size (a volume plan); ``val_size`` then is a ``(z, y, x)`` block. ``narrowest``: the plan's
    narrowest width (derive.min_width), for the width whose validation is timed.
    """
    from unet_train.engine import autotune
    from unet_train.engine.runtime import make_runtime
    from unet_train.engine.trial import trial_steps
    from unet_train.losses import BCEDiceLoss
    from unet_train.models import UNet

    kind = "cuda" if device.type == "cuda" else "cpu"
    name = torch.cuda.get_device_name(device) if kind == "cuda" else cpu_name(torch.get_num_threads())
    out_channels = 1 if num_classes <= 2 else num_classes
    sides = (patch, patch) if isinstance(patch, int) else tuple(int(p) for p in patch)

    def net(width: int) -> torch.nn.Module:
        return UNet(in_channels=in_channels, out_channels=out_channels, base_channels=width, depth=depth,
                    spatial_dims=len(sides), pool_factors=pool_factors).to(device)  # fmt: skip

    images = torch.rand(batch, in_channels, *sides)
    target = torch.randint(0, max(2, num_classes), (batch, *sides))
    if out_channels == 1:
        target = target.clamp(max=1)
    loss_fn = BCEDiceLoss()
    cfg = OmegaConf.create({"optim": OmegaConf.load(config_dir() / "optim" / "adam.yaml")})  # the default optimizer
    if run_cfg is not None:  # the run's own step: its optimizer and clipping, in its precision and layout
        own = {key: OmegaConf.to_container(run_cfg[key], resolve=True) for key in ("optim", "trainer")}
        cfg = OmegaConf.create(own)
        precision, channels_last = str(run_cfg.trainer.precision), run_cfg.trainer.channels_last
    runtime = make_runtime(str(device), precision, channels_last, deterministic=False)
    timed: dict[int, float] = {}
    runtimes: dict[int, Any] = {}
    for width in WIDTHS[kind]:
        model = net(width)
        make_step, what = trial_steps(cfg, model, loss_fn, {"image": images, "mask": target})
        try:
            chosen, seconds = autotune.tune(runtime, "training", make_step, what, tuple(images.shape))
            if seconds:
                timed[width] = seconds[autotune.Setting(chosen.channels_last, chosen.precision).name]
            else:
                timed[width] = _seconds_per_call(make_step(chosen), steps, device)
        except torch.cuda.OutOfMemoryError:  # the device's memory: a wider net does not fit this crop and batch
            if not timed:
                raise
            log.info("width %d: out of GPU memory for %d crops of %s; planning the narrower widths", width, batch,
                     "x".join(map(str, sides)))  # fmt: skip
            del model, make_step
            torch.cuda.empty_cache()
            break
        runtimes[width] = chosen
        log.info("width %d: %.0f ms per step (%d x %s px crops, %s, %s)", width, timed[width] * 1000, batch,
                 "x".join(map(str, sides)),
                 "channels-last" if chosen.channels_last else "NCHW", chosen.precision)  # fmt: skip
        if budget_s is not None and width >= FLOOR_WIDTH and timed[width] * MIN_STEPS > budget_s:
            break  # a wider one would be slower still; up to FLOOR_WIDTH every width is timed (choose_width)
    facts = DeviceFacts(kind=kind, name=name, step_seconds=timed)
    if val_size is None or budget_s is None:
        return facts
    width = choose_width(facts, budget_s * (1 - VAL_SHARE), narrowest)[0]  # the width the plan will choose
    model = net(width)
    val_s = time_validation(model, runtimes[width], loss_fn, in_channels, num_classes, val_size)
    log.info("width %d: %.2f s to validate one whole %s image", width, val_s, "x".join(map(str, val_size)))
    return replace(facts, val_seconds={width: val_s}, val_pixels=math.prod(val_size))


def time_validation(
    model: torch.nn.Module, runtime: Any, loss_fn: torch.nn.Module, in_channels: int, num_classes: int,
    size: tuple[int, ...], calls: int = 2,
) -> float:  # fmt: skip
    """Seconds to validate one whole ``size`` image: the run's own :func:`~unet_train.engine.evaluate.evaluate`
    (forward, loss, scores) in ``runtime``'s layout and precision; the faster of ``calls`` calls after a warm-up one,
    or of one when the warm-up is long (a large image on a CPU: a third call costs as much as it tells)."""
    from unet_train.engine.evaluate import evaluate
    from unet_train.engine.runtime import to_channels_last

    model = to_channels_last(model) if runtime.channels_last else model
    # A mask of a few regions, as real masks are: random pixel noise made thousands of one-pixel segments, and
    # the per-segment scores took ten times the forward pass (5.3 s for one 256x320 image on a CPU).
    target = torch.zeros((1, *size), dtype=torch.long)
    h, w = size[-2:]
    for k in range(1, max(2, num_classes)):  # a volume's block: the same regions in every plane
        target[..., h * k // (2 * num_classes + 2) : h // 2, w // 4 : 3 * w // 4] = k
    loader = cast(Any, [{"image": torch.rand(1, in_channels, *size), "mask": target, "name": ["timed"]}])
    times: list[float] = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        evaluate(model, loader, runtime, max(2, num_classes), loss_fn=loss_fn)  # reads the scores: synchronised
        times.append(time.perf_counter() - start)
        if len(times) == 2 and times[0] > LONG_CALL_S:
            break
    # Never the warm-up alone: it pays one-time costs (imports, 4.4 s of torch._dynamo on a loaded CPU, kernel
    # choice for a new size) that made a 0.3 s validation of a 256x320 image read 5.3 s.
    return min(times[1:])


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
