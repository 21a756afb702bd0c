"""Training targets derived from instance labels (2D or 3D; 0 = background, each other id one object).

Each representation is a named option with its reason:

- ``boundary``: three classes, background / interior / boundary. The common nuclei recipe: a model that
  predicts the boundary of touching objects separates them, and the interiors are the seeds.
- ``distance``: foreground plus each pixel's distance to its object's boundary, scaled to [0, 1] per object.
  Regression of a smooth map: peaks are seeds even where the boundary between two objects is faint.
- ``affinities``: for each neighbour offset, 1 where a pixel and its neighbour belong to the same object.
  What connectomics tools predict for EM: objects are the components of the affinity graph, so thin,
  long or touching neurites stay apart without a boundary class of their own.

All are computed from the ids after augmentation (ids are resampled with nearest-neighbour interpolation,
so elastic deformation keeps them consistent). Thin objects survive: an object too thin to have an interior
keeps all of its pixels as interior (so it still has a seed), and every object keeps its maximum distance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def sequential_ids(labels: NDArray) -> NDArray[np.int64]:
    """``labels`` with 0 kept and every other id (negative or near 2**32 too) renumbered 1..N in order, so the
    per-object tables below are N long, not as long as the largest id."""
    labels = np.asarray(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    new = np.cumsum(ids != 0) * (ids != 0)
    return new[inverse.reshape(labels.shape)].astype(np.int64)


def offset_slices(offset: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The pixels that have a neighbour at ``offset`` inside ``shape`` and those neighbours (both empty when the
    offset is as long as the image)."""
    if len(offset) != len(shape):
        raise ValueError(f"offset {tuple(offset)} has {len(offset)} axes; the labels have {len(shape)}")
    here = tuple(slice(max(0, -o), max(0, n - max(0, o))) for o, n in zip(offset, shape, strict=True))
    there = tuple(slice(max(0, o), max(0, n - max(0, -o))) for o, n in zip(offset, shape, strict=True))
    return here, there


def neighbour_differs(labels: NDArray, objects_only: bool = False) -> NDArray[np.bool_]:
    """Pixels with a face neighbour (4-/6-connected) of another id (``objects_only``: another non-zero id);
    the image border is not a neighbour."""
    differs = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        step = la != lb
        if objects_only:
            step &= (la > 0) & (lb > 0)
        differs[tuple(a)] |= step
        differs[tuple(b)] |= step
    return differs


def boundary_target(labels: NDArray) -> NDArray[np.uint8]:
    """Background 0, interior 1, boundary 2: an object's pixels next to another id (or background) are
    boundary. An object left without one connected interior (thinner than three pixels, or with parts that
    thin, as a ring two pixels wide: its interior would be seeds of several objects) keeps as interior those
    of its pixels that touch no other object, or all of them if every one does, so it has a seed."""
    labels = sequential_ids(labels)
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    target[neighbour_differs(labels) & (labels > 0)] = BOUNDARY
    ids = np.unique(labels[labels > 0])
    if len(ids):
        n = int(ids.max()) + 1
        interior = target == INTERIOR
        # the face-connected pieces of each object's interior (the seeds the post-processing would grow)
        pieces = ndi.label(interior, structure=ndi.generate_binary_structure(labels.ndim, 1))[0]
        pairs = np.unique(labels[interior] * (int(pieces.max()) + 1) + pieces[interior])  # (object, piece) codes
        has_interior = np.bincount(pairs // (int(pieces.max()) + 1), minlength=n) == 1  # exactly one piece
        thin = ~has_interior[labels] & (labels > 0)
        free = thin & ~neighbour_differs(labels, objects_only=True)
        target[free] = INTERIOR
        has_interior[np.unique(labels[free])] = True
        target[~has_interior[labels] & (labels > 0)] = INTERIOR
    return target


def distance_target(labels: NDArray, spacing: tuple[float, ...] | None = None) -> NDArray[np.float32]:
    """Each object pixel's distance to the nearest pixel outside its object, divided by the object's largest
    distance (so every object peaks at 1); 0 on background and on the pixels where two objects touch (so a
    watershed separates them there), except for an object that has no other pixel. ``spacing`` makes the
    distance physical (anisotropic volumes)."""
    labels = sequential_ids(labels)
    if spacing is not None and (len(spacing) != labels.ndim or min(spacing) <= 0):
        raise ValueError(f"spacing {tuple(spacing)} needs {labels.ndim} positive sizes, one per axis of the labels")
    out = np.zeros(labels.shape, dtype=np.float32)
    objects = labels > 0
    if not objects.any():
        return out
    inside = objects & ~neighbour_differs(labels)
    distance = ndi.distance_transform_edt(inside, sampling=spacing) + objects  # edge pixels: one step
    touching = neighbour_differs(labels, objects_only=True) & objects
    index = np.arange(int(labels.max()) + 1)
    # an object whose every pixel touches another (a pixel or a line between two objects) keeps its values
    untouched = np.asarray(ndi.maximum(~touching & objects, labels, index=index), dtype=bool)
    distance[touching & untouched[labels]] = 0
    peak = np.asarray(ndi.maximum(distance, labels, index=index), dtype=np.float64)
    out[objects] = (distance / np.maximum(peak[labels], 1e-6))[objects]
    return out


def affinity_target(
    labels: NDArray, offsets: list[tuple[int, ...]], ignored: NDArray | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """``(len(offsets), *shape)`` affinities (1 = the pixel and the pixel at ``offset`` from it carry the same
    non-zero id) and a mask of the pairs that count: the neighbour is inside the image and neither pixel is
    ``ignored`` (unlabelled)."""
    labels = np.asarray(labels)
    affs = np.zeros((len(offsets), *labels.shape), dtype=np.uint8)
    valid = np.zeros((len(offsets), *labels.shape), dtype=bool)
    for k, offset in enumerate(offsets):
        here, there = offset_slices(offset, labels.shape)
        same = (labels[here] == labels[there]) & (labels[here] != 0)
        affs[k][here] = same
        valid[k][here] = True if ignored is None else ~(ignored[here] | ignored[there])
    return affs, valid


def nearest_offsets(ndim: int) -> list[tuple[int, ...]]:
    """The face neighbours towards lower indices: ``[(-1, 0), (0, -1)]`` in 2D, three offsets in 3D."""
    return [tuple(-1 if i == axis else 0 for i in range(ndim)) for axis in range(ndim)]
