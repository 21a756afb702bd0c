"""The plan's choice of an instance target, from cheap statistics of the training split's object ids.

Measured per training image (one pass over the pixels each: a ``bincount`` and a comparison with each face
neighbour): the objects' areas, the share of objects that touch another object (a face neighbour of another
id, with no background between them), and the share of labelled pixels inside objects (density). The rule,
first match wins:

1. **dense, space-filling labels** (objects cover at least :data:`DENSE_SHARE` of the pixels, as EM neurons
   do): ``affinities``. Objects are the components of the affinity graph: the cuts between neighbouring
   objects are pairs of pixels, with no boundary class one or two pixels thin to learn.
2. **small objects** (median equivalent diameter under :data:`SMALL_DIAMETER` px): ``boundary``. Such an
   object has no room for a distance peak of its own; the boundary target keeps a thin object's pixels as
   interior, so each still has a seed.
3. **touching, large enough objects** (at least :data:`TOUCHING_SHARE` of the objects touch another):
   ``distance``. A long seam between two objects is a thin, uncertain boundary line; the distance peaks stay
   apart however the seam is predicted.
4. **sparse objects** (objects cover less than :data:`SPARSE_SHARE` of the pixels, most of them apart):
   ``affinities``. The foreground is learnt as a semantic model learns it (one sigmoid, the class loss), so the
   objects apart from the others are the components of a mask as good as a semantic model's, and the
   face-neighbour affinities cut the few that touch. A boundary class would take every object's rim from the
   foreground, a thin class that is learnt slowly and makes the matched objects fit less well.
5. otherwise ``boundary``: objects filling most of the image, apart across thin background (cells between
   membranes): the predicted inner boundary widens the thin gaps that separate them.

Measured on DSB 2018 (28 % touching, 12 % of the pixels in objects), 600 s on one thread beside two other
runs on 2 cores, 112 test images (``scripts/bench_objects.py``): ``boundary`` F1@0.5 0.731, mAP 0.433 and
``affinities`` 0.765, 0.489, where the semantic model with connected components reached 0.741, 0.442 and
0.751, 0.466 in the same runs. At 240 s ``distance`` reached 0.331 and 0.078 against ``boundary``'s 0.730
and 0.396 (its distance map is not learnt in two epochs). On ISBI 2012's cells (78 % of the pixels)
``boundary`` reached 0.862, 0.490 against the semantic model's 0.795, 0.434. :data:`SPARSE_SHARE` lies
between the two sets; it is a judgement, not a measured threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from unet_train.labels import IGNORE_INDEX
from unet_train.objects.targets import neighbour_differs, sequential_ids
from unet_train.plan.fingerprint import compute_fingerprint, training_split

DENSE_SHARE = 0.85  # objects cover this share of the labelled pixels or more: space-filling (EM)
SMALL_DIAMETER = 10.0  # px: objects with a smaller median equivalent diameter need no distance map
TOUCHING_SHARE = 0.3  # this share of the objects touching another: touching often
SPARSE_SHARE = 0.5  # objects cover less than this share of the labelled pixels: sparse objects on background

log = logging.getLogger(__name__)


def object_fingerprint(id_masks: Sequence[NDArray]) -> dict[str, float | int]:
    """Statistics of the objects of ``id_masks`` (ids per image or volume, 0 background, 255 unlabelled as
    encoded); the median diameter is a disc's of the median area, or in volumes a ball's of the median volume (in
    voxels)."""
    areas: list[NDArray] = []
    touching = objects = 0
    covered = labelled = 0
    for mask in id_masks:
        raw = np.rint(np.asarray(mask, dtype=np.float64)).astype(np.int64)
        valid = raw != IGNORE_INDEX
        ids = np.where(valid, raw, 0)
        if ids.max(initial=0) > ids.size:  # sparse ids: renumbered so that the counts below stay short
            ids = sequential_ids(ids)
        top = int(ids.max(initial=0))
        covered += int((ids > 0).sum())
        labelled += int(valid.sum())
        if not top:
            continue
        sizes = np.bincount(ids.ravel(), minlength=top + 1)[1:]
        present = sizes > 0  # ids the encoding skipped (255) hold no pixel
        areas.append(sizes[present])
        touches = neighbour_differs(ids, objects_only=True)
        touching += int(np.count_nonzero(np.bincount(ids[touches], minlength=top + 1)[1:][present]))
        objects += int(present.sum())
    median = float(np.median(np.concatenate(areas))) if areas else 0.0
    volumes = bool(id_masks) and np.ndim(id_masks[0]) == 3
    diameter = (6.0 * median / math.pi) ** (1 / 3) if volumes else 2.0 * math.sqrt(median / math.pi)
    return {
        "objects": objects,
        "objects_per_image": objects / max(len(id_masks), 1),
        "median_area": median,
        "median_diameter": diameter,
        "touching_share": touching / max(objects, 1),
        "object_share": covered / max(labelled, 1),
    }


def choose_target(stats: dict[str, float | int], unit: str = "px") -> tuple[str, str]:
    """The target for objects of ``stats`` (:func:`object_fingerprint`) and the reason, by the rule above;
    ``unit`` names the diameters' unit in the reason (``voxels`` for volumes)."""
    pixels = "voxels" if unit == "voxels" else "pixels"
    measured = (
        f"{stats['objects']} objects, median diameter {stats['median_diameter']:.1f} {unit}, "
        f"{100 * stats['touching_share']:.0f} % touching another, {100 * stats['object_share']:.0f} % of the "
        f"{pixels} in objects"
    )
    if not stats["objects"]:
        why = (
            "no object in the training labels (every id is 0 or unlabelled): nothing to choose a target from; "
            "background / interior / boundary, the default. Check data.masks_dir and data.labels"
        )
        log.warning("The plan's target: %s.", why)
        return "boundary", why
    if stats["object_share"] >= DENSE_SHARE:
        return "affinities", (
            f"{measured}: dense, space-filling labels (>= {100 * DENSE_SHARE:.0f} %): foreground + affinities to "
            "the neighbours, whose components cut objects apart along pairs of pixels, not along a thin boundary class"
        )
    if stats["median_diameter"] < SMALL_DIAMETER:
        return "boundary", (
            f"{measured}: objects under {SMALL_DIAMETER:g} {unit} have no room for a distance peak; background / "
            "interior / boundary, which keeps a thin object's pixels as its seed"
        )
    if stats["touching_share"] >= TOUCHING_SHARE:
        return "distance", (
            f"{measured}: touching often (>= {100 * TOUCHING_SHARE:.0f} %) and large enough: foreground + distance "
            "to the boundary, whose peaks seed each object however thin the seam between two is predicted"
        )
    if stats["object_share"] < SPARSE_SHARE:
        return "affinities", (
            f"{measured}: sparse objects (< {100 * SPARSE_SHARE:.0f} % of the {pixels}), mostly apart: foreground "
            "(learnt as a semantic mask) + affinities to the neighbours, which cut the few that touch"
        )
    return "boundary", (
        f"{measured}: objects mostly apart across thin background: background / interior / boundary, whose "
        "predicted boundary widens the gaps between them"
    )


def planned_target(objects: dict[str, float | int], asked: str | None, unit: str = "px") -> tuple[str, str]:
    """The rule's target for ``objects`` and its reason, or ``asked`` (a ``data.target`` typed on the command line),
    whose reason then names the rule's choice."""
    target, why = choose_target(objects, unit)
    if asked is None or asked == target:
        return target, why
    return asked, f"data.target={asked} as typed on the command line (the rule chose {target}: {why})"


def image_fingerprint(data: Any, asked: str | None = None) -> dict:
    """The fingerprint of an image dataset's training split; of instance labels, with the target the rule above
    plans (``target``, ``target_reason``; ``asked``: a typed ``data.target`` instead), the statistics
    (``objects``) and the classes that target learns."""
    ids: list[NDArray] = []
    split = training_split(data, ids=ids)
    if data.instance_target is None:
        return compute_fingerprint(*split)
    objects = object_fingerprint(ids)
    target, why = planned_target(objects, asked)
    if target != data.instance_target:  # the classes fingerprinted are those the planned target learns
        split = training_split(data, target=target)
    return {**compute_fingerprint(*split), "labels": "instances", "target": target, "target_reason": why,
            "objects": objects}  # fmt: skip
