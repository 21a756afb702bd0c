"""From a fingerprint, the device and a time budget to a training plan: a pure function, so it is tested fast.

Every choice is a :class:`Choice` (a dotted config key, its value and a one-line reason), written by
:func:`plan_yaml` as a ``# @package _global_`` experiment with the reasons as comments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from unet_train.objects.heads import default_offsets
from unet_train.plan.validation_plan import VAL_SHARE, plan_validation, validation_choices

MIN_BOTTLENECK = 8  # pixels of context the deepest level keeps per side
MAX_DEPTH = 5
PATCH_CAP = {"cpu": 256, "cuda": 512}  # crop sides a step of the device handles in a useful time
BATCH = {"cpu": 4, "cuda": 16}
# Width by what the budget buys (choose_width, where the measurements are): the widest width that buys
# MIN_STEPS steps; failing that the narrowest if it buys NARROW_STEPS, else FLOOR_WIDTH. measure.py times
# every width up to FLOOR_WIDTH and stops at the first wider one that cannot reach MIN_STEPS.
MIN_STEPS = 600
NARROW_STEPS = 500
FLOOR_WIDTH = 16
SPARSE_FOREGROUND = 0.1  # a foreground class (or a binary foreground) under this share of the pixels is rare
FOREGROUND_OVERSAMPLE = 0.33  # nnU-Net's share of foreground-centred crops


GUESSED_STEP_S = 0.5  # seconds per training step assumed when no step was timed (measure=false)


@dataclass(frozen=True)
class DeviceFacts:
    """What :mod:`unet_train.plan.measure` found: seconds per training step at each base width, and of validation.

    ``step_seconds`` holds the time of one step at the plan's batch size and patch size
    (:func:`geometry`), so the plan can trade width for steps; ``val_seconds`` the time of validating one whole
    image of ``val_pixels`` pixels at a width (the planned one), as the run validates.
    """

    kind: str  # cpu | cuda
    name: str
    step_seconds: dict[int, float] = field(default_factory=dict)
    val_seconds: dict[int, float] = field(default_factory=dict)
    val_pixels: int = 0


@dataclass(frozen=True)
class Choice:
    key: str  # dotted config key (data.patch_size)
    value: Any
    reason: str


def geometry(fingerprint: dict, kind: str) -> tuple[int, int, int]:
    """``(patch_size, depth, batch_size)`` from the image sizes and the kind of device."""
    smallest = int(min(fingerprint["height"]["min"], fingerprint["width"]["min"]))
    cap = PATCH_CAP.get(kind, PATCH_CAP["cpu"])
    side = min(cap, smallest)
    depth = max(1, min(MAX_DEPTH, int(math.log2(max(side, 2) / MIN_BOTTLENECK)))) if side >= 2 * MIN_BOTTLENECK else 1
    patch = max(2**depth, side // 2**depth * 2**depth)
    batch = BATCH.get(kind, BATCH["cpu"])
    # Small crops: more of them per step keeps the pixels per step (and the gradient noise) about the same.
    batch = int(min(64, batch * max(1, (cap // max(patch, 1)) ** 2)))
    return patch, depth, batch


def min_width(fp: dict) -> int | None:
    """The narrowest width a 2D plan may choose: ``FLOOR_WIDTH`` for masks of two or more foreground classes.

    Issue 28's matrix, drosophila-vnc sections (5 classes; classes 2 to 4 hold 3.1, 5.3 and 0.7 % of the
    pixels), 120 s, idle: width 8 after 563 steps scored test Dice 0.289 and never predicted classes 3 and 4;
    width 16 after 276 steps 0.604 (class 3 0.818, class 4 0.112); the plain page (width 16) 0.419. Each class
    needs features of its own, which a narrow net lacks however many steps it gets. Binary masks keep the
    narrow regime (they won the 120 s cells with it); instance targets were not measured and keep it too."""
    return FLOOR_WIDTH if fp["num_classes"] > 2 and fp.get("labels") != "instances" else None


def choose_width(device: DeviceFacts, train_seconds: float, narrowest: int | None = None) -> tuple[int, float, str]:
    """The width whose steps in ``train_seconds`` buy the most quality, by three measured regimes.

    1. The widest width that buys ``MIN_STEPS`` steps: enough steps for a wider net to pay off.
    2. Else the narrowest, if it buys ``NARROW_STEPS``: more steps beat width here.
    3. Else ``FLOOR_WIDTH`` (16): in the same time, width 16 learns more than the narrow net's extra steps.

    Where regimes 2 and 3 meet was measured time-matched (``scripts/short_horizon.py``, step counts in the
    ratio of the two widths' measured bf16 step times, 256 ms and 478 ms; one seed, one thread): on DSB nuclei,
    width 8 after 380 steps scored test Dice 0.795 against width 16 after 200 steps 0.808 (the plain page of
    PyTorch, width 16: 0.803 after the 108 steps it makes in that time), and width 8 after 620 steps 0.852
    against width 16 after 330 steps 0.831. The matrix's busy DSB cell (120 s, 379 steps at width 8) lost to
    the plain page with the old threshold of 300. With a hundred steps or fewer the narrow net may not leave
    all-background at all (issue 28, ultrasound under load: width 8 after 49 steps 0.026 against width 16
    after 52 steps 0.487).

    ``narrowest`` (:func:`min_width`) leaves out the narrower widths where wider ones were timed.
    """
    if not device.step_seconds:
        return 16, math.nan, "no step was timed; width 16 is a safe middle"
    widths = sorted(device.step_seconds)
    floor = ""
    if narrowest is not None and widths[-1] >= narrowest:
        widths = [w for w in widths if w >= narrowest]
        floor = f"two or more foreground classes, so at least width {narrowest}; "
    fitting = [w for w in widths if train_seconds / device.step_seconds[w] >= MIN_STEPS]
    narrow_steps = train_seconds / device.step_seconds[widths[0]]
    if fitting:
        width, why = fitting[-1], f"the widest with {MIN_STEPS}+ steps:"
    elif narrow_steps >= NARROW_STEPS:
        width, why = widths[0], f"none reaches {MIN_STEPS} steps; the narrowest still buys {NARROW_STEPS}+:"
    else:
        width = max([w for w in widths if w <= FLOOR_WIDTH], default=widths[0])
        why = (f"the narrowest buys under {NARROW_STEPS} steps, where width {FLOOR_WIDTH} learns more in the same "
               f"time:")  # fmt: skip
    seconds = device.step_seconds[width]
    timed = ", ".join(f"{w}: {device.step_seconds[w] * 1000:.0f} ms" for w in sorted(device.step_seconds))
    steps = int(train_seconds / seconds)
    return width, seconds, f"{floor}{why} width {width}, ~{steps} steps (per step {timed}, {device.name})"


def derive_plan(fingerprint: dict, device: DeviceFacts, budget_s: float) -> list[Choice]:
    """The training plan for ``fingerprint`` on ``device`` within ``budget_s`` seconds."""
    fp = fingerprint
    choices = data_choices(fp)
    patch, depth, batch = geometry(fp, device.kind)
    smallest = int(min(fp["height"]["min"], fp["width"]["min"]))
    choices += [
        Choice("data.patch_size", patch, f"smallest image side {smallest} px, capped at "
               f"{PATCH_CAP.get(device.kind, 256)} on {device.kind}, a multiple of 2**depth"),
        Choice("data.batch_size", batch, f"{batch} crops of {patch} px per step on {device.kind}"),
        Choice("model.depth", depth, f"{depth} poolings leave a {patch // 2**depth} px bottleneck (at least "
               f"{MIN_BOTTLENECK})"),
    ]  # fmt: skip
    choices += offset_choices(fp, [patch, patch])
    schedule = schedule_choices(fp, device, budget_s, batch, batch * patch * patch, min_width(fp))
    return choices + schedule + label_choices(fp)


def offset_choices(fp: dict, patch: list[int]) -> list[Choice]:
    """``data.affinity_offsets`` of a plan of the affinities target whose crop ``patch`` (one side per axis) is as
    short as a default offset's reach on some axis (stacks of three planes, an image three pixels high): the
    defaults that fit it, since the data module refuses an offset that no pair of a crop's pixels is as far apart
    as. Nothing where every default fits, or for another target."""
    if fp.get("labels") != "instances" or fp.get("target") != "affinities":
        return []
    defaults = default_offsets(len(patch))
    kept = [o for o in defaults if all(abs(step) < side for step, side in zip(o, patch))]
    if len(kept) == len(defaults) or not kept:  # none fits (a crop of one pixel): the data module says so
        return []
    dropped = ", ".join(str(list(o)) for o in defaults if o not in kept)
    axes = "z y x" if len(patch) == 3 else "y x"
    return [Choice("data.affinity_offsets", [list(o) for o in kept], (
        f"the default offsets but {dropped}, which reach as far as the crop {'x'.join(map(str, patch))} ({axes}) "
        "or beyond: no pair of a crop's pixels lies that far apart"))]  # fmt: skip


def data_choices(fp: dict) -> list[Choice]:
    """Channels, classes (or the instance target) and the normalisation, from the fingerprint."""
    choices = []
    channels = max(fp["channels"])
    mixed = len(fp["channels"]) > 1
    choices.append(Choice("data.in_channels", channels, f"{fp['channels']} channels found" + (
        f"; grey images are repeated to {channels} channels" if mixed else "")))  # fmt: skip
    present = [int(k) for k in fp["classes"]]
    if fp.get("labels") == "instances":
        choices.append(Choice("data.labels", "instances", "the masks hold object ids"))
        choices.append(Choice("data.target", fp["target"], fp.get("target_reason", "the data config's target")))
        choices.append(Choice("data.num_classes", fp["num_classes"], f"the target's classes {present}"))
        choices.append(Choice("monitor", "val/map", (
            "objects are scored: best.pt is the validation with the best mean average precision over IoU 0.5-0.95 "
            "(the 2018 Data Science Bowl's score, which rewards outlines as well as counts), and the post-processing "
            "is tuned for it; val/dice would score pixels (the boundary class too)")))  # fmt: skip
    else:
        choices.append(Choice("data.num_classes", fp["num_classes"], f"mask values {present} (0 = background)"))
    choices.append(Choice("data.normalize", *_normalize(fp)))
    return choices


def schedule_choices(
    fp: dict, device: DeviceFacts, budget_s: float, batch: int, step_pixels: int, narrowest: int | None = None
) -> list[Choice]:
    """Width, validation, budget and warm-up: the time-budgeted schedule, for images and volumes alike.

    ``step_pixels``: the pixels (voxels) of one training step, which scale an untimed validation guess;
    ``narrowest``: the narrowest width allowed (:func:`min_width`)."""
    train_guess = budget_s * (1 - VAL_SHARE)
    width, step_s, width_reason = choose_width(device, train_guess, narrowest)
    choices = [Choice("model.base_channels", width, width_reason)]
    timed = not math.isnan(step_s)
    if not timed:
        step_s = GUESSED_STEP_S
    # Which validation images, how often: validation_plan.py's rule, from a timed whole-image validation.
    plan = plan_validation(fp, device, width, step_s, budget_s, step_pixels)
    steps = plan.steps
    for key, value, reason in validation_choices(plan, batch, budget_s, None if timed else GUESSED_STEP_S):
        choices.append(Choice(key, value, reason))
    return [
        *choices,
        Choice("trainer.max_time", float(budget_s), f"the budget ({budget_s:g} s): the schedule anneals over it"),
        Choice("trainer.max_epochs", 1_000_000, "the time budget ends the run, not an epoch count"),
        Choice("sched.warmup_steps", min(200, steps // 50), f"about 2% of the ~{steps} steps (at most 200)"),
    ]


def label_choices(fp: dict) -> list[Choice]:
    """The loss and the foreground oversampling, from the classes' shares."""
    return [Choice(key, value, reason) for key, value, reason in [*loss_choice(fp), *oversampling(fp)]]


def loss_choice(fp: dict) -> list[tuple[str, Any, str]]:
    """Soft Dice + (binary) cross-entropy, unweighted.

    Rare classes need no class weights here: the Dice term is computed per class over the batch and
    averaged over the foreground classes, so a class of 2 % of the pixels weighs as much in it as one of
    30 %, and its gradient does not shrink with the class's size. Weighting the cross-entropy as well
    (inverse frequency) would push rare classes into false positives and lose the calibrated
    probabilities the CE term is there for; per-class crops (:func:`oversampling`) are what put the rare
    pixels into the batches at all.
    """
    loss = {"_target_": "unet_train.losses.BCEDiceLoss", "bce_weight": 1.0, "dice_weight": 1.0, "smooth": 1.0}
    if fp["num_classes"] == 2:
        return [("loss", loss, "soft Dice + BCE: overlap and calibrated pixels")]
    why = "soft Dice averaged over the classes (a small class weighs as much as a large one) + cross-entropy"
    return [("loss", loss, f"{why} (calibrated pixels), no class weights")]


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


def oversampling(fp: dict) -> list[tuple[str, Any, str]]:
    """``data.foreground_oversample`` and ``data.oversample_classes`` from the classes' pixel shares.

    Each foreground class is judged on its own (nnU-Net's rule): a class under ``SPARSE_FOREGROUND`` of
    the pixels is rare, even where the foreground as a whole is not (lungs 29 % hide a heart of 9 % and
    clavicles of 2 %). With a rare class, a third of the crops are centred on a pixel of a class drawn
    uniformly among those present in the image (``per_class``), so the 2 % class is the centre as often
    as the 29 % one; random crops would hold it in proportion to its pixels.
    """
    shares = {int(k): float(v) for k, v in fp["classes"].items() if int(k) > 0}
    in_images = {int(k): float(v) for k, v in fp.get("class_images", {}).items()}
    rare = [c for c in sorted(shares) if shares[c] < SPARSE_FOREGROUND]
    rule = "per_class"
    if len(shares) <= 1:  # binary: the one foreground class
        share = fp["foreground_share"]["mean"]
        if share < SPARSE_FOREGROUND:
            return [("data.foreground_oversample", FOREGROUND_OVERSAMPLE,
                     f"foreground is {_percent(share)} of the pixels: a third of the crops centred on it"),
                    ("data.oversample_classes", rule, "one foreground class: its pixels are the centres")]  # fmt: skip
        return [("data.foreground_oversample", 0.0, f"foreground is {share:.0%} of the pixels: random crops see it"),
                ("data.oversample_classes", rule, "one foreground class (not oversampled)")]  # fmt: skip

    def named(classes: list[int]) -> str:
        where = {c: f" (in {in_images[c]:.0%} of the images)" if in_images.get(c, 1.0) < 1 else "" for c in classes}
        return ", ".join(f"class {c} {_percent(shares[c])}{where[c]}" for c in classes)

    if rare:
        return [("data.foreground_oversample", FOREGROUND_OVERSAMPLE,
                 f"{named(rare)} of the pixels: a third of the crops centred on a class chosen uniformly among those "
                 "present"),
                ("data.oversample_classes", rule, "rare classes are centred as often as large ones (nnU-Net's rule), "
                 "not in proportion to their pixels")]  # fmt: skip
    return [("data.foreground_oversample", 0.0, f"every class is at least {SPARSE_FOREGROUND:.0%} of the pixels "
             f"({named(sorted(shares))}): random crops see them"),
            ("data.oversample_classes", rule, "no rare class (not oversampled)")]  # fmt: skip


def _normalize(fp: dict) -> tuple[dict, str]:
    """Per-image 1-99.8 percentile scaling, clipped to [0, 1], for every bit depth.

    Measured at short horizons (100 steps, one thread): on the DSB 2018 nuclei (8-bit, exposures that differ
    from image to image) dividing by 255 reached test Dice 0.678 where this reached 0.782; on generated 16-bit
    nuclei with hot pixels at 65535 (99.8th percentile ~1,500), the unclipped scaling put those pixels at ~40
    and a 120 s planned run stayed near Dice 0.1 while the clipped plain recipe reached 0.75.
    """
    kind = "float" if fp["bit_depth"] == "float" else f"{fp['bit_depth']}-bit"
    top = max(c["max"] for c in fp["intensity"])
    high = max(c["percentiles"]["99.8"] for c in fp["intensity"])
    scheme = {"scheme": "percentile", "low": 1.0, "high": 99.8, "per": "image", "min_value": None, "max_value": None,
              "clip": True}  # fmt: skip
    return scheme, (
        f"{kind} images (99.8th percentile {high:g}, max {top:g}): per-image 1-99.8 percentile scaling, clipped to "
        "[0, 1] (exposures differ per image; outliers such as hot pixels do not dominate the first layer)"
    )


def _value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)  # one line, never wrapped
    return text.strip().removesuffix("...").strip()


def plan_yaml(choices: list[Choice], header: list[str], unsupported: frozenset[str] = frozenset()) -> str:
    """The plan as a ``# @package _global_`` experiment YAML, one reason comment per choice.

    Keys in ``unsupported`` (data options this version's data config does not take) are written
    commented out, so the file loads now and the lead's later versions can switch them on.
    """
    lines = ["# @package _global_", *(f"# {line}" for line in header)]
    groups: dict[str, list[Choice]] = {}
    for choice in choices:
        groups.setdefault(choice.key.split(".")[0], []).append(choice)
    for group, members in groups.items():
        if len(members) == 1 and "." not in members[0].key:
            lines += [f"# {members[0].reason}", f"{group}: {_value(members[0].value)}"]
            continue
        lines.append(f"{group}:")
        for choice in members:
            name = choice.key.split(".", 1)[1]
            line = f"  {name}: {_value(choice.value)}"
            if choice.key in unsupported:
                line = f"  # {name}: {_value(choice.value)}  (not a key of this version's data config)"
            lines += [f"  # {choice.reason}", line]
    return "\n".join(lines) + "\n"
