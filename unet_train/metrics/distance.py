"""Boundary distance metrics: the 95th-percentile Hausdorff distance (HD95), in pixels or physical units."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def contour(mask: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels of a boolean mask with a face neighbour (4 in 2D, 6 in 3D) outside it (the image edge does not count).

    Pixels outside ``valid`` (unlabelled) do not count as outside either: an ignored region draws no contour.
    """
    mask = np.asarray(mask, dtype=bool)
    inside = mask if valid is None else mask | ~np.asarray(valid, dtype=bool)
    faces = ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(inside, structure=faces, border_value=1)


def frame(shape: tuple[int, ...]) -> np.ndarray:
    """The one-pixel ring along the image edge (the shell of a volume)."""
    ring = np.ones(shape, dtype=bool)
    ring[(slice(1, -1),) * len(shape)] = False
    return ring


def hd95(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, spacing: Sequence[float] | None = None
) -> float:
    """95th-percentile symmetric Hausdorff distance between the contours of two boolean masks ``(H, W)`` or
    ``(D, H, W)``, in units of ``spacing`` (the pixel or voxel size per axis; None: 1, so pixels or voxels).

    Each contour pixel's Euclidean distance to the other mask's contour is taken from a distance
    transform sampled at ``spacing`` (so an anisotropic voxel counts its physical sides); the figure is the
    larger of the two directed 95th percentiles (MONAI's convention, as its ``spacing`` argument).
    Both masks empty gives 0.0; exactly one empty gives the image diagonal (in the same units), the
    largest distance possible in the image, so the value stays finite and ranks such a failure worst.
    A mask that covers the whole image has no contour inside it: both full gives 0.0, and a full mask
    against a partial one takes the image frame as its contour (as MONAI, which counts the edge as outside).
    ``valid`` (boolean, the masks' shape) restricts both masks and their contours to the labelled pixels.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    sampling = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sampling.shape != (pred.ndim,) or not np.all(sampling > 0):
        raise ValueError(f"spacing {spacing} needs {pred.ndim} positive sizes, one per axis of the masks")
    if valid is not None:  # unlabelled pixels belong to neither mask and bound no contour
        valid = np.asarray(valid, dtype=bool)
        pred, truth = pred & valid, truth & valid
    # Emptiness is a property of the masks, not of their contours: a full mask has no contour either.
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.linalg.norm(np.asarray(pred.shape) * sampling))
    a, b = contour(pred, valid), contour(truth, valid)
    if not a.any() and not b.any():  # both full
        return 0.0
    a = a if a.any() else frame(pred.shape)
    b = b if b.any() else frame(truth.shape)
    # distance_transform_edt measures the distance to the nearest zero: zeros on the other contour.
    to_b = ndi.distance_transform_edt(~b, sampling=sampling)[a]
    to_a = ndi.distance_transform_edt(~a, sampling=sampling)[b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))
