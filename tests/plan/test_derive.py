"""Plans derived from hand-written fingerprints: tiny, huge, sparse, RGB, 16-bit and many-class data."""

from __future__ import annotations

import pytest
import yaml

from unet_train.errors import ConfigError
from unet_train.plan.derive import DeviceFacts, derive_plan, plan_yaml

CPU = DeviceFacts(kind="cpu", name="test CPU", step_seconds={8: 0.1, 16: 0.5, 32: 2.0})
GPU = DeviceFacts(kind="cuda", name="test GPU", step_seconds={16: 0.02, 32: 0.04, 64: 0.1})


def fingerprint(side=512, channels=(1,), dtypes=("u1",), bits=8, classes=None, foreground=0.3, n=20, val=5):
    classes = classes or {"0": 1 - foreground, "1": foreground}
    top = 255.0 if bits == 8 else 4000.0
    return {
        "num_images": n, "num_val_images": val,
        "height": {"min": side, "median": side, "max": side}, "width": {"min": side, "median": side, "max": side},
        "channels": list(channels), "dtypes": list(dtypes), "bit_depth": bits,
        "intensity": [{"min": 0.0, "max": top, "percentiles": {"99.8": top * 0.9}} for _ in range(max(channels))],
        "classes": classes, "num_classes": max(int(k) for k in classes) + 1 if len(classes) > 1 else 2,
        "foreground_share": {"min": foreground, "median": foreground, "max": foreground, "mean": foreground},
    }  # fmt: skip


def values(fp, device=CPU, budget=600.0):
    return {c.key: c.value for c in derive_plan(fp, device, budget)}


def test_tiny_images_get_a_shallow_net_and_more_crops_per_step():
    got = values(fingerprint(side=40))
    # 40 px: depth 2 leaves 40 // 4 = 10 px (>= 8); the crop is the largest multiple of 4 that fits.
    assert (got["data.patch_size"], got["model.depth"]) == (40, 2)
    assert got["data.batch_size"] == 64  # 4 * (256 // 40) ** 2 = 144 crops, capped at 64


def test_huge_images_are_cropped_to_the_device_cap_with_a_deep_net():
    cpu = values(fingerprint(side=4000))
    assert (cpu["data.patch_size"], cpu["model.depth"], cpu["data.batch_size"]) == (256, 5, 4)
    gpu = values(fingerprint(side=4000), GPU)
    assert (gpu["data.patch_size"], gpu["model.depth"], gpu["data.batch_size"]) == (512, 5, 16)


def test_width_is_the_widest_that_buys_enough_steps():
    # 540 s of training: width 8 gives 5400 steps, 16 gives 1080, 32 only 270 (< 600).
    assert values(fingerprint())["model.base_channels"] == 16
    assert values(fingerprint(), budget=3600.0)["model.base_channels"] == 32
    assert values(fingerprint(), budget=30.0)["model.base_channels"] == 16  # width 8 buys 270 steps (< 500)
    assert values(fingerprint(), GPU)["model.base_channels"] == 64


def test_width_by_what_the_budget_buys_wide_then_narrow_then_sixteen():
    slow = DeviceFacts(kind="cpu", name="loaded CPU", step_seconds={8: 0.5, 16: 1.2, 32: 3.0})
    # 900 s of training: 16 buys 750 steps (>= 600), 32 only 300: the widest with 600.
    assert values(fingerprint(), slow, 1000.0)["model.base_channels"] == 16
    # 270 s: nothing buys 600; width 8 buys 540 (>= 500): more steps beat width.
    assert values(fingerprint(), slow, 300.0)["model.base_channels"] == 8
    # 210 s: width 8 buys 420 steps, width 16 175: width 16 (DSB nuclei, time-matched: width 8 after 380 steps
    # 0.795 Dice against width 16 after 200 steps 0.808). The threshold was 300 steps, which chose width 8 here.
    assert values(fingerprint(), slow, 210.0 / 0.9)["model.base_channels"] == 16
    # 63 s: width 8 buys 126 steps, too few for it to leave all-background; width 16 (52 steps) learns.
    # The old rule fell back to width 8 here.
    got = {c.key: c for c in derive_plan(fingerprint(), slow, 70.0)}
    assert got["model.base_channels"].value == 16
    assert got["model.base_channels"].reason.startswith(
        "the narrowest buys under 500 steps, where width 16 learns more in the same time: width 16, "
        "~52 steps (per step 8: 500 ms, 16: 1200 ms, 32: 3000 ms, loaded CPU)"
    )


def test_two_or_more_foreground_classes_get_at_least_width_16():
    """Where width 8 would win by steps (270 s at these speeds: 540 steps against 16's 225), a mask of several
    foreground classes still gets width 16 (issue 28, drosophila-vnc: 0.289 at width 8 against 0.604 at 16)."""
    slow = DeviceFacts(kind="cpu", name="loaded CPU", step_seconds={8: 0.5, 16: 1.2, 32: 3.0})
    three = {"0": 0.7, "1": 0.2, "2": 0.1}
    assert values(fingerprint(), slow, 300.0)["model.base_channels"] == 8  # binary: the narrow regime
    got = {c.key: c for c in derive_plan(fingerprint(classes=three), slow, 300.0)}
    assert got["model.base_channels"].value == 16
    assert got["model.base_channels"].reason == (
        "two or more foreground classes, so at least width 16; the narrowest buys under 500 steps, where width 16 "
        "learns more in the same time: width 16, ~225 steps (per step 8: 500 ms, 16: 1200 ms, 32: "
        "3000 ms, loaded CPU)"
    )
    # 1350 s of training: 16 buys 1125 steps, 32 buys 450: 16, as without the floor; of 3330 s 32 buys 1110: 32.
    assert values(fingerprint(classes=three), slow, 1500.0)["model.base_channels"] == 16
    assert values(fingerprint(classes=three), slow, 3700.0)["model.base_channels"] == 32
    objects = fingerprint(classes=three) | {"labels": "instances", "target": "boundary"}
    assert values(objects, slow, 300.0)["model.base_channels"] == 8  # instance targets: not measured, unchanged
    narrow_only = DeviceFacts(kind="cpu", name="tiny CPU", step_seconds={8: 0.5})
    assert values(fingerprint(classes=three), narrow_only, 300.0)["model.base_channels"] == 8  # nothing wider timed


def test_sparse_foreground_is_oversampled_and_dense_is_not():
    assert values(fingerprint(foreground=0.02))["data.foreground_oversample"] == 0.33
    assert values(fingerprint(foreground=0.3))["data.foreground_oversample"] == 0.0


def test_rare_classes_are_oversampled_per_class_and_named_though_the_foreground_is_not_sparse():
    # A chest X-ray set: lungs 29 %, heart 9 %, clavicles 2 % (in half the images); the foreground is 40 %.
    fp = fingerprint(classes={"0": 0.6, "1": 0.29, "2": 0.09, "3": 0.02}, foreground=0.4)
    fp["class_images"] = {"0": 1.0, "1": 1.0, "2": 1.0, "3": 0.5}
    got = {c.key: c for c in derive_plan(fp, CPU, 600.0)}
    assert got["data.foreground_oversample"].value == 0.33
    assert got["data.oversample_classes"].value == "per_class"
    assert got["data.foreground_oversample"].reason == (
        "class 2 9.0%, class 3 2.0% (in 50% of the images) of the pixels: a third of the crops centred on a class "
        "chosen uniformly among those present"
    )
    assert got["loss"].reason.startswith("soft Dice averaged over the classes")


def test_classes_that_are_all_large_are_not_oversampled_and_the_reason_lists_them():
    fp = fingerprint(classes={"0": 0.5, "1": 0.3, "2": 0.2}, foreground=0.5)
    got = {c.key: c for c in derive_plan(fp, CPU, 600.0)}  # an old fingerprint: no class_images
    assert got["data.foreground_oversample"].value == 0.0
    assert got["data.foreground_oversample"].reason == (
        "every class is at least 10% of the pixels (class 1 30%, class 2 20%): random crops see them"
    )


def test_rgb_and_mixed_grey_images_get_three_channels():
    assert values(fingerprint(channels=(3,)))["data.in_channels"] == 3
    reasons = {c.key: c.reason for c in derive_plan(fingerprint(channels=(1, 3)), CPU, 600)}
    assert "grey images are repeated to 3 channels" in reasons["data.in_channels"]


def test_every_bit_depth_gets_clipped_per_image_percentile_scaling():
    clipped = {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "image", "min_value": None,
               "max_value": None, "clip": True}  # fmt: skip
    for fp in (fingerprint(dtypes=("u2",), bits=16), fingerprint(dtypes=("f4",), bits="float"), fingerprint()):
        assert values(fp)["data.normalize"] == clipped
    reason = {c.key: c.reason for c in derive_plan(fingerprint(dtypes=("u2",), bits=16), CPU, 600)}["data.normalize"]
    assert reason.startswith("16-bit images (99.8th percentile ") and "clipped to [0, 1]" in reason


def test_many_classes_and_the_budget_and_validation_share():
    classes = {str(k): 0.1 for k in range(10)}
    got = values(fingerprint(classes=classes))
    assert got["data.num_classes"] == 10
    assert got["loss"]["_target_"] == "unet_train.losses.BCEDiceLoss"
    assert got["trainer.max_time"] == 600.0
    # Validation of 5 images of 512 px at 4 crops of 256 px per 0.5 s step, forward share 0.35: 0.875 s each;
    # 20 validations (the most) cost 17.5 s; the other 582.5 s are 1165 steps, 58 per epoch.
    assert got["data.samples_per_epoch"] == 58 * 4


def test_plan_yaml_reads_back_with_a_reason_per_choice_and_unsupported_keys_commented():
    choices = derive_plan(fingerprint(side=64), CPU, 120.0)
    text = plan_yaml(choices, ["header line"], frozenset({"data.normalize"}))
    assert text.startswith("# @package _global_\n# header line\n")
    loaded = yaml.safe_load(text)
    assert loaded["data"]["patch_size"] == 64 and loaded["model"]["depth"] == 3
    assert "normalize" not in loaded["data"] and "  # normalize: {scheme: percentile" in text
    assert loaded["loss"]["dice_weight"] == 1.0
    lines = text.splitlines()
    for choice in choices:  # every value line follows its reason
        name = choice.key.split(".", 1)[-1]
        index = next(i for i, line in enumerate(lines) if line.lstrip("# ").startswith(f"{name}:"))
        assert lines[index - 1].strip() == f"# {choice.reason}"


@pytest.mark.parametrize("budget", [60.0, 600.0, 3600.0])
def test_validation_share_stays_small(budget):
    got = values(fingerprint(n=200, val=50), budget=budget)
    assert got["trainer.max_time"] == budget and got["data.samples_per_epoch"] >= got["data.batch_size"]


def test_a_validation_longer_than_the_budget_is_refused_not_planned_as_one_step_epochs():
    # One 32768^2 validation image: ~1330 s of forward passes at 0.5 s per 4 x 256^2 step (width 16 on CPU).
    huge = {**fingerprint(n=20, val=1), "val_pixels": 32768**2}
    with pytest.raises(ConfigError) as error:
        derive_plan(huge, CPU, 600.0)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("This data cannot be validated in a budget of 600 s: one of its 1 validation image(s) ")
    assert "(1073.7 Mpx) takes ~" in message and "Give a budget of at least " in message
    # A validation at a third of the budget still fits: the steps left make long epochs and a warm-up.
    third = {**fingerprint(n=20, val=1), "val_pixels": 32768**2 // 6}
    got = values(third, budget=600.0)
    assert got["data.samples_per_epoch"] // got["data.batch_size"] > 100 and got["sched.warmup_steps"] > 0
