"""Instance labels from probabilities: membranes split by a watershed, or objects by components / distance.

Methods (``instance_method``):

- ``membrane``: the probability is that of a border (EM membranes). Cells are the pixels with
  ``p <= threshold``; their 4-connected components seed a watershed over the distance to them, which
  grows the cells into the borders and leaves 1-pixel lines (label 0) where they meet: the thinning
  of :func:`unet_train.metrics.isbi.thinned_segments`, with the lines as background.
- ``components``: objects (nuclei, ...) are the 4-connected components of the foreground mask.
- ``distance``: touching objects split by a watershed of the foreground's distance transform, seeded
  at its local maxima at least ``min_distance`` pixels apart.

:func:`label_chunks` labels a chunked store: each chunk is labelled with a halo of context, and
segments that touch across a chunk border are joined (see its docstring).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.segmentation import watershed

from unet_train.data.foreground import boundary_positive
from unet_train.errors import ConfigError
from unet_train.inference.zarr_output import stored_probabilities
from unet_train.objects import params as pp
from unet_train.objects.params import instance_target

log = logging.getLogger(__name__)

METHODS = ("membrane", "components", "distance")


def resolve_method(method: str, stored_data: Any) -> str:
    """``auto``: ``membrane`` for a model of borders (ISBI with ``foreground: membrane``, the synthetic
    membranes, a folder with ``data.foreground=membrane``), else ``components``: as unet-eval decides.
    A model trained on instance labels has one method, its target's (``boundary``), with its tuned parameters."""
    target = instance_target(stored_data)
    if target is not None:
        if method not in ("auto", target):
            raise ConfigError(
                f"instance_method={method} does not fit this model, trained on instance labels with "
                f"data.target={target}; use instance_method=auto (its post-processing, tuned in training)."
            )
        return target
    if method == "auto":
        return "membrane" if boundary_positive(stored_data) else "components"
    if method not in METHODS:
        raise ConfigError(f"instance_method={method!r} is not known; choose auto, {', '.join(METHODS)}.")
    return method


def foreground(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``(K, H, W)`` probabilities -> boolean foreground: ``p > threshold`` (binary) or argmax != 0."""
    return prob[0] > threshold if prob.shape[0] == 1 else prob.argmax(0) != 0


def instance_labels(
    prob: np.ndarray,
    method: str,
    threshold: float = 0.5,
    min_distance: int = 5,
    params: dict[str, Any] | None = None,
    offsets: list[tuple[int, ...]] | None = None,
) -> np.ndarray:
    """uint32 ``(H, W)`` instance labels (0 = background or border) of probabilities ``(K, H, W)``.

    With ``params`` (an instance model's post-processing, :mod:`unet_train.objects.params`), ``method`` is
    that model's target (``boundary``; ``offsets``: the affinities target's) and the rest is unused.
    """
    if params is not None:
        return pp.instances(method, prob, params, offsets).astype(np.uint32)
    if method == "membrane":
        if prob.shape[0] != 1:
            raise ConfigError("instance_method=membrane needs a binary model of borders; use components or distance.")
        cells = prob[0] <= threshold
        markers = label(cells, connectivity=1)
        if markers.max() == 0:
            return np.zeros(cells.shape, dtype=np.uint32)
        regions = watershed(ndi.distance_transform_edt(~cells), markers, connectivity=1, watershed_line=True)
        return regions.astype(np.uint32)
    mask = foreground(prob, threshold)
    if method == "components":
        return label(mask, connectivity=1).astype(np.uint32)
    if method == "distance":
        distance = ndi.distance_transform_edt(mask)
        objects = label(mask, connectivity=1)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=objects, exclude_border=False)
        markers = np.zeros(mask.shape, dtype=np.int64)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # An object without a peak (flat plateaus of the distance) is a segment of its own.
        unseeded = np.isin(objects, np.setdiff1d(np.unique(objects[mask]), np.unique(objects[markers > 0])))
        markers[unseeded] = objects[unseeded] + len(peaks)
        return watershed(-distance, markers, mask=mask, connectivity=1).astype(np.uint32)
    raise ConfigError(f"instance_method={method!r} is not known; choose auto, {', '.join(METHODS)}.")


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Consecutive labels 1..n (0 kept) and n."""
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if values[0] == 0:
        return inverse.astype(np.uint32), len(values) - 1
    return (inverse + 1).astype(np.uint32), len(values)


def label_chunks(
    store: Any,
    method: str,
    threshold: float,
    min_distance: int,
    halo: int,
    dist: Any,
    params: dict[str, Any] | None = None,
    aff_offsets: list[tuple[int, ...]] | None = None,
) -> None:
    """Label a chunked prediction into ``labels/instances/0``, consistently across chunk borders.

    1. Each chunk is labelled from its probabilities plus a halo of ``halo`` pixels of context and
       cropped; its labels get an offset so that every chunk's are distinct.
    2. Two segments are joined where their pixels are 4-neighbours across a chunk border (a graph
       over all segments of the plane; its connected components are the final labels, numbered
       consecutively over the whole volume).

    For ``components`` this equals labelling the whole image at once. For the watershed methods a
    segment is the local watershed's, computed with the halo as context; two objects whose local
    watersheds leave no gap on the chunk border are joined.
    """
    zarr_group = store.group
    prob_array, labels_array = store.prob, zarr_group["labels/instances/0"]
    depth = store.done_array.shape[0]
    ny, nx = store.done_array.shape[1:]
    chunk = store.chunk
    height, width = labels_array.shape[-2:]
    where = store._where
    all_chunks = [(z, cy, cx) for z in range(depth) for cy in range(ny) for cx in range(nx)]
    mine = all_chunks[dist.rank :: dist.world_size]

    def bounds(cy: int, cx: int) -> tuple[int, int, int, int]:
        return cy * chunk, min((cy + 1) * chunk, height), cx * chunk, min((cx + 1) * chunk, width)

    def read_prob(z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index = where(z, y0, y1, x0, x1)
        values = np.asarray(prob_array[index if store.binary else (slice(None), *index)])
        return stored_probabilities(values[None] if store.binary else values)  # the values the mask was made of

    counts = {}
    # An instance model's watershed leaves no gap between touching objects: two segments meeting on a chunk
    # border are joined only where the chunk's own labelling (its halo reaches past the border) calls both
    # sides one object. (For the other methods any touch joins, as documented above.)
    agrees: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for z, cy, cx in mine:  # 1: local labels
        y0, y1, x0, x1 = bounds(cy, cx)
        wy0, wy1, wx0, wx1 = max(y0 - halo, 0), min(y1 + halo, height), max(x0 - halo, 0), min(x1 + halo, width)
        local = instance_labels(read_prob(z, wy0, wy1, wx0, wx1), method, threshold, min_distance, params, aff_offsets)
        if params is not None:
            agrees[(z, cy, cx)] = _same_across(local, (y0 - wy0, y1 - wy0, x0 - wx0, x1 - wx0))
        local, n = _relabel(local[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0])
        labels_array[where(z, y0, y1, x0, x1)] = local
        counts[(z, cy, cx)] = n
    all_counts = _gather_dict(counts, dist)
    offsets, total = {}, 0
    for key in all_chunks:
        offsets[key] = total
        total += all_counts[key]

    def global_labels(z: int, cy: int, cx: int, rows: slice, cols: slice) -> np.ndarray:
        y0, y1, x0, x1 = bounds(cy, cx)
        block = np.asarray(labels_array[where(z, y0, y1, x0, x1)])[rows, cols].astype(np.int64)
        return np.where(block > 0, block + offsets[(z, cy, cx)], 0)

    pairs = []
    for z, cy, cx in mine:  # 2: segments touching across the right and bottom borders
        right, below = agrees.get((z, cy, cx), (True, True))
        if cx + 1 < nx:
            a = global_labels(z, cy, cx, slice(None), slice(-1, None))[:, 0]
            b = global_labels(z, cy, cx + 1, slice(None), slice(0, 1))[:, 0]
            pairs.append(np.stack([a, b], 1)[(a > 0) & (b > 0) & right])
        if cy + 1 < ny:
            a = global_labels(z, cy, cx, slice(-1, None), slice(None))[0]
            b = global_labels(z, cy + 1, cx, slice(0, 1), slice(None))[0]
            pairs.append(np.stack([a, b], 1)[(a > 0) & (b > 0) & below])
    edges = np.concatenate([p for p in _gather_list(pairs, dist) if len(p)] or [np.zeros((0, 2), np.int64)])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(total + 1, total + 1))
    _, component = connected_components(graph, directed=False)
    # Final labels number the components by their smallest segment id; background (node 0) stays 0.
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    final = rank_of[inverse].astype(np.uint32)
    dist.barrier()
    for z, cy, cx in mine:  # 3: final labels
        y0, y1, x0, x1 = bounds(cy, cx)
        labels_array[where(z, y0, y1, x0, x1)] = final[global_labels(z, cy, cx, slice(None), slice(None))]
    dist.barrier()
    log.info("Instance labels: %d segments in %s", int(final.max(initial=0)), store.path)


def _same_across(local: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Along the right and bottom borders of ``box`` (rows y0:y1, columns x0:x1 of a window's labels ``local``):
    whether the pixel inside and the one just outside carry the same label (True where the window ends there)."""
    y0, y1, x0, x1 = box
    right = np.ones(y1 - y0, dtype=bool)
    below = np.ones(x1 - x0, dtype=bool)
    if x1 < local.shape[1]:
        right = local[y0:y1, x1 - 1] == local[y0:y1, x1]
    if y1 < local.shape[0]:
        below = local[y1 - 1, x0:x1] == local[y1, x0:x1]
    return right, below


def _gather_dict(part: dict, dist: Any) -> dict:
    if not dist.enabled:
        return part
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def _gather_list(part: list, dist: Any) -> list:
    if not dist.enabled:
        return part
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(parts, part)
    return [item for p in parts for item in p]
