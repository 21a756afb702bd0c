"""Object metrics on hand-built label images, and against a brute-force implementation on random ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from skimage.segmentation import relabel_sequential

from unet_train.metrics.objects import DSB_THRESHOLDS, aji, matching, object_scores, overlaps, splits_and_merges


def boxes(shape, *rects):
    """A label image with object k+1 filling rects[k] = (y0, y1, x0, x1)."""
    out = np.zeros(shape, dtype=np.int32)
    for k, (y0, y1, x0, x1) in enumerate(rects):
        out[y0:y1, x0:x1] = k + 1
    return out


TRUTH = boxes((20, 20), (0, 4, 0, 4), (10, 14, 10, 18))  # 16 px and 32 px


def test_perfect_prediction_scores_one_everywhere():
    pred = TRUTH * 7  # other ids, same objects
    s = object_scores(TRUTH, pred)
    assert all(s[f"f1_{round(t * 100):02d}"] == 1.0 for t in DSB_THRESHOLDS)
    assert s["map"] == s["aji"] == s["pq"] == s["sq"] == 1.0
    assert (s["tp"], s["fp"], s["fn"], s["splits"], s["merges"]) == (2, 0, 0, 0, 0)


def test_one_split():
    # the 4x8 object cut into two 4x4 halves: each half has IoU 0.5 with it, which is no hit (IoU > 0.5 needed)
    pred = boxes((20, 20), (0, 4, 0, 4), (10, 14, 10, 14), (10, 14, 14, 18))
    s = object_scores(TRUTH, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 1)
    assert s["f1_50"] == pytest.approx(2 * 1 / (2 + 2 + 1))
    assert s["map"] == pytest.approx(np.mean([1 / 4] * 10))  # TP / (TP + FP + FN) = 1/4 at every threshold
    assert (s["splits"], s["merges"]) == (1, 0)
    # AJI: G1 with S1 (16/16), G2 with a half (16/32); the other half unused adds 16 to the union
    assert s["aji"] == pytest.approx((16 + 16) / (16 + 32 + 16))
    assert s["sq"] == 1.0 and s["pq"] == pytest.approx(2 / 5)


def test_one_merge():
    truth = boxes((10, 10), (0, 4, 0, 2), (0, 4, 2, 4))  # two touching 8-px objects
    pred = boxes((10, 10), (0, 4, 0, 4))  # one 16-px blob over both
    s = object_scores(truth, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 2)
    assert (s["splits"], s["merges"]) == (0, 1)
    assert s["aji"] == pytest.approx((8 + 8) / (16 + 16))  # both truths pick the blob; it is counted in each union
    assert s["pq"] == 0.0 and s["map"] == 0.0


def test_one_missed_and_one_spurious():
    missed = object_scores(TRUTH, boxes((20, 20), (0, 4, 0, 4)))
    assert (missed["tp"], missed["fp"], missed["fn"]) == (1, 0, 1)
    assert missed["precision_50"] == 1.0 and missed["recall_50"] == 0.5
    assert missed["aji"] == pytest.approx(16 / (16 + 32))
    spurious = object_scores(TRUTH, np.where(boxes((20, 20), (16, 20, 0, 3)) > 0, 3, TRUTH))
    assert (spurious["tp"], spurious["fp"], spurious["fn"]) == (2, 1, 0)
    assert spurious["precision_50"] == pytest.approx(2 / 3) and spurious["recall_50"] == 1.0
    assert spurious["aji"] == pytest.approx(48 / (48 + 12))


def test_empty_and_full():
    empty = np.zeros((8, 8), dtype=np.int32)
    both_empty = object_scores(empty, empty)
    assert both_empty["f1_50"] == both_empty["map"] == both_empty["aji"] == both_empty["pq"] == 1.0
    full = np.ones((8, 8), dtype=np.int32)
    s = object_scores(empty, full)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 0)
    assert s["f1_50"] == s["map"] == s["aji"] == s["pq"] == 0.0
    s = object_scores(full, empty)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 0, 1) and s["recall_50"] == 0.0 and s["aji"] == 0.0


def test_ignored_pixels_count_nowhere():
    ignore = np.zeros((20, 20), dtype=bool)
    ignore[15:, :] = True
    pred = TRUTH.copy()
    pred[16:20, 0:6] = 9  # a prediction inside the unlabelled band: neither right nor wrong
    pred[10:14, 16:18] = 0  # the second object loses a quarter ...
    truth = TRUTH.copy()
    s = object_scores(truth, pred, ignore=ignore)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert s["pred_objects"] == 2
    # ... unless that quarter is unlabelled too: then it is perfect
    ignore[10:14, 16:18] = True
    assert object_scores(truth, pred, ignore=ignore)["sq"] == 1.0


def test_works_in_3d():
    truth = np.zeros((4, 8, 8), dtype=np.int32)
    truth[:2, :4, :4] = 1
    truth[2:, 4:, 4:] = 2
    pred = truth.copy()
    pred[1, :4, :4] = 0  # object 1 loses half its voxels: IoU 0.5, no hit
    s = object_scores(truth, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)


def test_thresholds_below_one_half_use_the_best_one_to_one_assignment():
    truth = boxes((4, 12), (0, 4, 0, 6), (0, 4, 6, 12))  # two 24-px objects side by side
    pred = boxes((4, 12), (0, 4, 2, 8), (0, 4, 8, 12))  # shifted: IoUs 16/32, 8/40 and 16/24
    table = overlaps(truth, pred)
    assert matching(table, 0.5).tp == 1  # only 16/24 is above one half
    # above 0.1 three pairs qualify; one-to-one allows two: (T1, P1) 0.5 and (T2, P2) 0.667
    low = matching(table, 0.1)
    assert low.tp == 2 and low.mean_matched_iou == pytest.approx((0.5 + 16 / 24) / 2)


def brute_force(truth, pred, t):
    """Every pair's IoU by set arithmetic; TP = the largest number of one-to-one pairs with IoU > t (Hopcroft-Karp)."""
    t_ids = [i for i in np.unique(truth) if i]
    p_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, b in itertools.product(range(len(t_ids)), range(len(p_ids))):
        g, s = truth == t_ids[a], pred == p_ids[b]
        iou[a, b] = (g & s).sum() / (g | s).sum()
    graph = csr_matrix((iou > t).astype(np.int8)) if iou.size else csr_matrix((len(t_ids), len(p_ids)), dtype=np.int8)
    tp = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return tp, len(p_ids) - tp, len(t_ids) - tp


def test_below_one_half_the_most_pairs_win_over_the_largest_iou_sum():
    # truth 5, 3 and 8 px; pred 1, 5 and 6 px. Above 0.1: (T1,P2) 0.667 + (T3,P3) 0.4 sum to 1.07 with two
    # pairs, (T1,P1) 0.2 + (T2,P2) 0.143 + (T3,P3) 0.4 to 0.74 with three: StarDist matches the three.
    truth = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]])
    pred = np.array([[1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0]])
    m = matching(overlaps(truth, pred), 0.1)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0) == brute_force(truth, pred, 0.1)
    assert m.mean_matched_iou == pytest.approx((1 / 5 + 1 / 7 + 4 / 10) / 3)


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_a_brute_force_implementation(seed):
    rng = np.random.default_rng(seed)
    # random blobs: a coarse random label grid, upsampled, then perturbed for the prediction
    truth = np.kron(rng.integers(0, 6, (6, 6)), np.ones((5, 5), dtype=np.int64))
    truth = relabel_sequential(truth)[0]
    pred = truth.copy()
    flip = rng.random(truth.shape) < 0.15
    pred[flip] = rng.integers(0, 8, flip.sum())
    table = overlaps(truth, pred)
    for t in (0.1, 0.3, 0.5, 0.75, 0.9):
        m = matching(table, t)
        assert (m.tp, m.fp, m.fn) == brute_force(truth, pred, t), t


def test_aji_and_splits_against_hand_loops():
    rng = np.random.default_rng(1)
    truth = relabel_sequential(np.kron(rng.integers(0, 5, (4, 4)), np.ones((6, 6), dtype=np.int64)))[0]
    pred = relabel_sequential(np.kron(rng.integers(0, 12, (8, 8)), np.ones((3, 3), dtype=np.int64)))[0]
    # AJI by its definition, object by object
    inter_sum = union_sum = 0
    used = set()
    for g in [i for i in np.unique(truth) if i]:
        gm = truth == g
        best, best_iou = None, -1.0
        for s in [j for j in np.unique(pred) if j]:
            sm = pred == s
            iou = (gm & sm).sum() / (gm | sm).sum()
            if (gm & sm).any() and iou > best_iou:
                best, best_iou = s, iou
        if best is None:
            union_sum += gm.sum()
        else:
            sm = pred == best
            inter_sum += (gm & sm).sum()
            union_sum += (gm | sm).sum()
            used.add(best)
    union_sum += sum((pred == s).sum() for s in np.unique(pred) if s and s not in used)
    table = overlaps(truth, pred)
    assert aji(table) == pytest.approx(inter_sum / union_sum)

    def mostly_inside(a, b):  # objects of `a` with more than half their pixels in one object of `b`, per b-object
        return [
            sum(((a == x) & (b == y)).sum() > 0.5 * (a == x).sum() for x in np.unique(a) if x)
            for y in np.unique(b)
            if y
        ]

    hand_splits = sum(n >= 2 for n in mostly_inside(pred, truth))
    hand_merges = sum(n >= 2 for n in mostly_inside(truth, pred))
    assert splits_and_merges(table) == (hand_splits, hand_merges) == (2, 0)  # finer predictions split truths
    assert splits_and_merges(overlaps(pred, truth)) == (0, 2)  # and, seen the other way round, merge them


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        overlaps(np.zeros((4, 4)), np.zeros((4, 5)))


def test_large_ids_give_the_same_scores():
    # ids beyond the histogram's range take the sorting path; the scores must not change
    pred = boxes((20, 20), (0, 4, 0, 4), (10, 14, 10, 14), (10, 14, 14, 18))
    big = np.where(pred > 0, pred.astype(np.int64) + 3_000_000_000, 0)
    assert object_scores(TRUTH, big) == object_scores(TRUTH, pred)


def test_float_labels_must_hold_whole_ids():
    truth = np.array([[1.0, 1.0, 0.0, 2.0]])
    assert object_scores(truth, truth)["true_objects"] == 2  # whole floats are ids
    with pytest.raises(ValueError, match=r"prediction label image holds 0\.4: object ids must be whole numbers"):
        object_scores(truth, np.array([[0.4, 0.4, 0.0, 2.0]]))  # was truncated to background
    with pytest.raises(ValueError, match="truth label image holds nan"):
        object_scores(np.array([[np.nan, 1.0, 0.0, 2.0]]), truth)  # was an object of its own


def test_an_ignore_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"ignore mask's shape \(2, 2\) differs from the labels' \(1, 4\)"):
        object_scores(np.array([[1, 1, 0, 2]]), np.array([[1, 1, 0, 2]]), np.zeros((2, 2), dtype=bool))
