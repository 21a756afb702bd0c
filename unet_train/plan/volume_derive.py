"""Plans for volumes: 2D, 2.5D or 3D, the crop and the pooling per axis, from the voxel spacing.

The rules (each plan's comments quote them with its own figures), nnU-Net's ideas restated:

* **Pooling per axis** (:func:`~unet_train.models.anisotropy.pool_factors_for_spacing`): at each level an axis
  is pooled only while its current voxel side is within ``2x`` of the finest current side, and only while
  the crop keeps at least ``MIN_BOTTLENECK`` voxels along it after the pooling. A thick axis waits until
  pooling the fine ones has made the voxels comparable; the net is as deep as some axis can still be pooled
  (at most ``MAX_DEPTH``), so the bottleneck keeps ``MIN_BOTTLENECK``+ voxels of context on every axis.
* **The crop**: the median training volume (per axis), shrunk one axis at a time (the one spanning the most
  physical length) until it holds at most ``CROP_VOXELS`` voxels for the device, so it covers about as many
  micrometres (millimetres) on every axis; then cut to the pooling grid (a multiple of each axis's total
  pooling). Small volumes give small crops and more of them per step (``batch``), up to ``MAX_BATCH``. A volume
  smaller than the crop on some axis is padded to it in training, the padding's labels ignored
  (:mod:`unet_train.data.volume_case`), so one small volume does not shrink every other volume's crops.
* **2D / 2.5D or 3D**: above an anisotropy of ``ANISOTROPY_2D`` (coarsest over finest median voxel side, the
  coarse axis being z) with fewer than ``FEW_PLANES`` planes per volume, a 3D net sees z only through a
  few unpooled planes and learns from fewer distinct crops than a 2D net has planes: a 2D net on the sections
  is planned (:func:`derive_section_plan`), seeing ``CONTEXT`` neighbouring section on each side as channels
  (2.5D), or none (plain 2D) where the smallest volume has fewer than ``2 * CONTEXT + 1`` planes or the
  anisotropy is above ``EXTREME_ANISOTROPY`` (a neighbour that far away shows other structures). Otherwise 3D
  on a GPU, and 2D (2.5D) on a CPU for every volume: in a CPU's time budget a 3D net's steps see too few voxels.
  Measured at 600 s on one CPU thread (docs/performance.md, the `mni` and `abct` cells): on an isotropic MR
  template the 3D plan's test Dice ranged 0.83-0.96 over eleven runs where 2.5D scored 0.944-0.958 and 2D
  0.953-0.963; on an isotropic abdominal CT (9 classes) the 3D plan scored 0.24-0.26 (Dice over the classes
  present in either volume) where 2.5D scored 0.41-0.46 and 2D 0.46-0.47.
  A data config that states the dimensions is planned as it asks (:func:`choose_dims`): ``data.spatial_dims=3``
  (``data=isbi data.spatial_dims=3`` too) in 3D, ``data.spatial_dims=2`` or ``data.context_slices=k`` in 2D
  with that ``k``.
* **2D and 2.5D geometry**: the image planner's (:mod:`unet_train.plan.derive`) on the sections seen as images
  (:func:`section_fingerprint`): the crop ``[y, x]``, depth and batch from the in-plane shapes, the width from
  2D steps timed with ``(2k + 1) * C`` input channels, validation of whole sections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unet_train.models.anisotropy import pool_factors_for_spacing
from unet_train.plan.derive import (
    Choice,
    DeviceFacts,
    data_choices,
    derive_plan,
    label_choices,
    offset_choices,
    schedule_choices,
)

ANISOTROPY_2D = 3.0  # coarsest / finest voxel side above which 2D (2.5D) is preferred ...
FEW_PLANES = 64  # ... when the volumes hold fewer planes than this (median)
CONTEXT = 1  # a 2.5D plan's sections on each side of the centre one: 3 sections, only the first layer is wider
EXTREME_ANISOTROPY = 20.0  # above this a neighbouring section is as far away as 20+ pixels: plain 2D (no context)
MIN_BOTTLENECK = 4  # voxels of context the deepest level keeps per axis
MAX_DEPTH = 5
# One crop: 16x64x64 (or 40^3) on a CPU, 128^3 on a GPU. A 3x3x3 convolution costs 3x a 3x3 one per voxel, so a
# CPU step of 2 such crops costs about what a 2D step of 4 crops of 256 px does (the 2D plan's).
CROP_VOXELS = {"cpu": 2**16, "cuda": 2**21}
BATCH = 2  # crops per step at the full crop size (nnU-Net's 3D batch)
MAX_BATCH = 16  # small volumes: more, smaller crops per step, as many voxels per step


@dataclass(frozen=True)
class VolumeLayout:
    """The 3D geometry of a plan: crop ``patch`` (z, y, x), ``pool_factors`` per level and axis, ``batch``."""

    patch: tuple[int, int, int]
    pool_factors: list[list[int]]
    batch: int
    not_pooled: list[str]

    @property
    def depth(self) -> int:
        return len(self.pool_factors)

    @property
    def bottleneck(self) -> list[int]:
        return [side // math.prod(level[a] for level in self.pool_factors) for a, side in enumerate(self.patch)]


def preferred_dims(fp: dict, kind: str = "cuda") -> tuple[int, str]:
    """2 (2D, or 2.5D) or 3 by the anisotropy and the planes per volume, and on a CPU (``kind``) 2, with the
    reason (see the module)."""
    spacing, planes = fp["spacing"]["median"], int(fp["shape"]["median"][0])
    ratio, thick_z = float(fp["anisotropy"]), spacing[0] == max(spacing)
    figures = f"anisotropy {ratio:.1f} (voxel {_sides(spacing)}, z y x), {planes} planes per volume (median)"
    if ratio > ANISOTROPY_2D and thick_z and planes < FEW_PLANES:
        return 2, (f"{figures}: above {ANISOTROPY_2D:g} with under {FEW_PLANES} planes, 2D (2.5D: neighbouring "
                   "planes as channels) is preferred")  # fmt: skip
    if kind == "cpu":
        return 2, (f"{figures}: on a CPU 2D (2.5D: neighbouring planes as channels) is preferred, as a 3D net's "
                   "steps see too few voxels in a CPU's time (data.spatial_dims=3 plans 3D)")  # fmt: skip
    if ratio > ANISOTROPY_2D and thick_z:
        return 3, f"{figures}: {FEW_PLANES}+ planes give a 3D net context along z once the planes are pooled"
    return 3, f"{figures}: voxels within {ANISOTROPY_2D:g}x of each other, 3D"


@dataclass(frozen=True)
class Dims:
    """The dimensions of a volume plan: 3 (a 3D UNet) or 2 (a 2D UNet on the sections, ``context`` neighbouring
    sections on each side as channels), with the reasons the plan's comments quote."""

    dims: int
    context: int
    reason: str
    context_reason: str = ""


def choose_dims(fp: dict, spatial_dims: int | None = None, context_slices: int = 0, kind: str = "cuda") -> Dims:
    """What the data config asks for (``data.spatial_dims``, ``data.context_slices``), else the rule
    (:func:`preferred_dims` for a ``kind`` of device, :func:`context_for`)."""
    rule, why = preferred_dims(fp, kind)
    if fp.get("labels") == "instances" and spatial_dims != 2 and not context_slices:
        objects = "; object ids train 3D models only" if rule == 2 else ""  # their objects are linked along z
        return Dims(3, 0, why + objects)
    if spatial_dims == 3:
        asked = "; data.spatial_dims=3 asks for 3D (data.spatial_dims=2 plans 2D)" if rule == 2 else ""
        return Dims(3, 0, why + asked)
    if spatial_dims == 2 or context_slices:
        asked = f"data.context_slices={context_slices}" if context_slices else "data.spatial_dims=2"
        return Dims(2, context_slices, f"{why}; {asked} asks for a 2D net on the sections", f"{asked} as asked")
    if rule == 3:
        return Dims(3, 0, why)
    context, context_reason = context_for(fp)
    return Dims(2, context, why, context_reason)


def context_for(fp: dict) -> tuple[int, str]:
    """``data.context_slices`` of a plan the rule made 2D: ``CONTEXT`` unless planes are few or far apart."""
    planes, ratio = int(fp["shape"]["min"][0]), float(fp["anisotropy"])
    if planes < 2 * CONTEXT + 1:
        return 0, (f"the smallest volume has {planes} plane(s): the neighbours would be mirrored copies of the "
                   "centre; plain 2D")  # fmt: skip
    if ratio > EXTREME_ANISOTROPY:
        return 0, (f"neighbouring sections lie {ratio:.0f} pixels apart (over {EXTREME_ANISOTROPY:g}): a neighbour "
                   "shows other structures; plain 2D")  # fmt: skip
    return CONTEXT, (f"{CONTEXT} section on each side: at an anisotropy of {ratio:.1f} (at most "
                     f"{EXTREME_ANISOTROPY:g}) a neighbour still shows the centre's structures, and the "
                     f"{2 * CONTEXT + 1} sections widen only the first convolution's input")  # fmt: skip


def section_fingerprint(fp: dict) -> dict:
    """The volume fingerprint seen as 2D images, one per section (training and validation), for the image planner;
    ``height``/``width`` are already the in-plane sides, and ``val_pixels`` the sections' pixels."""
    return {**fp, "num_images": fp["num_planes"], "num_val_images": fp["num_val_planes"]}


def section_size(fp: dict) -> tuple[int, int]:
    """The median validation section ``(y, x)`` (else the training one), validated whole."""
    median = fp.get("val_shape") or fp["shape"]["median"]
    return int(median[1]), int(median[2])


def derive_section_plan(fp: dict, device: DeviceFacts, budget_s: float, dims: Dims) -> list[Choice]:
    """The 2D (2.5D) plan of a volume fingerprint: the image plan of its sections (:func:`section_fingerprint`;
    ``device``'s steps timed with ``(2k + 1) * C`` channels) and the dimensions' keys."""
    sections = 2 * dims.context + 1
    channels = max(fp["channels"])
    planes = f"{fp['num_planes']} training and {fp['num_val_planes']} validation sections"
    return [
        Choice("data.spatial_dims", 2, dims.reason),
        Choice("data.context_slices", dims.context, f"{dims.context_reason}: {sections} section(s) of {channels} "
               f"channel(s), a {sections * channels}-channel input (what the plan times)"),
        Choice("model.spatial_dims", 2, f"a 2D UNet on the {planes}"),
        *derive_plan(section_fingerprint(fp), device, budget_s),
    ]  # fmt: skip


def volume_layout(fp: dict, kind: str) -> VolumeLayout:
    """The crop, the pooling per axis and the batch for the fingerprint's volumes on a ``kind`` device."""
    spacing, median = fp["spacing"]["median"], [int(s) for s in fp["shape"]["median"]]
    cap = CROP_VOXELS.get(kind, CROP_VOXELS["cpu"])
    patch = list(median)
    while math.prod(patch) > cap:  # shrink the axis spanning the most physical length, ~10 % at a time
        axis = max((a for a in range(3) if patch[a] > MIN_BOTTLENECK), key=lambda a: patch[a] * spacing[a])
        patch[axis] = max(MIN_BOTTLENECK, min(patch[axis] - 1, int(patch[axis] * 0.9)))
    factors = pool_factors_for_spacing(spacing, patch, MAX_DEPTH, min_size=MIN_BOTTLENECK)[0]
    # The net is as deep as some axis still pools (a level that pools nothing adds cost, not context); a volume
    # too small to pool at all gets one level that keeps every side.
    depth = max(1, sum(level != [1, 1, 1] for level in factors))
    factors, reasons = pool_factors_for_spacing(spacing, patch, depth, min_size=MIN_BOTTLENECK)
    totals = [math.prod(level[a] for level in factors) for a in range(3)]
    grid = tuple(max(t, side // t * t) for side, t in zip(patch, totals))
    batch = int(min(MAX_BATCH, BATCH * max(1, cap // math.prod(grid))))
    return VolumeLayout((grid[0], grid[1], grid[2]), factors, batch, reasons)


def validation_block(fp: dict, layout: VolumeLayout) -> tuple[int, int, int]:
    """The block whose validation is timed: the median validation volume (else training volume), at most twice
    the crop per axis (a forward's cost is about linear in the voxels, so the plan scales the time to the whole
    volumes; a large volume is not forwarded whole while planning)."""
    median = fp.get("val_shape") or fp["shape"]["median"]
    block = [min(int(m), 2 * p) for m, p in zip(median, layout.patch)]
    return (block[0], block[1], block[2])


def derive_volume_plan(
    fp: dict, device: DeviceFacts, budget_s: float, layout: VolumeLayout, dims_key: bool = False
) -> list[Choice]:
    """The 3D training plan for a volume fingerprint; ``dims_key``: ``data.spatial_dims=3`` was asked for (written)."""
    why = choose_dims(fp, 3 if dims_key else None, kind=device.kind).reason
    choices = data_choices(fp)
    if dims_key:
        choices.append(Choice("data.spatial_dims", 3, why))
    voxels = math.prod(layout.patch)
    choices += [
        Choice("data.patch_size", list(layout.patch), _crop_reason(fp, layout, device.kind)),
        Choice("data.batch_size", layout.batch, f"{layout.batch} crops of {voxels} voxels per step on {device.kind}"),
        Choice("model.spatial_dims", 3, why if not dims_key else "volumes: a 3D UNet"),
        Choice("model.depth", layout.depth, f"{layout.depth} poolings leave a {_sides(layout.bottleneck)} voxel "
               f"bottleneck (z y x; at least {MIN_BOTTLENECK} on every axis the crop allows)"),
        Choice("model.pool_factors", layout.pool_factors, _pooling_reason(fp, layout)),
        *offset_choices(fp, list(layout.patch)),
    ]  # fmt: skip
    return choices + schedule_choices(fp, device, budget_s, layout.batch, layout.batch * voxels) + label_choices(fp)


def _crop_reason(fp: dict, layout: VolumeLayout, kind: str) -> str:
    median, smallest = _sides(fp["shape"]["median"]), [int(s) for s in fp["shape"]["min"]]
    reason = (f"z y x: the median volume ({median}) shrunk along its longest physical side to at most "
              f"{CROP_VOXELS.get(kind, CROP_VOXELS['cpu'])} voxels on {kind}, on the pooling grid")  # fmt: skip
    if any(n < p for n, p in zip(smallest, layout.patch)):
        reason += (f"; volumes smaller than it (the smallest {_sides(smallest)}) are padded to it in training, "
                   "the padding's labels ignored")  # fmt: skip
    return reason


def _sides(values: list) -> str:
    return "x".join(f"{v:g}" for v in values)


def _pooling_reason(fp: dict, layout: VolumeLayout) -> str:
    spacing = fp["spacing"]["median"]
    rule = f"an axis is pooled while its voxel side is within 2x of the finest (voxel {_sides(spacing)}, z y x)"
    if not layout.not_pooled:
        return rule + f" and the crop keeps {MIN_BOTTLENECK}+ voxels: every axis at every level"
    return rule + f" and the crop keeps {MIN_BOTTLENECK}+ voxels; not pooled: " + "; ".join(layout.not_pooled)
