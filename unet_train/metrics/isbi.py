"""The ISBI 2012 challenge's figures: foreground-restricted V-Rand and V-Info after border thinning.

How one slice is scored at one threshold ``t`` (Arganda-Carreras et al. 2015,
doi:10.3389/fnana.2015.00142):

1. Ground-truth segments: the 4-connected components of the cell class
   (``skimage.measure.label(cells, connectivity=1)``); membrane pixels get label 0.
2. Predicted segments: pixels whose boundary probability is ``<= t`` are cells; their
   4-connected components are the seeds of a watershed (``skimage.segmentation.watershed``,
   ``connectivity=1``, ``watershed_line=True``) on the distance to the nearest predicted
   cell pixel, which grows the cells into the predicted borders until they meet, so the
   borders are thinned to 1-pixel lines. Every pixel left on a line becomes a segment of
   its own (a single-pixel segment).
3. Foreground restriction: only pixels inside ground-truth cells (label > 0) are scored.
   Unlabelled pixels (an ignore region) are no cell, neither in the ground truth nor in the
   prediction (before step 2), so they are never scored and the prediction there cannot
   join or split segments: a cell that an ignore region cuts in two is two segments on both sides.
4. V-Rand is the Rand F-score, ``1 - adapted_rand_error`` of scikit-image on those pixels
   (alpha = 0.5: the harmonic mean of Rand split and Rand merge). V-Info is the
   information-theoretic F-score ``2 I(S;T) / (H(S) + H(T))`` (the harmonic mean of
   ``I/H(S)`` and ``I/H(T)``), with ``H`` the entropies of the two segmentations on those
   pixels and ``I = H(T) - H(T|S)`` from ``variation_of_information``'s conditional
   entropies. Both are 1.0 for a perfect segmentation and fall towards 0.

The scores of every threshold 0.0, 0.1, ..., 1.0 are averaged over slices; the reported
figure is the best mean, with its threshold (V-Rand and V-Info each pick their own).

Volumes are scored both ways. As the challenge scored its stack, per section
(:func:`section_scores`: each z section a 2D image as above, the scores averaged over the volume's
sections; ``vrand``, ``vinfo``), and as one 3D segmentation (:func:`slice_scores` on the volume:
6-connected segments, the watershed thins the predicted borders in 3D over distances measured in the
voxel spacing; ``vrand_3d``, ``vinfo_3d``). A cell that the prediction cuts between two sections, or
two cells it joins through one, costs only in the 3D figures.

Differences from calling scikit-image directly:

- scikit-image returns errors (``adapted_rand_error`` -> 1 - F; ``variation_of_information``
  -> the two conditional entropies, in bits); here they are turned into F-scores where 1.0 is
  perfect, as the challenge reported them.
- Called on raw label images, scikit-image scores every pixel and treats predicted membrane
  as one big segment (or, with ``ignore_labels``, drops it); here the prediction is thinned
  first, line pixels are singletons, and only ground-truth cell pixels are scored.
- ``adapted_rand_error`` counts pairs of distinct pixels (``n * (n - 1)`` per table cell),
  whereas the challenge's Fiji script summed squared fractions (``n**2``); the two differ by
  terms of order 1 / pixels-per-segment, negligible on 512x512 slices but visible on toy images.
- Degenerate cases that would divide by zero get defined values: no ground-truth cell pixel
  (nothing is scored) gives 1.0 for both; a Rand F-score where neither side has two pixels in
  one segment gives 1.0 (both are all singletons, so they agree); a V-Info where both sides
  are a single segment (both entropies 0) gives 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.metrics import adapted_rand_error, variation_of_information
from skimage.segmentation import watershed

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def ground_truth_segments(cells: np.ndarray) -> np.ndarray:
    """Label the 4-connected components of a boolean cell mask ``(H, W)``; membrane is 0."""
    return label(np.asarray(cells, dtype=bool), connectivity=1)


def thinned_segments(cells: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Predicted segments from a boolean cell mask: cells grown by a watershed, 1-pixel border lines as singletons.

    Returns positive labels everywhere (no 0): watershed regions first, then one new label per line pixel.
    ``spacing`` (a volume's voxel size) measures the distance the watershed floods over in physical units.
    """
    cells = np.asarray(cells, dtype=bool)
    markers = label(cells, connectivity=1)
    if markers.max() == 0:  # no cell at all: every pixel is border
        return np.arange(1, cells.size + 1, dtype=np.int64).reshape(cells.shape)
    # Flood from the cells over the distance to them: borders are split down their (physical) middle.
    distance = ndi.distance_transform_edt(~cells, sampling=spacing)
    regions = watershed(distance, markers, connectivity=1, watershed_line=True).astype(np.int64)
    lines = regions == 0
    regions[lines] = regions.max() + 1 + np.arange(int(lines.sum()), dtype=np.int64)
    return regions


def _entropy(labels: np.ndarray) -> float:
    """Shannon entropy in bits of the label distribution of a 1-D array."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def rand_info_scores(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """``(V-Rand, V-Info)`` of predicted segments ``pred`` against ground-truth segments ``truth``.

    Only pixels with ``truth > 0`` are scored; ``pred`` labels are used as they are (label 0 is an
    ordinary segment there). See the module docstring for the definitions and degenerate cases.
    """
    keep = truth > 0
    t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
    if t.size == 0:
        return 1.0, 1.0
    # adapted_rand_error's denominators are pair counts: zero only when both sides are all singletons.
    if np.bincount(t).max() <= 1 and np.bincount(np.unique(p, return_inverse=True)[1]).max() <= 1:
        vrand = 1.0
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # its unused precision/recall may be 0/0
            error, _, _ = adapted_rand_error(t, p)
        vrand = 1.0 - float(error)
    # scikit-image returns (H(p|t), H(t|p)), in bits.
    _, h_t_given_p = variation_of_information(t, p)
    h_t, h_p = _entropy(t), _entropy(p)
    if h_t + h_p <= 0:
        vinfo = 1.0  # both a single segment: identical partitions
    else:
        mutual = max(h_t - float(h_t_given_p), 0.0)
        vinfo = 2.0 * mutual / (h_t + h_p)
    return vrand, min(max(vinfo, 0.0), 1.0)


def slice_scores(
    boundary_prob: np.ndarray,
    truth_cells: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    valid: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Scores of one slice at every threshold: array ``(len(thresholds), 2)`` of (V-Rand, V-Info).

    A volume ``(D, H, W)`` given here is scored as one 3D segmentation (6-connected segments, the
    watershed in 3D over distances measured with ``spacing``); :func:`section_scores` scores it per section.

    Args:
        boundary_prob: ``(H, W)`` predicted probability of the border (membrane) class.
        truth_cells: ``(H, W)`` boolean ground-truth cell mask (True = cell, False = membrane).
        thresholds: a pixel is predicted cell where ``boundary_prob <= threshold``.
        valid: ``(H, W)`` boolean map of the labelled pixels (None: all); the others are not scored.
        spacing: the pixel or voxel size per axis (None: 1), for the watershed's distances.
    """
    labelled = np.ones(np.shape(truth_cells), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    truth = ground_truth_segments(np.asarray(truth_cells, dtype=bool) & labelled)
    out = np.empty((len(thresholds), 2), dtype=np.float64)
    for i, threshold in enumerate(thresholds):
        out[i] = rand_info_scores(truth, thinned_segments((boundary_prob <= threshold) & labelled, spacing))
    return out


def section_scores(
    boundary_prob: np.ndarray,
    truth_cells: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """A volume ``(D, H, W)`` scored as the ISBI challenge scored its stack: each z section on its own
    (:func:`slice_scores`, 2D segments), the ``(len(thresholds), 2)`` scores averaged over the sections."""
    sections = [
        slice_scores(boundary_prob[z], truth_cells[z], thresholds, None if valid is None else valid[z])
        for z in range(len(boundary_prob))
    ]
    return np.mean(sections, axis=0)


@dataclass
class RandInfoSweep:
    """Collects per-slice scores over thresholds and reports the challenge figures.

    Call :meth:`add` once per slice (or :meth:`add_sections` once per volume, scored per section), then
    :meth:`best` for the means at the best thresholds and :meth:`per_slice` for each item's scores at those
    thresholds. ``suffix`` names the keys (``vrand<suffix>``, ``vrand<suffix>_threshold``...): ``_3d`` for the
    scores of volumes as 3D segmentations.
    """

    thresholds: Sequence[float] = THRESHOLDS
    scores: list[np.ndarray] = field(default_factory=list)
    suffix: str = ""

    def add(
        self,
        boundary_prob: np.ndarray,
        truth_cells: np.ndarray,
        valid: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
    ) -> None:
        self.scores.append(slice_scores(boundary_prob, truth_cells, self.thresholds, valid, spacing))

    def add_sections(self, boundary_prob: np.ndarray, truth_cells: np.ndarray, valid: np.ndarray | None = None) -> None:
        """One volume, scored per z section and averaged (:func:`section_scores`): one item, as every volume
        weighs the same in the means over volumes whatever its depth."""
        self.scores.append(section_scores(boundary_prob, truth_cells, self.thresholds, valid))

    def _best_index(self) -> tuple[int, int]:
        mean = np.mean(self.scores, axis=0)  # (T, 2)
        # argmax picks the lowest threshold among ties.
        return int(np.argmax(mean[:, 0])), int(np.argmax(mean[:, 1]))

    def best(self) -> dict[str, float]:
        """``vrand``, ``vrand_threshold``, ``vinfo``, ``vinfo_threshold``: best mean over slices; {} if empty."""
        if not self.scores:
            return {}
        mean = np.mean(self.scores, axis=0)
        i_rand, i_info = self._best_index()
        rand, info = f"vrand{self.suffix}", f"vinfo{self.suffix}"
        return {
            rand: float(mean[i_rand, 0]),
            f"{rand}_threshold": float(self.thresholds[i_rand]),
            info: float(mean[i_info, 1]),
            f"{info}_threshold": float(self.thresholds[i_info]),
        }

    def per_slice(self) -> list[dict[str, float]]:
        """Each slice's ``vrand`` and ``vinfo`` at the thresholds :meth:`best` picked."""
        if not self.scores:
            return []
        i_rand, i_info = self._best_index()
        rand, info = f"vrand{self.suffix}", f"vinfo{self.suffix}"
        return [{rand: float(s[i_rand, 0]), info: float(s[i_info, 1])} for s in self.scores]
