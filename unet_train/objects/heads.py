"""What a model's output channels are, per training target: class logits first, then independent maps.

A model of classes (and the ``boundary`` target) outputs class logits only: one channel (sigmoid) for a binary
problem, K (softmax) for K classes. The ``distance`` target adds, after its one foreground logit, a channel whose
sigmoid regresses each pixel's normalised distance to its object's boundary. The ``affinities`` target adds,
after its one foreground logit, one sigmoid channel per offset of ``data.affinity_offsets`` (the foreground
channel is what the pixel metrics score and what the post-processing joins; the affinities say which joined
neighbours are one object). Every consumer of logits (losses, pixel metrics, probabilities, tiling, test-time
augmentation) takes ``classes``, the number of leading class channels (None: all of them), from
:func:`class_channels`, so the extra channels are never read as classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unet_train.errors import ConfigError

# The named maps a target adds after its class logits (each one sigmoid channel); affinities: one per offset.
EXTRA_MAPS: dict[str, tuple[str, ...]] = {"boundary": (), "distance": ("distance",), "affinities": ()}
# The short-range offsets first (what the post-processing joins), then longer ones (context for the model).
DEFAULT_OFFSETS = ((-1, 0), (0, -1), (-3, 0), (0, -3))
# Volumes: the face neighbours along z, y and x, then three voxels along each (data=volumes' default).
DEFAULT_OFFSETS_3D = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -3, 0), (0, 0, -3))


def default_offsets(dims: int = 2) -> tuple[tuple[int, ...], ...]:
    """The offsets of an absent ``data.affinity_offsets``: :data:`DEFAULT_OFFSETS_3D` for volumes (``dims=3``)."""
    return DEFAULT_OFFSETS_3D if dims == 3 else DEFAULT_OFFSETS


def _listed(offsets: Sequence[Sequence[int]]) -> str:
    return str([list(o) for o in offsets])


def affinity_offsets(data: Mapping[str, Any] | None, dims: int = 2) -> list[tuple[int, ...]]:
    """``data.affinity_offsets`` as tuples of whole numbers (one per axis, as many for each offset, not all zero,
    none twice; absent: :data:`DEFAULT_OFFSETS`, or :data:`DEFAULT_OFFSETS_3D` for ``dims=3``); ConfigError in one
    line otherwise (an empty list too)."""
    raw, defaults = (data or {}).get("affinity_offsets"), default_offsets(dims)
    if raw is None:
        raw = defaults
    elif isinstance(raw, str) or not hasattr(raw, "__len__") or not len(raw):  # [] did fall back to the defaults
        raise ConfigError(
            f"data.affinity_offsets={raw!r} lists no offset; give at least one, e.g. {_listed(defaults[:dims])}, or "
            f"leave it out for the default {_listed(defaults)}."
        )
    out: list[tuple[int, ...]] = []
    for offset in raw:
        values = list(offset) if not isinstance(offset, str | int | float) else [offset]
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if not whole or not any(values) or len(values) not in (2, 3) or (out and len(values) != len(out[0])):
            raise ConfigError(
                f"data.affinity_offsets holds {offset!r}; each offset is a list of 2 (or 3, volumes) whole numbers, "
                f"not all 0, as long as the others, e.g. {_listed(defaults)}."
            )
        out.append(tuple(int(v) for v in values))
    if len(set(out)) != len(out):
        raise ConfigError(f"data.affinity_offsets lists an offset twice ({[list(o) for o in out]}); give each once.")
    return out


def extra_channels(target: str | None, data: Mapping[str, Any] | None = None) -> int:
    """How many channels ``target`` adds after the class logits (0 for a model of classes)."""
    if target == "affinities":
        return len(affinity_offsets(data))
    return len(EXTRA_MAPS.get(target or "", ()))


def map_names(data: Mapping[str, Any]) -> list[str]:
    """Names of the channels a target adds after the class logits: ``distance``, or ``affinity_-1_0`` per offset."""
    target = str(data.get("target", "boundary"))
    if target == "affinities":
        return ["affinity_" + "_".join(map(str, offset)) for offset in affinity_offsets(data)]
    return list(EXTRA_MAPS.get(target, ()))


def class_channels(data: Mapping[str, Any]) -> int | None:
    """The number of leading class channels of the model of the run's ``data`` config, or None when every channel
    is a class logit (the models of classes and of the ``boundary`` target)."""
    target = str(data.get("target", "boundary")) if data.get("labels") == "instances" else None
    if not extra_channels(target, data):
        return None
    classes = int(data["num_classes"])
    return 1 if classes <= 2 else classes


def check_tta(data: Mapping[str, Any], tta: bool) -> None:
    """Refuse test-time augmentation of an affinities model in one line: a flip or rotation turns each offset into
    another, so averaging the maps back would mix the affinities of different neighbours."""
    if tta and data.get("labels") == "instances" and str(data.get("target", "boundary")) == "affinities":
        raise ConfigError(
            "tta=true does not fit a model of data.target=affinities (flips and rotations change the offsets' "
            "directions); run with tta=false."
        )


def check_offset_axes(offsets: list[tuple[int, ...]], dims: int) -> None:
    """Refuse in one line offsets of another number of axes than the images' ``dims`` (a volume's three on 2D
    images ended in a traceback from the first batch)."""
    for offset in offsets:
        if len(offset) != dims:
            raise ConfigError(
                f"data.affinity_offsets holds {list(offset)}, an offset of {len(offset)} axes, but the images are "
                f"{dims}D: give {dims} numbers per offset, e.g. {_listed(default_offsets(dims))}."
            )


def check_offsets_fit(offsets: list[tuple[int, ...]], patch_size: int | Sequence[int]) -> None:
    """Refuse in one line an offset as long as the training crop or longer (``patch_size``: one side, or one per
    axis of a volume's crop): no pair of a crop's pixels is that far apart, so its channel would learn nothing."""
    for offset in offsets:
        sides = [patch_size] * len(offset) if isinstance(patch_size, int) else list(patch_size)
        for reach, side in zip(map(abs, offset), sides):
            if reach >= side:
                shown = patch_size if isinstance(patch_size, int) else list(patch_size)
                raise ConfigError(
                    f"data.affinity_offsets holds {list(offset)}, which reaches {reach} px along an axis, as far as or "
                    f"beyond the training crop data.patch_size={shown}: no pair of a crop's pixels is that far apart, "
                    f"so its channel would learn nothing; keep offsets under {side} px or raise data.patch_size."
                )
