"""Validation inside the budget: a timed whole-image validation sizes the subset and the frequency (issue 28)."""

from __future__ import annotations

import math

import pytest

from unet_train.plan.derive import DeviceFacts, derive_plan
from unet_train.plan.validation_plan import MIN_VAL_IMAGES, TARGET_VALIDATIONS, VAL_SHARE

from .test_derive import fingerprint


def ultrasound(n_val=159, side=800):
    """Many large validation images (the ultrasound set of issue 28: 159 of ~540x800)."""
    return {**fingerprint(side=side, n=638, val=n_val), "val_pixels": n_val * side * side}


def plan(fp, device, budget):
    choices = derive_plan(fp, device, budget)
    return {c.key: c.value for c in choices}, {c.key: c.reason for c in choices}


@pytest.mark.parametrize("budget", [120.0, 300.0, 600.0, 3600.0])
def test_many_large_validation_images_get_a_subset_sized_to_the_budget(budget):
    # 159 whole images at 0.6 s: a full validation is 95 s, a third of a 300 s budget. The per-pixel model of old
    # planned 48-step epochs each followed by all 159 images: validation took most of the budget.
    fp = ultrasound()
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.1}, val_seconds={8: 0.6}, val_pixels=800 * 800)
    got, why = plan(fp, device, budget)
    subset = got["trainer.val_subset"]
    assert subset is not None and min(MIN_VAL_IMAGES, int(VAL_SHARE * budget / 0.6)) <= subset < 159
    val_s = subset * 0.6
    epoch_s = got["data.samples_per_epoch"] // got["data.batch_size"] * 0.1
    validations = math.ceil(budget / (epoch_s + val_s))  # one per epoch, the last (partial) epoch's included
    assert validations * val_s <= VAL_SHARE * budget * 1.1  # about a tenth of the budget, at every budget
    assert "of the 159 validation images (a fixed sample" in why["trainer.val_subset"]
    assert "0.60 s per image (measured)" in why["trainer.val_subset"]
    assert got["trainer.val_share"] == VAL_SHARE and got["trainer.val_every"] == 1


def test_the_subset_is_what_ten_validations_in_a_tenth_of_the_budget_buy():
    # 1200 s budget, 120 s for validation, 10 validations of 12 s: 12 s / 0.5 s per image = 24 images.
    fp = ultrasound()
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.1}, val_seconds={8: 0.5}, val_pixels=800 * 800)
    got, why = plan(fp, device, 1200.0)
    assert got["trainer.val_subset"] == int(VAL_SHARE * 1200 / TARGET_VALIDATIONS / 0.5) == 24
    # One full validation is 159 x 0.5 = 80 s: the plan says it fits in the share (120 s).
    assert "One full validation (~80 s, 7% of the budget) fits in that share" in why["trainer.val_subset"]
    # 10 validations of 12 s, the other 1080 s are 10800 steps of 0.1 s: 1080 per epoch.
    assert got["data.samples_per_epoch"] == 1080 * got["data.batch_size"]


def test_a_short_budget_validates_fewer_times_on_at_least_min_val_images():
    # 300 s budget, 30 s for validation: ten validations would hold 6 images each; the sample keeps
    # MIN_VAL_IMAGES (20 images, 10 s) and validates 3 times. The other 270 s are 2700 steps of 0.1 s.
    fp = ultrasound()
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.1}, val_seconds={8: 0.5}, val_pixels=800 * 800)
    got, why = plan(fp, device, 300.0)
    assert got["trainer.val_subset"] == MIN_VAL_IMAGES == 20
    assert got["data.samples_per_epoch"] == 900 * got["data.batch_size"]  # 2700 steps / 3 validations
    assert "3 validations of the sample fit in 10% of the budget" in why["trainer.val_subset"]


def test_fewer_validations_before_fewer_images_and_never_past_the_share():
    fp = ultrasound()
    # 2 s per image, 120 s budget: 12 s of validation hold 6 images once, fewer than MIN_VAL_IMAGES: 6, once.
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.05}, val_seconds={8: 2.0}, val_pixels=800 * 800)
    got, _ = plan(fp, device, 120.0)
    assert got["trainer.val_subset"] == 6
    epoch_steps = got["data.samples_per_epoch"] // got["data.batch_size"]
    validations = (120 - 12) / 0.05 // epoch_steps
    assert validations == 1  # one validation of 6 images (12 s) fits; two would pass the share
    # 5 s per image: 12 s holds two images once, not five.
    slow = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.05}, val_seconds={8: 5.0}, val_pixels=800 * 800)
    assert plan(fp, slow, 120.0)[0]["trainer.val_subset"] == 2


def test_a_small_split_is_validated_whole_and_the_plan_says_so():
    fp = {**fingerprint(side=512, n=20, val=5), "val_pixels": 5 * 512 * 512}
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.1}, val_seconds={8: 0.1}, val_pixels=512 * 512)
    got, why = plan(fp, device, 600.0)
    assert got["trainer.val_subset"] is None
    assert why["trainer.val_subset"].startswith("all 5 validation images: 0.10 s per image (measured), 20 validations")


def test_a_timed_image_of_another_size_is_scaled_by_its_pixels():
    # Timed on a 400x400 image at 0.25 s: an 800x800 one costs 1 s, so 10 validations of 3 s hold 3 images.
    fp = ultrasound()
    device = DeviceFacts(kind="cpu", name="CPU", step_seconds={8: 0.1}, val_seconds={8: 0.25}, val_pixels=400 * 400)
    got, why = plan(fp, device, 300.0)
    assert got["trainer.val_subset"] == MIN_VAL_IMAGES  # 3 images < MIN_VAL_IMAGES: fewer validations instead
    assert "1.00 s per image (measured)" in why["trainer.val_subset"]
