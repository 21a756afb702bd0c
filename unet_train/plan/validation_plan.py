"""How a plan validates inside its budget: which validation images, how often, from a timed validation forward.

The rule (written into each plan's comments with its figures): validation may take ``VAL_SHARE`` of the budget.
One whole validation image is timed at the planned width (:mod:`unet_train.plan.measure`); when
``TARGET_VALIDATIONS`` validations of the whole split do not fit in that share, the plan validates on a fixed
sample of it (``trainer.val_subset``, the same images every time, so ``best.pt`` is chosen on one yardstick),
at least ``MIN_VAL_IMAGES`` images, fewer validations before fewer images. The epoch is the interval between
validations; ``trainer.val_share`` lets the run validate less often when it measures more (a loaded machine).
A pure function of the fingerprint and the timings, so it is tested fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unet_train.errors import ConfigError

if TYPE_CHECKING:
    from unet_train.plan.derive import DeviceFacts

VAL_SHARE = 0.1  # validation's share of the budget
MAX_VAL_SHARE = 0.5  # one validation of a single image costing more than this share cannot be planned for
TARGET_VALIDATIONS = 10  # validations a budget should hold, so best.pt can pick a late model
MAX_VALIDATIONS = 20  # more add checkpoints and little choice
# The smallest sample that still ranks checkpoints (fewer validations come first). Issue 28's matrix, DSB nuclei
# at 120 s beside a busy process: 5 of the 92 validation images chose best.pt at its third of five validations
# (val Dice 0.681 against the last's 0.649); on the test images best.pt scored 0.737 and last.pt 0.761. Per-image
# Dice varies too much between images for five to tell two late checkpoints apart.
MIN_VAL_IMAGES = 20
# Only when nothing was timed (measure=false): a whole-image forward's cost per pixel, as a share of a training
# step's per pixel (forward only, no backward or update).
FORWARD_SHARE = 0.35


@dataclass(frozen=True)
class ValidationPlan:
    """What :func:`plan_validation` decided, with the figures its reasons quote."""

    val_images: int  # images in the validation split
    subset: int | None  # images each validation scores (None: all)
    image_s: float  # seconds per validation image (timed, or a guess)
    timed: bool  # whether image_s was measured
    validations: int  # validations the budget holds
    steps: int  # training steps the rest of the budget buys
    epoch_steps: int  # steps between validations
    step_s: float

    @property
    def val_s(self) -> float:
        """Seconds of one validation."""
        return (self.subset or self.val_images) * self.image_s


def seconds_per_image(fp: dict, device: DeviceFacts, width: int, step_s: float, step_pixels: int) -> tuple[float, bool]:
    """Seconds to validate one mean-sized validation image at ``width``, and whether it was timed.

    A timed image of another size is scaled by its pixels (a forward's cost is about linear in them).
    """
    val_images = max(1, fp.get("num_val_images") or round(fp["num_images"] * 0.25))
    mean_pixels = fp.get("val_pixels", 0) / val_images or fp["height"]["median"] * fp["width"]["median"]
    timed = device.val_seconds.get(width)
    if timed is not None and device.val_pixels:
        return timed * mean_pixels / device.val_pixels, True
    return mean_pixels / step_pixels * step_s * FORWARD_SHARE, False


def plan_validation(
    fp: dict, device: DeviceFacts, width: int, step_s: float, budget_s: float, step_pixels: int
) -> ValidationPlan:
    """Subset, validations and epoch length so that validation costs about ``VAL_SHARE`` of ``budget_s``."""
    # Without the split's size, data.val_fraction 0.2 holds out a quarter of the training count.
    val_images = int(fp.get("num_val_images") or round(fp["num_images"] * 0.25)) or 1
    image_s, timed = seconds_per_image(fp, device, width, step_s, step_pixels)
    share = VAL_SHARE * budget_s
    per_validation = share / TARGET_VALIDATIONS
    images = min(val_images, max(MIN_VAL_IMAGES, int(per_validation / max(image_s, 1e-9))))
    images = max(1, min(images, int(share / max(image_s, 1e-9))))  # one validation must fit in the share
    check_validation_fits(image_s, val_images, fp.get("val_pixels", 0) / val_images, budget_s, device)
    val_s = images * image_s
    validations = int(max(1, min(MAX_VALIDATIONS, share / max(val_s, 1e-9))))
    steps = max(1, int((budget_s - validations * val_s) / step_s))
    validations = min(validations, steps)
    return ValidationPlan(
        val_images=val_images, subset=None if images >= val_images else images, image_s=image_s, timed=timed,
        validations=validations, steps=steps, epoch_steps=max(1, steps // validations), step_s=step_s,
    )  # fmt: skip


def validation_choices(
    plan: ValidationPlan, batch: int, budget_s: float, guessed_step_s: float | None = None
) -> list[tuple[str, Any, str]]:
    """The plan's validation keys as ``(key, value, reason)``: the subset, the epoch length, the frequency.

    ``guessed_step_s``: the step time assumed when no step was timed (said in the reason)."""
    how = "measured" if plan.timed else "guessed (nothing was timed)"
    each = f"~{seconds(plan.val_s)} each"
    full_s = plan.val_images * plan.image_s
    if plan.subset is None:
        subset_reason = (
            f"all {plan.val_images} validation images: {seconds(plan.image_s)} per image ({how}), {plan.validations} "
            f"validations of ~{seconds(plan.val_s)} fit in {VAL_SHARE:.0%} of the budget"
        )
    else:
        fits = "fits" if full_s <= VAL_SHARE * budget_s else "does not fit"
        subset_reason = (
            f"{plan.subset} of the {plan.val_images} validation images (a fixed sample: best.pt is chosen on the same "
            f"images every time): {seconds(plan.image_s)} per image ({how}); {plan.validations} validations of the "
            f"sample fit in {VAL_SHARE:.0%} of the budget. One full validation (~{seconds(full_s)}, "
            f"{full_s / budget_s:.0%} of the budget) {fits} in that share: score best.pt on the whole split with "
            "unet-eval ckpt=<run>/checkpoints/best.pt split=val"
        )
    if guessed_step_s is not None:
        each += f", from a guessed {guessed_step_s:g} s per step: nothing was timed"
    epoch_reason = (
        f"{plan.epoch_steps} steps per epoch of {seconds(plan.step_s)}: ~{plan.validations} validations ({each}) cost "
        f"~{plan.validations * plan.val_s / budget_s:.0%} of the budget"
    )
    return [
        ("trainer.val_subset", plan.subset, subset_reason),
        ("data.samples_per_epoch", plan.epoch_steps * batch, epoch_reason),
        ("trainer.val_every", 1, "the epoch length above already spaces the validations"),
        ("trainer.val_share", VAL_SHARE, f"the run re-measures: if a validation costs more than {VAL_SHARE:.0%} of "
         "the training time between two (a loaded machine), it validates less often (logged)"),
    ]  # fmt: skip


def seconds(value: float) -> str:
    """``80 s``, ``0.60 s`` or ``under 0.01 s``: a time for a plan's comment."""
    if value >= 10:
        return f"{value:.0f} s"
    return f"{value:.2f} s" if value >= 0.005 else "under 0.01 s"


def check_validation_fits(
    image_s: float, val_images: int, image_pixels: float, budget_s: float, device: DeviceFacts
) -> None:
    """Refuse a budget in which validating a single image takes more than ``MAX_VAL_SHARE`` of it.

    Such a plan could only train for a handful of steps (one-step epochs, no warm-up) and the run
    would overrun its budget by the validation; better to say so than to write it.
    """
    if image_s <= MAX_VAL_SHARE * budget_s:
        return
    where = f"on {device.name}" if device.step_seconds else "(a guess: no training step was timed)"
    raise ConfigError(
        f"This data cannot be validated in a budget of {budget_s:g} s: one of its {val_images} validation image(s) "
        f"({image_pixels / 1e6:.1f} Mpx) takes ~{image_s:.0f} s {where}, more than {MAX_VAL_SHARE:.0%} of the "
        f"budget. Give a budget of at least {math.ceil(image_s / MAX_VAL_SHARE)} s (budget=, or trainer.max_time "
        "with plan=auto), or validate on smaller images."
    )
