"""Instance labels from predicted targets (the inverse of :mod:`unet_train.objects.targets`), 2D or 3D.

- :func:`from_boundary`: seeds are the components of ``interior > seed_threshold``; they grow by a watershed
  over the boundary probability into the foreground (``interior + boundary > threshold``).
- :func:`from_distance`: seeds are the components of ``distance > seed_threshold`` inside the foreground; a
  watershed over the negative distance grows them into the foreground.
- :func:`from_affinities`: objects are the connected components of the graph whose edges are the affinities
  above ``threshold`` between foreground pixels.

Each removes objects smaller than ``min_size`` pixels. The parameters are what tuning searches.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import relabel_sequential, watershed

from unet_train.objects.targets import offset_slices


def _components(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Face-connected components (4 in 2D, 6 in 3D)."""
    return ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, 1))[0].astype(np.int64)


def remove_small(labels: NDArray, min_size: int) -> NDArray[np.uint32]:
    """Objects of fewer than ``min_size`` pixels set to 0; ids renumbered 1..N."""
    labels = np.asarray(labels, dtype=np.int64)
    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.uint32)


def _grow(seeds: NDArray[np.int64], landscape: NDArray, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Watershed of ``landscape`` from ``seeds`` within ``mask``; a masked component without a seed is an object
    of its own (so nothing the model calls foreground is dropped for lack of a seed)."""
    components = _components(mask)
    unseeded = np.setdiff1d(np.unique(components[mask]), np.unique(components[(seeds > 0) & mask]))
    if len(unseeded):
        extra = np.isin(components, unseeded)
        seeds = np.where(extra, components + seeds.max(), seeds)
    connectivity = ndi.generate_binary_structure(mask.ndim, 1)
    return watershed(landscape, seeds, mask=mask, connectivity=connectivity).astype(np.int64)


def from_boundary(
    interior: NDArray, boundary: NDArray, threshold: float = 0.5, seed_threshold: float = 0.5, min_size: int = 1
) -> NDArray[np.uint32]:
    """Instances from interior and boundary probabilities (the ``boundary`` target's classes 1 and 2)."""
    foreground = (interior + boundary) > threshold
    seeds = _components((interior > seed_threshold) & foreground)
    # flooded by boundary probability; where it is flat (a clean boundary band) the nearer seed wins
    near = ndi.distance_transform_edt(seeds == 0)
    landscape = boundary + 1e-3 * near / max(float(near.max()), 1.0)
    return remove_small(_grow(seeds, landscape, foreground), min_size)


def from_distance(
    foreground: NDArray, distance: NDArray, threshold: float = 0.5, seed_threshold: float = 0.5, min_size: int = 1
) -> NDArray[np.uint32]:
    """Instances from a foreground probability and the predicted normalised distance (the ``distance`` target)."""
    mask = foreground > threshold
    seeds = _components((distance > seed_threshold) & mask)
    return remove_small(_grow(seeds, -distance, mask), min_size)


def from_affinities(
    affinities: NDArray,
    offsets: list[tuple[int, ...]],
    foreground: NDArray,
    threshold: float = 0.5,
    min_size: int = 1,
) -> NDArray[np.uint32]:
    """Components of the graph of foreground pixels joined where the affinity to a neighbour exceeds ``threshold``.

    ``affinities`` is ``(len(offsets), *shape)`` as :func:`unet_train.objects.targets.affinity_target` makes it;
    ``foreground`` a probability (or mask) of the same spatial shape, cut at 0.5.
    """
    mask = np.asarray(foreground) > 0.5
    shape = mask.shape
    index = np.arange(mask.size).reshape(shape)
    rows, cols = [index[mask].ravel()], [index[mask].ravel()]  # every foreground pixel is its own node
    for k, offset in enumerate(offsets):
        here, there = offset_slices(offset, shape)
        joined = (affinities[k][here] > threshold) & mask[here] & mask[there]
        rows.append(index[here][joined])
        cols.append(index[there][joined])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(mask.size, mask.size))
    _, component = connected_components(graph, directed=False)
    labels = np.where(mask.ravel(), component + 1, 0).reshape(shape)
    return remove_small(labels, min_size)
