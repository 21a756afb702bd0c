"""Object (instance) metrics: matching by IoU, precision/recall/F1, DSB 2018 mean AP, AJI, PQ, splits and merges.

Inputs are label images of any dimension (2D or 3D), 0 = background, each other value one object. Pixels an
``ignore`` mask marks are removed from both label images first, so an object's area is its labelled pixels and
a prediction inside an unlabelled region is neither right nor wrong.

**The matching rule.** A predicted object matches a true object at threshold ``t`` when their IoU is greater
than ``t`` (strictly, as the 2018 Data Science Bowl defined its hits). For ``t >= 0.5`` such a partner is unique
on both sides (two disjoint objects cannot both overlap a third by more than half of their union), so the
matching is one-to-one without a search. For ``t < 0.5`` the pairs above ``t`` are matched one-to-one by the
assignment with the most matched pairs, and among those the largest summed IoU (Hungarian algorithm), as
StarDist's ``matching`` does (its cost: ``-(iou >= t) - iou / (2 n)``).

Everything is computed from one sparse table of intersections (one pass over the pixels), so a 1024 x 1024
image with 1,000 objects is scored at all ten thresholds in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5, 0.55, ..., 0.95


@dataclass(frozen=True)
class Overlaps:
    """The intersection table of two label images (labelled pixels only).

    ``true_ids``/``pred_ids`` are the objects present; ``true_area``/``pred_area`` their pixel counts;
    ``pairs`` (n, 2) indexes into them for every overlapping pair, with ``inter`` its pixel count.
    """

    true_ids: NDArray[np.int64]
    pred_ids: NDArray[np.int64]
    true_area: NDArray[np.int64]
    pred_area: NDArray[np.int64]
    pairs: NDArray[np.int64]
    inter: NDArray[np.int64]

    @property
    def iou(self) -> NDArray[np.float64]:
        """IoU of each overlapping pair."""
        union = self.true_area[self.pairs[:, 0]] + self.pred_area[self.pairs[:, 1]] - self.inter
        return self.inter / union


def _dense(labels: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(ids present, each pixel's index into them, each id's pixel count), by a histogram where ids are small."""
    if labels.size and labels.min() >= 0 and labels.max() < max(1 << 22, 4 * labels.size):
        counts = np.bincount(labels)
        ids = np.flatnonzero(counts)
        lookup = np.zeros(len(counts), dtype=np.int64)
        lookup[ids] = np.arange(len(ids))
        return ids, lookup[labels], counts[ids]
    ids, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return ids, index.ravel(), counts


def _ids(labels: NDArray, name: str) -> NDArray[np.int64]:
    """``labels`` flattened to int64 ids; floats are accepted only where they hold whole numbers."""
    array = np.asarray(labels)
    if array.dtype.kind in "fc":
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            bad = array.ravel()[np.flatnonzero(~whole.ravel())[0]]
            raise ValueError(
                f"the {name} label image holds {bad.item()!r}: object ids must be whole numbers "
                "(a probability map needs post-processing into instances first)"
            )
        array = array.real
    return array.ravel().astype(np.int64)


def overlaps(true: NDArray, pred: NDArray, ignore: NDArray | None = None) -> Overlaps:
    """The intersection table of ``true`` and ``pred`` (same shape; ``ignore`` True = unlabelled pixel)."""
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: truth {true.shape}, prediction {pred.shape}")
    t = _ids(true, "truth")
    p = _ids(pred, "prediction")
    if ignore is not None:
        if np.shape(ignore) != np.shape(true):
            raise ValueError(f"the ignore mask's shape {np.shape(ignore)} differs from the labels' {np.shape(true)}")
        keep = ~np.asarray(ignore, dtype=bool).ravel()
        t, p = t[keep], p[keep]
    true_ids, t_index, true_area = _dense(t)
    pred_ids, p_index, pred_area = _dense(p)
    # one code per (true, pred) pair of dense indices; background (id 0) pairs are dropped below
    n_codes = len(true_ids) * len(pred_ids)
    code = t_index * len(pred_ids) + p_index
    if n_codes <= 1 << 24:  # a histogram is cheaper than sorting the pixels
        inter = np.bincount(code, minlength=n_codes)
        codes = np.flatnonzero(inter)
        inter = inter[codes]
    else:
        codes, inter = np.unique(code, return_counts=True)
    pairs = np.stack([codes // len(pred_ids), codes % len(pred_ids)], axis=1)
    fg = (true_ids[pairs[:, 0]] != 0) & (pred_ids[pairs[:, 1]] != 0)
    # re-index without the background
    t_keep = true_ids != 0
    p_keep = pred_ids != 0
    t_new = np.cumsum(t_keep) - 1
    p_new = np.cumsum(p_keep) - 1
    pairs = np.stack([t_new[pairs[fg, 0]], p_new[pairs[fg, 1]]], axis=1)
    return Overlaps(true_ids[t_keep], pred_ids[p_keep], true_area[t_keep], pred_area[p_keep], pairs, inter[fg])


def match(table: Overlaps, threshold: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The one-to-one matched pairs at ``threshold`` (rows of ``table.pairs``' indices) and their IoUs."""
    iou = table.iou
    above = iou > threshold
    pairs, scores = table.pairs[above], iou[above]
    if threshold >= 0.5 or len(pairs) == 0:
        return pairs, scores
    # below 0.5 an object may have several partners: the most pairs, then the largest summed IoU. Each pair
    # weighs 1 + iou / (2 n): n pairs' IoU terms add up to less than 1/2, so one more pair always wins.
    rows, row_index = np.unique(pairs[:, 0], return_inverse=True)
    cols, col_index = np.unique(pairs[:, 1], return_inverse=True)
    cost = np.zeros((len(rows), len(cols)))
    cost[row_index, col_index] = -(1.0 + scores / (2 * min(len(rows), len(cols))))
    iou_of = np.zeros_like(cost)
    iou_of[row_index, col_index] = scores
    r, c = linear_sum_assignment(cost)
    chosen = cost[r, c] < 0
    r, c = r[chosen], c[chosen]
    return np.stack([rows[r], cols[c]], axis=1), iou_of[r, c]


@dataclass(frozen=True)
class Matching:
    """Counts and scores of one image at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float  # SQ: mean IoU of the matched pairs (1.0 when nothing is there to match)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float(self.fn == 0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float(self.fp == 0)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); equal to panoptic quality's recognition quality RQ."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    @property
    def ap(self) -> float:
        """The 2018 Data Science Bowl's average precision at this threshold: TP / (TP + FP + FN)."""
        denominator = self.tp + self.fp + self.fn
        return self.tp / denominator if denominator else 1.0

    @property
    def pq(self) -> float:
        """Panoptic quality (Kirillov et al. 2019): SQ x RQ."""
        return self.mean_matched_iou * self.f1


def matching(table: Overlaps, threshold: float) -> Matching:
    """TP, FP, FN and the matched IoU of ``table`` at ``threshold`` (the rule in the module docstring)."""
    pairs, scores = match(table, threshold)
    tp = len(pairs)
    empty = len(table.true_ids) == 0 and len(table.pred_ids) == 0
    sq = float(scores.mean()) if tp else (1.0 if empty else 0.0)
    return Matching(threshold, tp, len(table.pred_ids) - tp, len(table.true_ids) - tp, sq)


def aji(table: Overlaps) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017).

    Each true object G is paired with the predicted object S of highest IoU with it (a prediction may serve
    several truths); |G n S| adds to the numerator and |G u S| to the denominator (|G| when nothing overlaps
    G); the areas of predicted objects paired with no truth add to the denominator. 1.0 for two empty images.
    """
    n_true, n_pred = len(table.true_ids), len(table.pred_ids)
    if n_true == 0:
        return 1.0 if n_pred == 0 else 0.0
    iou = table.iou
    best_iou = np.full(n_true, -1.0)
    best = np.full(n_true, -1, dtype=np.int64)
    inter_of_best = np.zeros(n_true, dtype=np.int64)
    order = np.lexsort((-iou, table.pairs[:, 0]))  # per true object, its best pair first
    first = np.ones(len(order), dtype=bool)
    first[1:] = table.pairs[order[1:], 0] != table.pairs[order[:-1], 0]
    chosen = order[first]
    rows = table.pairs[chosen, 0]
    best[rows], best_iou[rows], inter_of_best[rows] = table.pairs[chosen, 1], iou[chosen], table.inter[chosen]
    paired = best >= 0
    intersection = inter_of_best[paired].sum()
    union = (table.true_area[paired] + table.pred_area[best[paired]] - inter_of_best[paired]).sum()
    union += table.true_area[~paired].sum()
    used = np.zeros(n_pred, dtype=bool)
    used[best[paired]] = True
    union += table.pred_area[~used].sum()
    return float(intersection / union) if union else 1.0


def splits_and_merges(table: Overlaps, share: float = 0.5) -> tuple[int, int]:
    """(splits, merges): true objects that at least two predicted objects mostly lie in (each with more than
    ``share`` of its own pixels inside that true object), and predicted objects that at least two true objects
    mostly lie in. A clean one-to-one result has none of either."""
    pred_in_true = table.inter / table.pred_area[table.pairs[:, 1]] > share
    true_in_pred = table.inter / table.true_area[table.pairs[:, 0]] > share
    splits = np.bincount(table.pairs[pred_in_true, 0], minlength=len(table.true_ids))
    merges = np.bincount(table.pairs[true_in_pred, 1], minlength=len(table.pred_ids))
    return int((splits >= 2).sum()), int((merges >= 2).sum())


def object_scores(
    true: NDArray, pred: NDArray, ignore: NDArray | None = None, thresholds: tuple[float, ...] = DSB_THRESHOLDS
) -> dict[str, float]:
    """Every object metric of one image, under the keys validation, ``unet-eval`` and the CSV use.

    ``f1_50``, ``precision_50``, ``recall_50`` ... per threshold (``_75`` = IoU 0.75), ``map`` (DSB 2018 mean
    AP over ``thresholds``), ``ap_50`` (its term at 0.5: TP / (TP + FP + FN)),
    ``aji``, ``pq``/``sq``/``rq`` at 0.5, the counts ``tp``, ``fp``, ``fn`` at 0.5,
    ``splits`` and ``merges``, and the number of true and predicted objects.
    """
    table = overlaps(true, pred, ignore)
    out: dict[str, float] = {}
    aps = []
    for t in thresholds:
        m = matching(table, t)
        suffix = f"{round(t * 100):02d}"
        out[f"f1_{suffix}"] = m.f1
        out[f"precision_{suffix}"] = m.precision
        out[f"recall_{suffix}"] = m.recall
        aps.append(m.ap)
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    half = matching(table, 0.5)
    out.update(pq=half.pq, sq=half.mean_matched_iou, rq=half.f1, tp=half.tp, fp=half.fp, fn=half.fn, ap_50=half.ap)
    out["aji"] = aji(table)
    out["splits"], out["merges"] = splits_and_merges(table)
    out["true_objects"], out["pred_objects"] = len(table.true_ids), len(table.pred_ids)
    return out
